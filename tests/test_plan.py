"""Tests of featalign.plan: which jobs a run has, decided from its config (known answers)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from featalign.config import ConfigError
from featalign.plan import RunPlan, default_example_networks, load_plan, plan_run
from featalign.plugins import FAMILIES, NetworkSpec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def spec(name: str, layers=("a", "b", "c"), invariant_to=(), train=None) -> NetworkSpec:
    """A network spec as the registry holds it (never built here)."""
    return NetworkSpec(
        name=name,
        description="a test network",
        layers=tuple(layers),
        invariant_to=tuple(invariant_to),
        in_channels=3,
        build=torch.nn.Identity,
        source=Path(f"/plugins/{name}.py"),
        train=train,
    )


def recipe(out: Path, **options: object) -> None:
    """A training recipe (never run here)."""


#: A validated config (defaults filled in) with three datasets and four networks.
CONFIG = {
    "seed": 3,
    "device": "cpu",
    "plugin_dirs": ["extra"],
    "affine_draws": 2,
    "transforms": {"rotation": [90]},
    "datasets": {
        "photos": {"source": "photographs", "size": 32, "window": {"radius": 0.5}},
        "digits": {"source": "mnist", "transforms": {"translation": [4]}},
        "spare": {"source": "textures"},
    },
    "networks": {
        "generic": {"width": 8, "datasets": ["photos"]},
        "learner": {"datasets": ["digits"]},
        "given": {"weights": "w/given.pt", "datasets": ["digits", "photos"]},
        "rotinv": None,
    },
    "alignment": {"method": "adam", "dense_steps": 0},
    "region": {"radius": 0.5},
    "figures": {},
}
NETWORKS = {
    "generic": spec("generic", layers=("c1", "c2")),
    "learner": spec("learner", layers=("conv1", "conv2", "conv3"), train=recipe),
    "given": spec("given", layers=("x",), train=recipe),
    "rotinv": spec("rotinv", layers=("b1", "b2", "b3", "b4"), invariant_to=("rotation",)),
}


@pytest.fixture
def plan() -> RunPlan:
    return plan_run(copy.deepcopy(CONFIG), NETWORKS)


class TestPlanRun:
    def test_pairs_and_layers(self, plan: RunPlan) -> None:
        assert plan.datasets == ("photos", "digits", "spare")
        assert list(plan.networks) == ["generic", "learner", "given", "rotinv"]
        # network by network, each on its datasets in the order the config lists them
        assert plan.pairs == (
            ("photos", "generic"),
            ("digits", "learner"),
            ("digits", "given"),
            ("photos", "given"),
            ("photos", "rotinv"),
            ("digits", "rotinv"),
            ("spare", "rotinv"),
        )
        assert plan.layers == {
            "generic": ("c1", "c2"),
            "learner": ("conv1", "conv2", "conv3"),
            "given": ("x",),
            "rotinv": ("b1", "b2", "b3", "b4"),
        }
        assert plan.alignments[:4] == (
            ("photos", "generic", "c1"),
            ("photos", "generic", "c2"),
            ("digits", "learner", "conv1"),
            ("digits", "learner", "conv2"),
        )
        assert len(plan.alignments) == 2 + 3 + 1 + 1 + 3 * 4

    def test_figure_datasets_are_those_a_network_runs_on(self) -> None:
        cfg = copy.deepcopy(CONFIG)
        cfg["networks"]["rotinv"] = {"datasets": ["digits"]}
        plan = plan_run(cfg, NETWORKS)
        assert plan.figure_datasets == ("photos", "digits")  # not spare
        assert plan.datasets == ("photos", "digits", "spare")

    def test_weights(self, plan: RunPlan) -> None:
        # both have a recipe: both are trained (and get a training curve) ...
        assert plan.trained == ("learner", "given")
        # ... but the features of 'given' read the file its config names
        assert plan.reads_trained_weights == ("learner",)
        assert plan.weight_files == {"given": "w/given.pt"}

    def test_default_examples(self, plan: RunPlan) -> None:
        # the first network without invariances and the rotation-invariant one, middle layers
        assert plan.example_networks == {"generic": "c2", "rotinv": "b3"}
        assert plan.examples_on("photos") == ("generic", "rotinv")
        assert plan.examples_on("digits") == ("rotinv",)

    def test_configured_examples(self) -> None:
        cfg = copy.deepcopy(CONFIG)
        cfg["figures"] = {"example_networks": ["learner", "generic"]}
        plan = plan_run(cfg, NETWORKS)
        assert list(plan.example_networks.items()) == [("learner", "conv2"), ("generic", "c2")]
        assert plan.examples_on("digits") == ("learner",)
        assert plan.examples_on("spare") == ()

    def test_exception_unknown_example_network(self) -> None:
        cfg = copy.deepcopy(CONFIG)
        cfg["figures"] = {"example_networks": ["generic", "ghost"]}
        with pytest.raises(
            ConfigError,
            match=r"^figures.example_networks: 'ghost' is not a configured network; use some "
            r"of generic, learner, given, rotinv",
        ):
            plan_run(cfg, NETWORKS)

    def test_params(self, plan: RunPlan) -> None:
        assert plan.invariances == {
            "generic": (), "learner": (), "given": (), "rotinv": ("rotation",)
        }
        assert plan.plugin_dirs == ("extra",)
        # a dataset's own transforms replace the top-level ones; keys sorted at every level
        assert plan.dataset_params["digits"] == {
            "affine_draws": 2,
            "dataset": {"source": "mnist", "transforms": {"translation": [4]}},
            "transforms": {"translation": [4]},
        }
        assert list(plan.dataset_params["photos"]) == ["affine_draws", "dataset", "transforms"]
        assert list(plan.dataset_params["photos"]["dataset"]) == ["size", "source", "window"]
        assert plan.dataset_params["photos"]["transforms"] == {"rotation": [90]}
        # build options: without the keys featalign reads itself
        assert plan.network_params == {
            "generic": {"width": 8}, "learner": {}, "given": {"weights": "w/given.pt"},
            "rotinv": {},
        }
        assert plan.alignment_params == {
            "alignment": {"dense_steps": 0, "method": "adam"},
            "region": {"radius": 0.5},
            "seed": 3,
        }

    def test_frozen(self, plan: RunPlan) -> None:
        with pytest.raises(dataclasses.FrozenInstanceError):
            plan.pairs = ()  # type: ignore[misc]
        with pytest.raises(TypeError):
            plan.layers["generic"] = ()  # type: ignore[index]

    def test_no_networks(self) -> None:
        cfg = copy.deepcopy(CONFIG)
        cfg["networks"] = {}
        plan = plan_run(cfg, {})
        assert plan.pairs == () and plan.figure_datasets == () and plan.alignments == ()
        assert plan.example_networks == {} and plan.trained == ()


class TestDefaultExampleNetworks:
    @pytest.mark.parametrize(
        ("declared", "expected"),
        [
            # pointwise networks declare everything: the most specific invariant one wins
            ({"point": FAMILIES, "vgg": (), "d4": ("rotation90", "flip")}, ["vgg", "d4"]),
            ({"point": FAMILIES, "iso": ("rotation", "reflection")}, ["iso"]),
            ({"vgg": (), "resnet": ()}, ["vgg"]),
            ({"scale": ("scaling",), "flip": ("flip",)}, ["scale"]),  # neither: the first
            ({}, []),
        ],
    )
    def test_known_answers(self, declared: dict, expected: list[str]) -> None:
        networks = {n: spec(n, invariant_to=inv) for n, inv in declared.items()}
        assert default_example_networks(networks) == expected


class TestLoadPlan:
    """The shipped configs, through the function common.smk calls (plugins loaded)."""

    def test_test_config(self) -> None:
        cfg = load("test.yaml")
        plan = load_plan(cfg, SCHEMA_PATH)
        assert cfg["claims"] == {"margin": 0.001, "confidence": 0.95, "bootstrap": 2000}
        assert plan.datasets == ("tiny_photos", "tiny_digits")
        assert plan.pairs == tuple(
            (d, n)
            for n in ("pointwise", "vgg_random", "d4_pooled", "mnist_cnn")
            for d in plan.datasets
        )
        assert plan.example_networks == {"vgg_random": "block2", "d4_pooled": "block2"}
        assert plan.figure_datasets == plan.datasets
        assert plan.trained == ("mnist_cnn",) and plan.weight_files == {}
        assert len(plan.alignments) == 22  # the 22 align jobs of `snakemake -n`
        # the classifier (a plugin with head=) gets a recognize job per dataset
        assert plan.recognitions == tuple((d, "mnist_cnn") for d in plan.datasets)

    def test_paper_config(self) -> None:
        plan = load_plan(load("paper.yaml"), SCHEMA_PATH)
        assert plan.example_networks == {"vgg_random": "block2", "isotropic": "block2"}
        assert plan.trained == ("mnist_cnn",) == plan.reads_trained_weights
        assert [d for d, n in plan.pairs if n == "mnist_cnn"] == ["digits"]

    def test_schema_as_mapping(self) -> None:
        schema = yaml.safe_load(SCHEMA_PATH.read_text())
        before = copy.deepcopy(schema)
        a, b = load_plan(load("test.yaml"), schema), load_plan(load("test.yaml"), SCHEMA_PATH)
        # (each load re-executes the plugin files: their build functions are new objects)
        assert dataclasses.replace(a, networks={}) == dataclasses.replace(b, networks={})
        assert schema == before  # defaults are copied into the config, never shared

    def test_exception_order(self) -> None:
        """Schema problems first (one sentence), then meaning, then networks, then the plan."""
        cfg = load("test.yaml")
        cfg["networks"]["ghost"] = {}
        cfg["datasets"]["tiny_photos"]["samples"] = 0
        with pytest.raises(ConfigError, match=r"^datasets.tiny_photos.samples: 0 is less than"):
            load_plan(copy.deepcopy(cfg), SCHEMA_PATH)
        cfg["datasets"]["tiny_photos"]["samples"] = 4
        with pytest.raises(ConfigError, match=r"^networks.ghost: no network is called 'ghost'"):
            load_plan(copy.deepcopy(cfg), SCHEMA_PATH)
        del cfg["networks"]["ghost"]
        cfg["figures"] = {"example_networks": ["ghost"]}
        with pytest.raises(ConfigError, match=r"^figures.example_networks: 'ghost'"):
            load_plan(cfg, SCHEMA_PATH)
