"""Smoke test of benchmarks/: a tiny optimizer run, its JSON schema and the goal-line format.

The numbers of a tiny run mean nothing (a handful of problems on a shared machine); only
the shape of the output is checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: ``<goal>: <measured> (goal <target>) met`` or ``... missed``.
GOAL_LINE = re.compile(
    r"^(?P<name>[^:]+): (?P<measured>.+) \(goal (?P<target>[^)]+)\) (met|missed)$"
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    pytest.importorskip("kornia")
    pytest.importorskip("scipy")
    out = tmp_path_factory.mktemp("benchmarks")  # keep results/benchmarks/ of real runs
    return run_tiny("optimizer", out), out


def run_tiny(benchmark: str, out: Path) -> subprocess.CompletedProcess:
    """``benchmarks/run.py --tiny --only <benchmark> --out <out>``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--only", benchmark]
        + ["--out", str(out)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


class TestRun:
    def test_smoke(self, tiny_run: tuple[subprocess.CompletedProcess, Path]) -> None:
        proc, _ = tiny_run
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def test_goal_lines(self, tiny_run: tuple[subprocess.CompletedProcess, Path]) -> None:
        proc, _ = tiny_run
        tail = proc.stdout.split("== goals", 1)[1].splitlines()[1:]
        lines = [ln for ln in tail if not ln.startswith("==")]
        assert len(lines) == 6, proc.stdout[-2000:]
        for line in lines:
            assert GOAL_LINE.match(line), line
        names = [GOAL_LINE.match(ln)["name"] for ln in lines]
        assert names[:4] == [
            "optimizer speed-up vs kornia (28x28, 1 start)",
            "optimizer speed-up vs torchreg (28x28, 1 start)",
            "optimizer speed-up vs kornia (28x28, 12 starts)",
            "optimizer speed-up vs torchreg (28x28, 12 starts)",
        ]

    def test_json_schema(self, tiny_run: tuple[subprocess.CompletedProcess, Path]) -> None:
        _, results = tiny_run
        doc = json.loads((results / "optimizer.json").read_text())
        assert doc["benchmark"] == "optimizer"
        assert {"quick", "created_at", "environment", "results", "goals"} <= set(doc)
        assert {"torch", "torch_threads", "kornia"} <= set(doc["environment"])
        (size,) = doc["results"]["sizes"]
        assert size["size"] == 28
        assert {"median", "p99"} <= set(size["floor"])
        assert {"featalign", "featalign_id", "kornia", "scipy"} <= set(size["methods"])
        keys = {
            "seconds_per_problem",
            "median",
            "p99",
            "share_below_1e-2",
            "excess_median",
            "matrix_rms_px_median",
            "problems",
        }
        for name, m in size["methods"].items():
            assert keys <= set(m), name
            assert m["seconds_per_problem"] > 0
        for g in doc["goals"]:
            assert {"name", "measured", "target", "met", "note", "line"} <= set(g)
            assert GOAL_LINE.match(g["line"]), g["line"]
        summary = json.loads((results / "goals.json").read_text())
        assert [g["line"] for g in summary["goals"]] == [g["line"] for g in doc["goals"]]


class TestCommon:
    def test_from_theta_round_trip(self) -> None:
        import torch

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from common import from_theta, make_problems

        from featalign.geometry import to_theta

        pr = make_problems(4, 28, channels=2, per_target=2)
        back = from_theta(to_theta(pr.answer, pr.grid), pr.grid)
        assert torch.allclose(back, pr.answer, atol=1e-12)
        # the exact answer leaves only the resampling floor
        assert float(pr.floor.max()) < 1e-2

    def test_goal_line_format(self) -> None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from common import goal_line

        assert goal_line("x speed-up", "3.0x", ">= 2x", True) == "x speed-up: 3.0x (goal >= 2x) met"
        assert GOAL_LINE.match(goal_line("a (28x28)", "1.0 %", ">= 99 %", False))


@pytest.fixture(scope="module")
def tiny_workflow(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess, Path]:
    """``run.py --tiny --only workflow``: the dry runs of config/paper.yaml and config/test.yaml."""
    out = tmp_path_factory.mktemp("workflow_benchmark")
    return run_tiny("workflow", out), out


class TestWorkflow:
    def test_smoke(self, tiny_workflow: tuple[subprocess.CompletedProcess, Path]) -> None:
        proc, _ = tiny_workflow
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def test_paper_job_count_goal(
        self, tiny_workflow: tuple[subprocess.CompletedProcess, Path]
    ) -> None:
        proc, _ = tiny_workflow
        tail = proc.stdout.split("== goals", 1)[1].splitlines()[1:]
        lines = [ln for ln in tail if not ln.startswith("==")]
        for line in lines:
            assert GOAL_LINE.match(line), line
        (line,) = [ln for ln in lines if ln.startswith("workflow jobs of config/paper.yaml:")]
        assert int(GOAL_LINE.match(line)["measured"]) > 0

    def test_json_job_counts(self, tiny_workflow: tuple[subprocess.CompletedProcess, Path]) -> None:
        _, results = tiny_workflow
        doc = json.loads((results / "workflow.json").read_text())
        assert doc["benchmark"] == "workflow"
        for config in ("config/paper.yaml", "config/test.yaml"):
            dry = doc["results"]["dry_runs"][config]
            assert dry["jobs"]["all"] == 1, config
            assert dry["total"] == sum(dry["jobs"].values()) > 1, config
        assert doc["results"]["runs"] == {}  # --tiny runs nothing
        for g in doc["goals"]:
            assert GOAL_LINE.match(g["line"]), g["line"]


class TestPaperEstimate:
    def test_work_ratios_follow_the_configs(self) -> None:
        """paper.yaml: 64 samples x 55 transforms at 128 px; default: 8 x 21 at 64 px."""
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import bench_workflow

        rules = {
            "align": {"median_s": 6.0, "median_compute_s": 2.0},
            "features": {"median_s": 5.0},
            "summarize": {"median_s": 4.0},
        }
        jobs = {"jobs": {"align": 85, "features": 29, "summarize": 1, "all": 1}, "total": 116}
        est = bench_workflow.paper_estimate(rules, jobs)
        assert est["align"]["factor"] == pytest.approx(64 * 55 * 128**2 / (8 * 21 * 64**2))
        assert est["features"]["factor"] == pytest.approx(
            64 * (1 + 2 * 55) * 128**2 / (8 * (1 + 2 * 21) * 64**2)
        )
        # the start-up stays, the computation scales
        assert est["align"]["seconds_per_job"] == pytest.approx(4.0 + 2.0 * est["align"]["factor"])
        assert est["features"]["seconds_per_job"] == pytest.approx(5.0 * est["features"]["factor"])
        assert est["summarize"] == {
            "jobs": 1,
            "factor": 1.0,
            "fixed_seconds": 0.0,
            "seconds_per_job": 4.0,
        }
        assert "all" not in est
        total = sum(
            e["jobs"] * e["seconds_per_job"] for k, e in est.items() if k != "total_cpu_hours"
        )
        assert est["total_cpu_hours"] == pytest.approx(total / 3600)
