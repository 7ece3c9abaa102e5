"""Benchmark 6: one paper-sized chain, each job's wall time and peak memory against the Slurm profile.

``snakemake results/alignment/photos/vgg_random/block1.nc --cores 2 --configfile
config/paper.yaml`` (64 photographs x 55 transforms at 128 px: the dataset job, the
features job of vgg_random with its dense maps, the align job of block1) runs in a
**scratch copy** of the repository (:func:`bench_workflow.scratch_copy`: tracked and
untracked files, uncommitted edits included; ``results/`` and ``logs/`` start empty),
as a user runs it. Each job's wall seconds and peak RSS come from the ``benchmark:``
TSV Snakemake writes beside its log (``s`` and ``max_rss``, MB), and are set against
what ``workflow/profiles/slurm/config.yaml`` grants the job's rule (``mem_mb``,
``runtime`` in minutes; ``default-resources`` where the rule has no entry) as ratios:
used / granted. A job that needs more than it is granted dies on a cluster that
enforces ``--mem`` or ``-t``; a ratio near 1 leaves no margin.

**Goals** (per job): peak RSS <= 2 GiB (the issue's bound for every paper-scale job on
the CPU), peak RSS <= the profile's ``mem_mb``, wall <= the profile's ``runtime``.
Ratios, not timings: the wall ratio holds on a machine like the one the profile was
measured on (2 cores, README "Running on a GPU or a cluster").

**Cost**: the features job dominates (s^2 = 16 forward passes of 7104 images for the
dense maps of vgg_random's stride-4 layer): 801 s of the chain's 1159 s on 2 cores (2026-12-01), and a
features file of several GB in the scratch copy. Full mode only (``make bench``);
``--quick`` and ``--tiny`` skip it, and ``--chain-config`` (standalone) runs another
config, e.g. a copy of paper.yaml with ``features: {dense: false}`` (same block1 file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from bench_workflow import CORES, remove_copy, rule_benchmarks, scratch_copy, snakemake
from common import ROOT, Goal, write_json

NAME = "paper_chain"
TARGET = "results/alignment/photos/vgg_random/block1.nc"
CONFIG = "config/paper.yaml"
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
#: Every paper-scale job on the CPU (the issue's goal).
RSS_GOAL_MB = 2 * 1024 * 1.048576  # 2 GiB in MB, the unit of Snakemake's max_rss


def granted(profile: Path = PROFILE) -> dict[str, dict[str, float]]:
    """Per rule, the ``mem_mb`` and ``runtime`` (minutes) the Slurm profile grants.

    Rules without a ``set-resources`` entry get ``default-resources``; the entry
    ``"*"`` holds those.
    """
    doc = yaml.safe_load(profile.read_text())
    default = {k: doc["default-resources"][k] for k in ("mem_mb", "runtime")}
    out = {"*": {k: float(v) for k, v in default.items()}}
    for rule, res in (doc.get("set-resources") or {}).items():
        out[rule] = {k: float(res.get(k, default[k])) for k in ("mem_mb", "runtime")}
    return out


def chain(config: str = CONFIG, target: str = TARGET) -> dict[str, Any]:
    """Run the chain in a scratch copy; per rule its jobs' wall and peak against the grant."""
    work = scratch_copy()
    try:
        print(f"[paper_chain] snakemake {target} --cores {CORES} --configfile {config}"
              f" in {work}", flush=True)
        run = snakemake(work, target, "--cores", str(CORES), "--configfile", config,
                        timeout=6 * 3600)
        rules = rule_benchmarks(work, run.output)
    finally:
        remove_copy(work)
    grants = granted()
    jobs: dict[str, Any] = {}
    for rule, r in rules.items():
        g = grants.get(rule, grants["*"])
        jobs[rule] = {
            "wall_s": r["max_s"],
            "max_rss_mb": r["max_rss_mb"],
            "granted_mem_mb": g["mem_mb"],
            "granted_runtime_min": g["runtime"],
            "mem_ratio": r["max_rss_mb"] / g["mem_mb"] if r["max_rss_mb"] else None,
            "runtime_ratio": r["max_s"] / (60 * g["runtime"]) if r["max_s"] else None,
        }
    return {"config": config, "target": target, "seconds": run.seconds, "jobs": jobs}


def print_chain(result: dict[str, Any]) -> None:
    print(f"  {'job':<10} {'wall s':>8} {'granted min':>12} {'ratio':>6}"
          f" {'peak MB':>8} {'granted MB':>11} {'ratio':>6}")
    for rule, j in result["jobs"].items():
        print(f"  {rule:<10} {j['wall_s']:>8.0f} {j['granted_runtime_min']:>12.0f}"
              f" {j['runtime_ratio']:>6.2f} {j['max_rss_mb']:>8.0f}"
              f" {j['granted_mem_mb']:>11.0f} {j['mem_ratio']:>6.2f}")
    print(f"  chain: {result['seconds']:.0f} s wall")


def goals_of(result: dict[str, Any]) -> list[Goal]:
    goals = []
    for rule, j in result["jobs"].items():
        rss = j["max_rss_mb"]
        goals += [
            Goal(f"paper chain {rule} job peak RSS", f"{rss:.0f} MB",
                 f"<= {RSS_GOAL_MB:.0f} MB (2 GiB)", rss <= RSS_GOAL_MB),
            Goal(f"paper chain {rule} job peak RSS / Slurm mem_mb", f"{j['mem_ratio']:.2f}",
                 f"<= 1 ({j['granted_mem_mb']:.0f} MB granted)", j["mem_ratio"] <= 1),
            Goal(f"paper chain {rule} job wall / Slurm runtime", f"{j['runtime_ratio']:.2f}",
                 f"<= 1 ({j['granted_runtime_min']:.0f} min granted)", j["runtime_ratio"] <= 1),
        ]
    return goals


def main(quick: bool = False, tiny: bool = False, config: str = CONFIG) -> list[Goal]:
    """Run benchmark 6 (full mode only), write ``results/benchmarks/paper_chain.json``."""
    if quick or tiny:
        print("[paper_chain] skipped: full mode only (about 1.5-2 h on 2 cores)")
        return []
    result = chain(config)
    print_chain(result)
    goals = goals_of(result)
    write_json(NAME, result, goals, quick)
    return goals


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain-config", default=CONFIG,
                    help=f"config of the chain, relative to the repository (default {CONFIG})")
    a = ap.parse_args()
    for goal in main(config=a.chain_config):
        print(goal.line())
