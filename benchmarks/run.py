"""Run the featalign benchmarks and print every goal line at the end.

Usage (from the repository root; ``make bench`` / ``make bench QUICK=1``)::

    .venv/bin/python benchmarks/run.py            # full: about 40 min on 2 cores, the paper chain 20 of them
    .venv/bin/python benchmarks/run.py --quick    # about 3 min
    .venv/bin/python benchmarks/run.py --only optimizer floor
    .venv/bin/python benchmarks/run.py --tiny --out /tmp/bench   # smoke test, seconds

The workflow benchmark takes about 2 min of the quick run (Snakemake on
``config/test.yaml``) and about 10 min of the full one (also the default config).
The paper-chain benchmark (last, full mode only) runs one paper-sized chain of
``config/paper.yaml`` (dataset, features and align of vgg_random on the photographs)
and sets each job's wall time and peak RSS against the Slurm profile's grants:
about 20 min more on 2 cores (``--only`` leaves it out, e.g. ``--only optimizer floor
multistart features workflow``).

Each benchmark writes ``results/benchmarks/<name>.json``; this script also writes
``results/benchmarks/goals.json`` with all goal lines. A missed goal is reported, not
an error: the exit status is 0 unless a benchmark crashes (then its goal line says
``crashed`` as a missed goal, the others still run, and the status is 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_features
import bench_floor
import bench_multistart
import bench_optimizer
import bench_paper_chain
import bench_workflow
import common
from common import Goal

#: The benchmarks, in the order they run.
BENCHMARKS = {
    "optimizer": bench_optimizer.main,
    "floor": bench_floor.main,
    "multistart": bench_multistart.main,
    "features": bench_features.main,
    "workflow": bench_workflow.main,  # it runs Snakemake for minutes
    "paper_chain": bench_paper_chain.main,  # last, full mode only: one paper-sized chain
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; print and write all goal lines. Returns the exit status."""
    ap = argparse.ArgumentParser(description="featalign benchmarks: ratios against peers")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer problems, no default-config workflow run (about 3 min)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="seconds-long smoke run for the tests; numbers mean nothing",
    )
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    ap.add_argument(
        "--out",
        type=Path,
        default=common.RESULTS,
        help="folder of the JSON files (default: results/benchmarks)",
    )
    args = ap.parse_args(argv)
    common.RESULTS = args.out
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    goals: list[Goal] = []
    crashed = False
    for name in args.only:
        t1 = time.perf_counter()
        try:
            goals += BENCHMARKS[name](quick=args.quick, tiny=args.tiny)
        except Exception:  # noqa: BLE001 - report and go on with the other benchmarks
            traceback.print_exc()
            goals.append(Goal(f"{name} benchmark", "crashed", "runs", False))
            crashed = True
        print(f"[{name}] {time.perf_counter() - t1:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "goals.json").write_text(
        json.dumps(
            {
                "quick": args.quick,
                "tiny": args.tiny,
                "seconds": time.perf_counter() - t0,
                "goals": [g.to_dict() for g in goals],
            },
            indent=2,
        )
        + "\n"
    )
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    print(
        f"\n== goals ({mode} run, {time.perf_counter() - t0:.0f} s; ratios measured in this run) =="
    )
    for g in goals:
        print(g.line())
    missed = sum(not g.met for g in goals)
    print(f"== {len(goals) - missed} met, {missed} missed ==")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
