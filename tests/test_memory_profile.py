"""The Slurm profile's grants and the paper-chain benchmark that sets jobs against them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_paper_chain  # noqa: E402


def _rules() -> set[str]:
    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"^(?:local)?rule (\w+):", text, re.M))


class TestGranted:
    def test_every_entry_is_a_rule(self):
        grants = bench_paper_chain.granted()
        assert set(grants) - {"*"} <= _rules(), set(grants) - {"*"} - _rules()

    def test_the_chain_has_its_own_grants(self):
        grants = bench_paper_chain.granted()
        for rule in ("dataset", "features", "align"):
            assert rule in grants
            assert grants[rule]["mem_mb"] > 0 and grants[rule]["runtime"] > 0

    def test_default_resources_fill_missing_keys(self, tmp_path):
        profile = tmp_path / "config.yaml"
        profile.write_text("default-resources: {mem_mb: 1000, runtime: 10}\n"
                           "set-resources:\n  align: {mem_mb: 3000}\n")
        grants = bench_paper_chain.granted(profile)
        assert grants == {"*": {"mem_mb": 1000.0, "runtime": 10.0},
                          "align": {"mem_mb": 3000.0, "runtime": 10.0}}


class TestGoals:
    def test_ratios_and_verdicts(self):
        result = {"jobs": {"features": {
            "wall_s": 1800.0, "max_rss_mb": 2500.0, "granted_mem_mb": 2000.0,
            "granted_runtime_min": 60.0, "mem_ratio": 1.25, "runtime_ratio": 0.5,
        }}}
        lines = [g.line() for g in bench_paper_chain.goals_of(result)]
        assert lines == [
            "paper chain features job peak RSS: 2500 MB (goal <= 2147 MB (2 GiB)) missed",
            "paper chain features job peak RSS / Slurm mem_mb: 1.25 (goal <= 1 (2000 MB "
            "granted)) missed",
            "paper chain features job wall / Slurm runtime: 0.50 (goal <= 1 (60 min granted)) met",
        ]

    @pytest.mark.parametrize("mode", [{"quick": True}, {"tiny": True}])
    def test_full_mode_only(self, mode):
        assert bench_paper_chain.main(**mode) == []
