"""Benchmark 3: the cost of multi-start, 8 starts (the grid symmetries) against 1 (identity).

``fit_affine`` with its defaults (pyramid, ``keep_starts=3``: after the coarsest level
only the 3 best starts of each problem go on, Adam polish of the winner) on the same
problems, once from the 8 grid symmetries and once from the identity alone. The two
are timed in interleaved pairs (3 quick, 5 full), each pair giving one ratio; the goal,
8 starts cost at most 3× one start, is met only when the whole range of the ratios is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from common import (
    Goal,
    error_summary,
    make_problems,
    paired_ratio,
    run_standalone,
    set_threads,
    write_json,
)

from featalign.align.affine import fit_affine
from featalign.align.starts import grid_symmetries
from featalign.geometry import identity

NAME = "multistart"


def main(quick: bool = False, tiny: bool = False) -> list[Goal]:
    """Run benchmark 3, write ``results/benchmarks/multistart.json`` and return its goals."""
    set_threads(2)
    count = 16 if tiny else 64 if quick else 256
    repeats = 1 if tiny else 3 if quick else 5
    size = 28
    print(f"[multistart] {count} problems, 64 channels, {size}x{size}", flush=True)
    pr = make_problems(count, size, seed=1)
    starts = {"1 start": identity(1, torch.float64), "8 starts": grid_symmetries()}

    def run(s: torch.Tensor) -> tuple[float, torch.Tensor]:
        t0 = time.perf_counter()
        fit = fit_affine(pr.sources, pr.moving, pr.target_index, s, pr.grid, pr.mask)
        return time.perf_counter() - t0, fit.error

    run(starts["8 starts"][:2])  # warm-up, off the clock
    seconds: dict[str, list[float]] = {k: [] for k in starts}
    errors: dict[str, torch.Tensor] = {}

    def timed(k: str) -> Callable[[], float]:
        def go() -> float:
            dt, errors[k] = run(starts[k])
            seconds[k].append(dt)
            return dt

        return go

    ratio = paired_ratio(timed("8 starts"), timed("1 start"), repeats)
    best = {k: min(v) for k, v in seconds.items()}
    summaries = {k: error_summary(e, pr.floor) for k, e in errors.items()}
    for k in starts:
        print(
            f"  {k:<9} {1e3 * best[k] / count:8.1f} ms/problem  "
            f"error median {summaries[k]['median']:.2e}"
        )
    payload = {
        "problems": count,
        "size": size,
        "channels": 64,
        "keep_starts": 3,
        "seconds": seconds,
        "best_seconds": best,
        "errors": summaries,
    }
    payload["paired_ratios"] = list(ratio.samples)
    goals = [ratio.goal("multi-start cost, 8 starts vs 1", "<= 3x")]
    write_json(NAME, payload, goals, quick or tiny)
    return goals


if __name__ == "__main__":
    run_standalone(main, __doc__)
