"""Config checks: every user error is one sentence naming the key, the value and the fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from featalign.config import (
    ConfigError,
    check_config,
    check_schema,
    fill_defaults,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow/schemas/config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def filled(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    fill_defaults(cfg, SCHEMA)
    return cfg


@pytest.mark.parametrize("name", ["test.yaml", "config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load(name)
    specs = validate_config(cfg, SCHEMA_PATH)
    assert list(specs) == list(load(name)["networks"])
    assert cfg == filled(load(name))  # the defaults are filled in, in place


def sparse_config() -> dict:
    """A config that leaves most keys to the schema: nested defaults inside defaults."""
    cfg = load("test.yaml")
    cfg["claims"] = {"bootstrap": 200}
    cfg["alignment"] = {"dense_steps": 0}
    del cfg["datasets"]["tiny_digits"]["window"]
    cfg["datasets"]["tiny_photos"]["window"] = {"radius": 0.5}
    cfg["networks"]["pointwise"] = None
    for key in ("seed", "device"):
        del cfg[key]
    return cfg


@pytest.mark.parametrize("name", ["test.yaml", "config.yaml", "paper.yaml", "sparse"])
def test_defaults_as_snakemake_fills_them(name):
    """The same values in the same key order as snakemake.utils.validate(set_default=True),
    which common.smk called before featalign did it: job params, and so reruns, depend on it."""
    from snakemake.utils import validate

    cfg = sparse_config() if name == "sparse" else load(name)
    ours, theirs = copy.deepcopy(cfg), copy.deepcopy(cfg)
    fill_defaults(ours, SCHEMA)
    validate(theirs, str(SCHEMA_PATH), set_default=True)
    assert json.dumps(ours) == json.dumps(theirs)
    if name == "sparse":
        assert ours["alignment"]["method"] == "gauss_newton" and ours["seed"] == 0
        assert ours["claims"] == {"bootstrap": 200, "margin": 0.001, "confidence": 0.95}
        assert ours["datasets"]["tiny_photos"]["window"] == {"radius": 0.5, "taper": 0.2}


def test_fill_defaults_leaves_the_schema_alone():
    schema = copy.deepcopy(SCHEMA)
    a, b = sparse_config(), sparse_config()
    fill_defaults(a, schema)
    fill_defaults(b, schema)
    assert schema == SCHEMA
    a["alignment"]["ridge"] = 1.0  # configs share no default object with each other
    assert b["alignment"]["ridge"] == 0.001


def test_every_schema_key_is_described():
    def walk(node, path):
        if isinstance(node, dict):
            leaf = not path.endswith(("items", "propertyNames", "additionalProperties"))
            if "type" in node and path and leaf:
                assert "description" in node, f"schema key {path} has no description"
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)

    walk(SCHEMA, "")


def mutate(path: str, value):
    cfg = load("test.yaml")
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return cfg


SCHEMA_CASES = [
    ("datasets.tiny_photos.samples", "four", r"datasets.tiny_photos.samples: 'four' is not of type"),
    ("datasets.tiny_photos.samples", 0, r"datasets.tiny_photos.samples: 0 is less than the minimum"),
    ("datasets.tiny_photos.size", 4, r"datasets.tiny_photos.size: 4 is less than the minimum"),
    ("device", "gpu", r"device: 'gpu' does not match"),
    ("datasets.tiny_photos.window", {"radius": 0}, r"window.radius: 0 is less than or equal"),
    ("datasets.tiny_photos.colour", 1, r"datasets.tiny_photos: Additional properties .*'colour'"),
]


@pytest.mark.parametrize("path,value,message", SCHEMA_CASES)
def test_schema_errors_name_the_key(path, value, message):
    with pytest.raises(ConfigError, match=message):
        check_schema(mutate(path, value), SCHEMA)


MEANING_CASES = [
    ("datasets.tiny_photos.source", "jpegs",
     r"datasets.tiny_photos.source: unknown source 'jpegs'; write one of photographs, mnist"),
    ("datasets.tiny_photos.images", ["camera", "eagle"],
     r"datasets.tiny_photos.images: 'eagle' is not a scikit-image photograph that loads offline"),
    ("transforms", {"spin": [1]}, r"transforms.spin: unknown family 'spin'; write one of"),
    ("transforms", {"scaling": [0.0]}, r"transforms.scaling: scaling factor 0.0 is not positive"),
    ("transforms", {"anisotropic_scaling": [-1.0]}, r"anisotropic_scaling factor -1.0 is not pos"),
    ("transforms", {"affine": [-0.1]}, r"transforms.affine: affine strength -0.1 is negative"),
    ("transforms", {"rotation": []}, r"transforms.rotation: empty list of magnitudes"),
    ("transforms", {"scaling": [1.95]},
     r"datasets.tiny_photos.size: canvas 32 px is too small .* raise size to at least \d+"),
    ("transforms", {"scaling": [3.0]},
     r"canvas 32 px is too small .*; lower datasets.tiny_photos.window.radius to 0.31$"),
    ("transforms", {"translation": [12]}, r"too small .* under translation 12"),
]


@pytest.mark.parametrize("path,value,message", MEANING_CASES)
def test_meaning_errors_name_the_key(path, value, message):
    cfg = filled(mutate(path, value))
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_suggested_size_works():
    import re

    cfg = filled(mutate("transforms", {"scaling": [1.5], "translation": [6]}))
    del cfg["datasets"]["tiny_digits"]
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    size = int(re.search(r"at least (\d+)", str(err.value)).group(1))
    cfg["datasets"]["tiny_photos"]["size"] = size - 2
    with pytest.raises(ConfigError):
        check_config(cfg)
    cfg["datasets"]["tiny_photos"]["size"] = size
    check_config(cfg)
    radius = float(re.search(r"window.radius to ([\d.]+)", str(err.value)).group(1))
    cfg["datasets"]["tiny_photos"]["size"] = 32
    cfg["datasets"]["tiny_photos"]["window"]["radius"] = radius
    check_config(cfg)
