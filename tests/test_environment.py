"""The conda environment.yml lists the same dependencies as pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import ROOT


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert {_norm(r) for r in project["dependencies"]} == {_norm(r) for r in pip if r != "-e ."}
    assert conda_python == ["python=3.11"] and ">=3.11" in project["requires-python"]


def test_nodeps_packages_in_step():
    """The packages installed with --no-deps are named alike in the Makefile and environment.yml."""
    make = (ROOT / "Makefile").read_text()
    nodeps = re.search(r"^NODEPS := (.+)$", make, re.M).group(1).split()
    env_text = (ROOT / "environment.yml").read_text()
    for pkg in nodeps:
        assert pkg in env_text, f"{pkg} is installed by the Makefile but not named in environment.yml"
