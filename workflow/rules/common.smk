# Validation, wildcard constraints, and the input functions and params of the rules.
# The run's policy (which jobs exist, what each one reads) is featalign.plan's, unit-
# tested there; output paths are the rules' own patterns, expanded here.
import sys

from featalign.config import ConfigError
from featalign.plan import load_plan
from featalign.plugins import PluginError
from featalign.provenance import code_digest

try:
    # check_schema -> schema defaults -> check_config -> check_networks -> the plan
    PLAN = load_plan(config, workflow.source_path("../schemas/config.schema.yaml"))
except (ConfigError, PluginError) as err:
    # a user error: one sentence, no traceback, before any job runs
    sys.stderr.write(f"featalign: config error: {err}\n")
    sys.exit(1)


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9_]*",
    network="[A-Za-z0-9_]+",
    layer="[A-Za-z0-9_.]+",


DATASETS = list(PLAN.datasets)
PLUGIN_DIRS = list(PLAN.plugin_dirs)


def outputs(rule, combinations=({},)):
    """Every output of ``rule`` (its patterns expanded) for each wildcard combination."""
    return [f for w in combinations for f in expand(list(rule.output), **w)]


def output(rule, **wildcards):
    """The one output file of ``rule`` for these wildcards."""
    (path,) = outputs(rule, [wildcards])
    return path


def code(script):
    """Digest of a rule's script and the featalign code it imports: a change reruns its jobs."""
    return code_digest(workflow.source_path(f"../scripts/{script}"))


def network_code(script):
    """As code(), with the network's plugin file and the featalign modules it imports."""
    return lambda wildcards: code_digest(
        workflow.source_path(f"../scripts/{script}"), plugin_file(wildcards)
    )


def dataset_params(wildcards):
    """The config that determines one dataset file (a change reruns that dataset only)."""
    return PLAN.dataset_params[wildcards.dataset]


def plugin_file(wildcards):
    """The plugin's source file: editing it reruns exactly that network's jobs."""
    return str(PLAN.networks[wildcards.network].source)


def network_params(wildcards):
    return PLAN.network_params[wildcards.network]


def features_inputs(wildcards):
    inputs = {
        "dataset": output(rules.dataset, dataset=wildcards.dataset),
        "plugin": plugin_file(wildcards),
    }
    if wildcards.network in PLAN.reads_trained_weights:
        inputs["weights"] = output(rules.train, network=wildcards.network)
    elif wildcards.network in PLAN.weight_files:
        inputs["weights"] = PLAN.weight_files[wildcards.network]
    return inputs


def alignment_files():
    """Every alignment file of the run: one per dataset x network x layer."""
    return outputs(
        rules.align,
        [dict(dataset=d, network=n, layer=layer) for d, n, layer in PLAN.alignments],
    )


def pair_alignment_files(wildcards):
    """The alignment files of one dataset x network: a figure of that pair reads only these."""
    return outputs(
        rules.align,
        [
            dict(dataset=wildcards.dataset, network=wildcards.network, layer=layer)
            for layer in PLAN.layers[wildcards.network]
        ],
    )


def recognition_inputs(wildcards):
    """A recognize job's inputs: the features job's (dataset, plugin, weights) and the
    alignment files of every layer (their best warps)."""
    return {**features_inputs(wildcards), "alignment": pair_alignment_files(wildcards)}


def recognition_files():
    """Every recognition file: one per classifier x dataset it runs on."""
    return outputs(
        rules.recognize, [dict(dataset=d, network=n) for d, n in PLAN.recognitions]
    )


def chain_priority(wildcards):
    """Features and alignments of a classifier's (dataset, network) first: its recognize
    job waits on all of them, and the summary on it; left to the end they run alone."""
    return 5 if (wildcards.dataset, wildcards.network) in PLAN.recognitions else 0


def recognition_params(wildcards):
    """The recognize job's config: its dataset's count only, so that another's leaves it be."""
    return dict(PLAN.recognition_params[wildcards.dataset])


def alignment_params(wildcards):
    return dict(PLAN.alignment_params)


def invariances():
    """network -> declared invariant_to: the theory's predictions."""
    return {n: list(inv) for n, inv in PLAN.invariances.items()}


def example_networks():
    """The example panel's networks, each with the layer it shows."""
    return dict(PLAN.example_networks)


def example_inputs(wildcards):
    d = wildcards.dataset
    nets = PLAN.examples_on(d)
    return {
        "dataset": output(rules.dataset, dataset=d),
        "features": outputs(rules.features, [dict(dataset=d, network=n) for n in nets]),
        "alignment": outputs(
            rules.align,
            [dict(dataset=d, network=n, layer=PLAN.example_networks[n]) for n in nets],
        ),
    }


def figure_files():
    """Every figure of the run: the run's own, those of each dataset a network runs on,
    of each (dataset, network) pair, and of each trained network."""
    per_dataset = (rules.figure_excess_vs_depth, rules.figure_example_panel)
    return [
        *outputs(rules.figure_verdict_grid),
        *outputs(rules.figure_separation),
        *outputs(rules.figure_affine_vs_oracle),
        *(
            f
            for d in PLAN.figure_datasets
            for figure in per_dataset
            for f in outputs(figure, [dict(dataset=d)])
        ),
        *outputs(
            rules.figure_error_vs_magnitude,
            [dict(dataset=d, network=n) for d, n in PLAN.pairs],
        ),
        *outputs(rules.figure_training_curve, [dict(network=n) for n in PLAN.trained]),
        *outputs(
            rules.figure_recognition,
            [dict(dataset=d, network=n) for d, n in PLAN.recognitions],
        ),
    ]


def stn_train_params(wildcards):
    """The config that determines one STN dataset's training jobs (featalign.stn.config)."""
    return dict(PLAN.stn.train_params[wildcards.stn_dataset])


def stn_result_files():
    """Every STN result file: one per dataset x variant x seed (none without an stn section)."""
    if PLAN.stn is None:
        return []
    pattern = rules.stn_train.output.result
    return [
        expand(pattern, stn_dataset=d, variant=v, seed=s)[0]
        for d, v, s in PLAN.stn.runs
    ]


def stn_summary_params():
    return dict(PLAN.stn.summary_params) if PLAN.stn else {}


def all_outputs():
    """The default target: the tables and every figure; the STN study's where configured."""
    main = outputs(rules.summarize) + figure_files() if PLAN.datasets else []
    return main + (outputs(rules.stn_summary) if PLAN.stn else [])
