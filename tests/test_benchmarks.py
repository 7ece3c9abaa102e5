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

    def test_ratio_interval_is_the_medians_confidence_interval(self) -> None:
        import math

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from common import Ratio, median_interval_rank

        for n in range(1, 40):
            k = median_interval_rank(n)
            cover = lambda r: 1 - 2 * sum(math.comb(n, i) for i in range(r)) / 2**n  # noqa: E731
            # the largest rank whose interval covers the median with >= 90 %, at least 1
            assert k == 1 or cover(k) >= 0.9
            assert k + 1 > (n + 1) // 2 or cover(k + 1) < 0.9
        assert median_interval_rank(9) == 2 and median_interval_rank(5) == 1
        # three ratios: the range; nine: one outlier on either side does not count
        assert (Ratio((2.0, 1.0, 3.0)).low, Ratio((2.0, 1.0, 3.0)).high) == (1.0, 3.0)
        nine = Ratio((2.0, 0.5, 2.1, 1.9, 2.2, 2.0, 1.8, 2.3, 9.0))
        assert (nine.low, nine.high) == (1.8, 2.3)
        assert nine.meets(">= 1.5x") and not nine.meets(">= 1.9x")

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


class TestPaperCost:
    """``benchmarks/paper_cost.py``: the paper config at fewer samples, projected back."""

    @staticmethod
    def module():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import paper_cost

        return paper_cost

    def test_cost_config_changes_only_the_counts(self) -> None:
        import yaml

        pc = self.module()
        paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
        cfg = pc.cost_config(paper, samples=2, recognition=10, seeds=1)
        assert {d["samples"] for d in cfg["datasets"].values()} == {2}
        assert cfg["recognition"]["samples"] == 10
        assert cfg["stn"]["seeds"] == paper["stn"]["seeds"][:1]
        for key in ("transforms", "networks", "alignment", "region", "affine_draws"):
            assert cfg[key] == paper[key], key
        for name, ds in cfg["datasets"].items():
            assert {k: v for k, v in ds.items() if k != "samples"} == {
                k: v for k, v in paper["datasets"][name].items() if k != "samples"
            }
        assert paper["datasets"]["photos"]["samples"] == 64  # the paper's own left alone
        scale = pc._scale(paper, samples=2, recognition=10, seeds=1)
        assert scale == {"samples": 32.0, "recognize": (64 + 500) / (2 + 10), "stn_seeds": 5.0}

    def test_no_dense_changes_only_the_dense_switch(self) -> None:
        import yaml

        pc = self.module()
        paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
        dense = pc.cost_config(paper, samples=1, recognition=5, seeds=1)
        plain = pc.cost_config(paper, samples=1, recognition=5, seeds=1, dense=False)
        assert plain["features"]["dense"] is False
        assert dense.get("features", {}).get("dense", True) is True
        assert {k: v for k, v in plain.items() if k != "features"} == {
            k: v for k, v in dense.items() if k != "features"
        }
        assert {k: v for k, v in plain["features"].items() if k != "dense"} == {
            k: v for k, v in dense.get("features", {}).items() if k != "dense"
        }
        assert "features" not in paper or paper["features"].get("dense", True)  # untouched

    def test_projection_scales_the_computation_not_the_start_up(self, tmp_path: Path) -> None:
        import netCDF4

        pc = self.module()
        for name, compute in (("a.nc", 3.0), ("f.nc", 9.0)):
            with netCDF4.Dataset(tmp_path / name, "w") as nc:
                nc.setncattr("compute_seconds", compute)
        jobs = [
            {"rule": "align", "output": "a.nc", "threads": 1, "s": 5.0, "max_rss_mb": 900.0},
            {"rule": "features", "output": "f.nc", "threads": 1, "s": 13.0, "max_rss_mb": 1500.0},
            {"rule": "dataset", "output": "d.nc", "threads": 1, "s": 4.0, "max_rss_mb": 800.0},
            {"rule": "recognize", "output": "r.nc", "threads": 1, "s": 6.0, "max_rss_mb": None},
            {"rule": "stn_train", "output": "s.nc", "threads": 1, "s": 7.0, "max_rss_mb": 300.0},
            {"rule": "train", "output": "w.pt", "threads": 2, "s": 8.0, "max_rss_mb": 1000.0},
        ]
        scale = {"samples": 10.0, "recognize": 3.0, "stn_seeds": 5.0}
        pc.project(tmp_path, jobs, scale)
        paper = {j["rule"]: j["paper_s"] for j in jobs}
        # align and features: start-up (s - compute) + compute x 10; dataset: all x 10
        assert paper == {"align": 2 + 30, "features": 4 + 90, "dataset": 40,
                         "recognize": 18, "stn_train": 7, "train": 8}
        grants = {"*": {"mem_mb": 2000.0, "runtime": 1.0}}
        result = pc.summarise(jobs, grants)
        assert result["rules"]["stn_train"]["paper_jobs"] == 5
        job_s = 32 + 94 + 40 + 18 + 5 * 7 + 8
        assert result["job_hours"] == pytest.approx(job_s / 3600)
        assert result["two_core_hours"] == pytest.approx((job_s + 8) / 2 / 3600)
        goals = {g.name: g for g in pc.goals_of(result)}
        assert goals["paper features job wall / Slurm runtime (projected)"].met is False  # 94 s > 1 min
        assert goals["paper align job wall / Slurm runtime (projected)"].met is True
        assert goals["paper features job peak RSS"].met is True
        assert "paper recognize job peak RSS" not in goals  # too short to sample
        assert goals[f"{pc.PAPER} on 2 cores, from its jobs at paper size"].met is True

    def test_report_projects_a_kept_copy_as_it_stands(self, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
        import netCDF4
        import yaml
        from bench_workflow import Run

        pc = self.module()
        paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
        (tmp_path / "config").mkdir()
        (tmp_path / pc.COST_CONFIG).write_text(yaml.safe_dump(pc.cost_config(paper, 2, 10, 1)))
        (tmp_path / "logs").mkdir()
        with netCDF4.Dataset(tmp_path / "a.nc", "w") as nc:
            nc.setncattr("compute_seconds", 3.0)
        (tmp_path / "logs" / "a.tsv").write_text("s\th:m:s\tmax_rss\n5.0\t0:00:05\t900\n")
        listing = ("Job stats:\njob      count\n-----  -----\nalign      1\nsummarize  1\n"
                   "total      2\n\nrule align:\n    output: a.nc\n    benchmark: logs/a.tsv\n"
                   "\nrule summarize:\n    output: t.csv\n    benchmark: logs/t.tsv\n")
        monkeypatch.setattr(pc, "snakemake", lambda work, *args, timeout: Run(1.0, 0, 0, listing))
        with pytest.raises(SystemExit, match=r"without a benchmark TSV, per rule: \{'summarize': 1\}"):
            pc.report(tmp_path)
        (tmp_path / "logs" / "t.tsv").write_text("s\tmax_rss\n2.0\tNA\n")
        result = pc.report(tmp_path)
        # align: start-up 2 s + compute 3 s x 64 / 2 samples; the summary as measured
        assert result["rules"]["align"]["paper_job_seconds"] == pytest.approx(2 + 3 * 32)
        assert result["job_hours"] == pytest.approx((2 + 96 + 2) / 3600)
        assert (result["samples"], result["recognition"], result["seeds"]) == (2, 10, 1)
        assert "job-hours" in capsys.readouterr().out

    def test_report_names_a_folder_that_is_no_kept_copy(self, tmp_path: Path) -> None:
        with pytest.raises(SystemExit, match="holds no config/paper_cost.yaml"):
            self.module().report(tmp_path)
