# Config validation and helper functions shared by the rules.
import sys

import yaml
from snakemake.utils import validate

from featalign.config import (
    ConfigError,
    canonical,
    check_config,
    check_schema,
    dataset_transforms,
)

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")

try:
    with open(SCHEMA) as fh:
        check_schema(config, yaml.safe_load(fh))
    validate(config, schema=SCHEMA, set_default=True)
    check_config(config)
except ConfigError as err:
    # a user error: one sentence, no traceback, before any job runs
    sys.stderr.write(f"featalign: config error: {err}\n")
    sys.exit(1)


wildcard_constraints:
    dataset="[A-Za-z][A-Za-z0-9_]*",


DATASETS = list(config["datasets"])


def dataset_params(wildcards):
    """The config that determines one dataset file (a change reruns that dataset only)."""
    return canonical(
        {
            "dataset": config["datasets"][wildcards.dataset],
            "transforms": dataset_transforms(config, wildcards.dataset),
            "affine_draws": config["affine_draws"],
        }
    )


def all_outputs():
    return expand("results/datasets/{dataset}.nc", dataset=DATASETS)
