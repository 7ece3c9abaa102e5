"""Shared fixtures and helpers: seeded rng, device and dtype, the repository root, an
isolated plugin registry, plugin files and extractors made by tests, workflow runs, and
the counts that tests record for the summary at the end of the run."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: Counts that tests record (faults injected, configs fuzzed), by group; printed by
#: :func:`pytest_terminal_summary` at the end of the run, whatever order tests ran in.
COUNTS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

#: Tolerances per dtype, used instead of numbers scattered through the tests.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for device-aware tests (cpu, cuda)")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("--device cuda given but no GPU is present")
    return torch.device(name)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the workflow with ``workdir`` as its working directory (results go there)."""
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        *args,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register networks without leaking them into the others."""
    from featalign import plugins

    monkeypatch.setattr(plugins, "_REGISTRY", dict(plugins._REGISTRY))
    monkeypatch.setattr(plugins, "_PLUGIN_FILES", set(plugins._PLUGIN_FILES))


def write_plugin(folder: Path, filename: str, name: str, body: str = "", **decl: str) -> Path:
    """Write a plugin file declaring ``name``; ``decl`` overrides decorator arguments
    (as source text), ``body`` is the body of ``build(**options)``."""
    args = {
        "name": repr(name),
        "description": repr("a test network"),
        "layers": "['conv']",
        "invariant_to": "[]",
        "in_channels": "1",
    }
    args.update(decl)
    body = body or "return torch.nn.Conv2d(1, 1, 3, padding=1)"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(
        "import torch\nfrom featalign.plugins import network\n\n"
        f"@network({', '.join(f'{k}={v}' for k, v in args.items())})\n"
        "def build(**options):\n" + textwrap.indent(body, "    ") + "\n"
    )
    return path


def extractor_of(
    model: torch.nn.Module, nodes: Mapping[str, str], *, in_channels: int = 3
) -> torch.nn.Module:
    """The workflow's extractor (:func:`featalign.extractor.build_extractor`) around a
    module a test built: layer label -> graph node name (or a submodule's name)."""
    from featalign.extractor import build_extractor
    from featalign.plugins import NetworkSpec

    spec = NetworkSpec(
        name="test_module",
        description="a module built by a test",
        layers=tuple(nodes),
        invariant_to=(),
        in_channels=in_channels,
        build=lambda: model,
        source=Path(__file__),
        nodes=dict(nodes),
    )
    return build_extractor(spec)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the counts that tests recorded in :data:`COUNTS`, one line per group."""
    groups = {group: counts for group, counts in sorted(COUNTS.items()) if counts}
    if not groups:
        return
    terminalreporter.section("featalign counts")
    for group, counts in groups.items():
        terminalreporter.write_line(f"{group}: {dict(sorted(counts.items()))}")
