"""Time per problem of ``fit_affine`` against the size of its CPU chunks.

Not part of ``run.py``: it informs a default (``featalign.align.affine.CPU_CHUNK_ELEMENTS``)
and checks no goal. On the benchmark's known-answer problems (:func:`common.make_problems`,
256 at 28×28 and 128 at 56×56, the 12 starts ``align_layer`` uses) it runs ``fit_affine``
with the CPU chunk bound set to 2**25 (what the memory bound
``alignment.max_batch_elements`` allows) down to 2**20 elements, in interleaved rounds,
and prints the median milliseconds per problem, its ratio to 2**25 and how far the
matrices moved from 2**25's (rounding, where a chunk's edge splits the problems of one
target)::

    .venv/bin/python benchmarks/chunk_sweep.py [--rounds 3] [--dense [--method adam]]

``--dense`` sweeps the dense measure's fit (``featalign.align.dense.fit_dense``, which keeps
the same CPU bound) instead, on maps shaped like config/paper.yaml's stride-8 dense maps:
55 problems (one sample's transforms) of 128 channels at 104 × 104 against one target,
smooth random fields (σ = 2 px), R a disk of 0.3 × 104 px, from the identity, with its
default method (20 Levenberg–Marquardt iterations; ``--method adam``: 60 Adam steps).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_optimizer import featalign_starts
from common import make_problems, set_threads, smooth_fields

from featalign.align import affine, dense
from featalign.align.measures import region_mask
from featalign.geometry import Grid

SIZES = ((28, 256), (56, 128))
CHUNKS = (25, 23, 22, 21, 20)
MovedBy = Callable[[torch.Tensor, torch.Tensor], float]


def _interleaved(
    rounds: int, module: object, fit: Callable[[], torch.Tensor], moved_by: MovedBy
) -> tuple[dict[int, float], dict[int, float]]:
    """Median seconds per chunk bound (``module.CPU_CHUNK_ELEMENTS`` = 2**log2 for each of
    :data:`CHUNKS`, interleaved over ``rounds``) and how far ``fit()``'s result moved from
    the first bound's, by ``moved_by(result, reference)``."""
    times: dict[int, list[float]] = {}
    moved: dict[int, float] = {}
    ref: torch.Tensor | None = None
    for _ in range(rounds):
        for log2 in CHUNKS:
            module.CPU_CHUNK_ELEMENTS = 2**log2  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            result = fit()
            times.setdefault(log2, []).append(time.perf_counter() - t0)
            ref = result if ref is None else ref
            moved[log2] = moved_by(result, ref)
    return {k: statistics.median(v) for k, v in times.items()}, moved


def sweep(rounds: int) -> None:
    set_threads(2)
    for size, count in SIZES:
        p = make_problems(count, size)
        args = (p.sources, p.moving, p.target_index, featalign_starts(size), p.grid, p.mask)
        affine.fit_affine(*args)  # warm-up
        times, moved = _interleaved(
            rounds, affine, lambda: affine.fit_affine(*args).matrix,
            lambda m, ref: float((m - ref).abs().max()),
        )  # fmt: skip
        print(f"{size}x{size}, {count} problems, 12 starts ({rounds} rounds)")
        for log2, med in times.items():
            print(f"  chunk 2**{log2}  {1e3 * med / count:7.2f} ms/problem  {med / times[25]:5.2f}x"
                  f" of 2**25  matrices moved by up to {moved[log2]:.1e}")


def sweep_dense(
    rounds: int, method: str, count: int = 55, channels: int = 128, size: int = 104
) -> None:
    set_threads(2)
    gen = torch.Generator().manual_seed(0)
    target = smooth_fields(1, channels, size, 2.0, gen)
    moving = smooth_fields(count, channels, size, 2.0, gen)
    grid = Grid(size, size)
    args = (target, moving, torch.zeros(count, dtype=torch.int64),
            torch.eye(2, 3, dtype=torch.float64).expand(count, 2, 3).clone(), grid,
            region_mask(grid, 0.3 * size))
    dense.fit_dense(*args, steps=2, method=method)  # warm-up
    times, moved = _interleaved(
        rounds, dense,
        lambda: dense.fit_dense(*args, method=method, max_batch_elements=2**25).error,
        lambda e, ref: float(((e - ref).abs() / ref).max()),
    )  # fmt: skip
    print(f"dense fit ({method}): {count} problems, {channels} channels, {size}x{size}"
          f" ({rounds} rounds)")
    for log2, med in times.items():
        print(f"  chunk 2**{log2}  {med:6.2f} s  {med / times[25]:5.2f}x of 2**25"
              f"  errors moved by up to {moved[log2]:.1e} (relative)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dense", action="store_true", help="sweep the dense measure's fit")
    ap.add_argument("--method", choices=dense.DENSE_METHODS, default=dense.DENSE_METHODS[0],
                    help="the dense fit's method (with --dense)")
    a = ap.parse_args()
    if a.dense:
        sweep_dense(a.rounds, a.method)
    else:
        sweep(a.rounds)
