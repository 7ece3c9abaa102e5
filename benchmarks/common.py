"""Shared pieces of the benchmarks: problems with known answers, timing, JSON and goal lines.

Every speed number a benchmark reports is a *ratio* of two timings taken in the same
process, one right after the other, on the same tensors: the machines these run on are
shared and noisy, so absolute times are printed for orientation only.

**Problems** (:func:`make_problems`): targets are smooth random multi-channel fields
(white noise blurred by a Gaussian of ``sigma`` pixels, each channel scaled to unit
variance), ``moving = featalign.geometry.warp(target, g)`` with ``g`` a random affine map
(rotation, isotropic and anisotropic scale, shear, translation), drawn so that ``g(R)``
stays inside the canvas with a margin: the exact answer is ``invert(g)``. R is the disk of
``radius_frac × size`` image pixels about the canvas centre (featalign's region). The
*floor* of a problem is the error of that exact answer: bilinear resampling twice is not
the identity, so no method can be expected to get much below it.

**Metric** (:func:`final_error`): featalign's :func:`~featalign.align.measures.relative_error`
over R of ``warp(moving, M)`` against ``target``, for every method's final matrix ``M``
(``tgt_from_src`` in centred image pixels), so all methods are scored identically.

**Goal lines** (:func:`goal_line`): ``<goal>: <measured> (goal <target>) met`` or
``... missed``; ``benchmarks/run.py`` prints them all at the end.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without an editable install
    sys.path.insert(0, str(ROOT / "src"))

from featalign.align.measures import region_mask, relative_error
from featalign.geometry import (
    Grid,
    anisotropic_scaling,
    compose,
    invert,
    rotation,
    scaling,
    shear,
    translation,
    warp,
)
from featalign.runtime import reuse_freed_memory

__all__ = [
    "RESULTS",
    "Goal",
    "Problems",
    "Ratio",
    "environment",
    "error_summary",
    "final_error",
    "from_theta",
    "goal_line",
    "make_problems",
    "matrix_rms_pixels",
    "median_interval_rank",
    "paired_ratio",
    "seconds_of",
    "set_threads",
    "time_call",
    "write_json",
]

#: Where every benchmark writes its JSON file (``run.py --out`` changes it).
RESULTS = ROOT / "results" / "benchmarks"


def set_threads(n: int = 2) -> None:
    """Use ``n`` torch threads (the benchmarks are sized for a 2-core machine), and the
    allocator settings of every workflow job (:func:`featalign.runtime.reuse_freed_memory`),
    which featalign and its peers then share."""
    torch.set_num_threads(n)
    reuse_freed_memory()


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problems:
    """A batch of alignment problems with known answers.

    Attributes:
        sources: (S_n, C, S, S) float32, the distinct targets Γ(f).
        target_index: (P,) int64, which source each problem aligns to (sorted).
        target: (P, C, S, S) float32, ``sources[target_index]``.
        moving: (P, C, S, S) float32, ``warp(target, g)``.
        g: (P, 2, 3) float64, the planted transforms (``tgt_from_src``, centred pixels).
        answer: (P, 2, 3) float64, ``invert(g)``: the warp of ``moving`` back onto ``target``.
        grid: the lattice of the maps (the image lattice ``Grid.image(S, S)``).
        mask: (S, S) bool, the region R.
        radius: radius of R in pixels.
        floor: (P,) float64, the error of ``answer`` (:func:`final_error`).
        sigma: smoothing of the fields in pixels.
    """

    sources: torch.Tensor
    target_index: torch.Tensor
    target: torch.Tensor
    moving: torch.Tensor
    g: torch.Tensor
    answer: torch.Tensor
    grid: Grid
    mask: torch.Tensor
    radius: float
    floor: torch.Tensor
    sigma: float

    def subset(self, n: int) -> Problems:
        """The first ``n`` problems (the draws are i.i.d., so the first n are a fair sample)."""
        used = int(self.target_index[:n].max()) + 1
        return Problems(
            self.sources[:used],
            self.target_index[:n],
            self.target[:n],
            self.moving[:n],
            self.g[:n],
            self.answer[:n],
            self.grid,
            self.mask,
            self.radius,
            self.floor[:n],
            self.sigma,
        )

    @property
    def count(self) -> int:
        """Number of problems P."""
        return int(self.target.shape[0])


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def smooth_fields(
    count: int, channels: int, size: int, sigma: float, gen: torch.Generator
) -> torch.Tensor:
    """Smooth random fields: white noise blurred by a Gaussian of ``sigma`` px, unit variance.

    The noise is drawn on a canvas padded by 3σ and cropped after blurring, so the
    field has no border artefact.

    Returns:
        (count, channels, size, size) float32.
    """
    k = _gaussian_kernel(sigma)
    r = (k.numel() - 1) // 2
    x = torch.randn(count * channels, 1, size + 2 * r, size + 2 * r, generator=gen)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = x.reshape(count, channels, size, size)
    return (x - x.mean((-2, -1), keepdim=True)) / x.std((-2, -1), keepdim=True)


def random_transforms(
    count: int, size: int, radius: float, gen: torch.Generator, *, max_angle: float = 30.0
) -> torch.Tensor:
    """Random affine maps that keep R inside the canvas (margin 1.5 px).

    Each is ``T · R(θ) · Sh(k) · An(m) · Sc(s)``: rotation θ uniform in ±``max_angle``°,
    shear k in ±0.2, anisotropic factor m (m along x, 1/m along y) log-uniform in
    [0.8, 1.25], isotropic scale s log-uniform in [0.9, 1.1], translation uniform in
    ±size/14 px per axis. Draws that would carry R's rim outside the canvas are redrawn.

    Returns:
        (count, 2, 3) float64, ``tgt_from_src`` in centred image pixels.
    """
    limit = (size - 1) / 2 - 1.5
    phi = torch.linspace(0, 2 * math.pi, 65, dtype=torch.float64)[:-1]
    rim = torch.stack([radius * phi.cos(), radius * phi.sin(), torch.ones_like(phi)])  # (3, 64)
    out: list[torch.Tensor] = []
    while len(out) < count:
        u = torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 1
        m = compose(
            translation(u[0] * size / 14, u[1] * size / 14),
            rotation(u[2] * max_angle),
            shear(u[3] * 0.2),
            anisotropic_scaling(
                torch.exp(u[4] * math.log(1.25)), torch.exp(-u[4] * math.log(1.25))
            ),
            scaling(torch.exp(u[5] * math.log(1.1))),
        )[0]
        if float((m @ rim).abs().max()) <= limit:
            out.append(m)
    return torch.stack(out)


def final_error(
    moving: torch.Tensor, target: torch.Tensor, matrix: torch.Tensor, grid: Grid, mask: torch.Tensor
) -> torch.Tensor:
    """The one metric of every method: featalign's relative error of ``warp(moving, matrix)``.

    Args:
        moving: (P, C, h, w).
        target: (P, C, h, w).
        matrix: (P, 2, 3), ``tgt_from_src`` in centred image pixels applied to ``moving``.
        grid: the maps' lattice.
        mask: the region R.

    Returns:
        (P,) float64.
    """
    with torch.no_grad():
        out = torch.empty(moving.shape[0], dtype=torch.float64)
        for lo in range(0, moving.shape[0], 64):
            sl = slice(lo, lo + 64)
            warped = warp(moving[sl], matrix[sl].to(torch.float64), grid)
            out[sl] = relative_error(warped, target[sl], mask)
    return out


def make_problems(
    count: int,
    size: int,
    channels: int = 64,
    *,
    per_target: int = 8,
    sigma: float = 4.0,
    radius_frac: float = 0.3,
    seed: int = 0,
) -> Problems:
    """``count`` alignment problems of ``channels`` smooth fields of ``size``² pixels.

    As in featalign's workflow (samples × transforms), each target is shared by
    ``per_target`` problems with different transforms.

    Args:
        count: P.
        size: S (square maps).
        channels: C.
        per_target: problems per distinct target (the number of transforms per sample).
        sigma: smoothing of the fields in pixels (larger: smaller floor).
        radius_frac: radius of R as a fraction of ``size``.
        seed: seed of the fields and of the transforms.

    Returns:
        :class:`Problems`.
    """
    gen = torch.Generator().manual_seed(seed)
    grid = Grid.image(size, size)
    radius = radius_frac * size
    mask = region_mask(grid, radius)
    n_sources = -(-count // per_target)
    sources = smooth_fields(n_sources, channels, size, sigma, gen)
    target_index = torch.arange(n_sources).repeat_interleave(per_target)[:count]
    target = sources[target_index]
    g = random_transforms(count, size, radius, gen)
    with torch.no_grad():
        moving = warp(target, g, grid)
    answer = invert(g)
    floor = final_error(moving, target, answer, grid, mask)
    return Problems(
        sources, target_index, target, moving, g, answer, grid, mask, radius, floor, sigma
    )


def matrix_rms_pixels(
    matrix: torch.Tensor, answer: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """RMS distance in pixels over R between where ``matrix`` and ``answer`` send each point.

    Returns:
        (P,) float64.
    """
    rows, cols = torch.nonzero(mask, as_tuple=True)
    h, w = mask.shape
    pts = torch.stack(
        [cols - (w - 1) / 2, rows - (h - 1) / 2, torch.ones_like(cols, dtype=torch.float64)]
    ).to(torch.float64)
    d = (matrix.to(torch.float64) - answer.to(torch.float64)) @ pts
    return d.pow(2).sum(1).mean(1).sqrt()


def from_theta(theta: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Inverse of :func:`featalign.geometry.to_theta`: torch ``theta`` -> ``tgt_from_src``.

    **Convention**: ``theta`` maps normalised *target* coordinates to normalised *source*
    coordinates (``affine_grid``, ``align_corners=False``); the result maps centred source
    pixels to centred target pixels ((x, y) order), both on ``grid``.

    Args:
        theta: (B, 2, 3) or homographies (B, 3, 3) with last row (0, 0, 1).
        grid: the lattice of source and target.

    Returns:
        (B, 2, 3) float64.
    """
    dt = torch.float64
    th = theta.detach().to(dt).cpu()
    if th.shape[-2] == 2:
        bottom = torch.tensor([0.0, 0.0, 1.0], dtype=dt).expand(th.shape[0], 1, 3)
        th = torch.cat([th, bottom], 1)
    n = grid.normalised_from_index(dt) @ torch.linalg.inv(grid.centred_from_index(dt))
    src_from_tgt = torch.linalg.inv(n) @ th @ n
    return invert(src_from_tgt[:, :2, :])


def error_summary(err: torch.Tensor, floor: torch.Tensor) -> dict[str, float]:
    """Median, 99th percentile, share below 1e-2 of the errors and of the excess over the floor."""
    e = torch.nan_to_num(err.to(torch.float64), nan=float("inf"))
    excess = e - floor.to(torch.float64)
    q = lambda x, p: float(torch.quantile(x.clamp_max(1e300), p))
    return {
        "median": q(e, 0.5),
        "p99": q(e, 0.99),
        "share_below_1e-2": float((e < 1e-2).double().mean()),
        "excess_median": q(excess, 0.5),
        "excess_p99": q(excess, 0.99),
        "excess_share_below_1e-2": float((excess < 1e-2).double().mean()),
    }


# --------------------------------------------------------------------------- timing


def time_call(
    fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, min_seconds: float = 0.0
) -> dict[str, float]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    If ``min_seconds`` is given, each timed sample loops ``fn`` until it has run that
    long and reports the time per call, so that very short calls are not dominated by
    the timer.

    Returns:
        {"median": s, "min": s, "samples": [...]} in seconds per call, and "calls":
        [...], the calls each sample took.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    counts: list[int] = []
    for _ in range(repeats):
        calls = 0
        t0 = time.perf_counter()
        while True:
            fn()
            calls += 1
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        samples.append(dt / calls)
        counts.append(calls)
    return {"median": statistics.median(samples), "min": min(samples), "samples": samples,
            "calls": counts}


#: The coverage the interval of a :class:`Ratio` asks for where its repeats allow it.
COVERAGE = 0.9


def median_interval_rank(n: int, coverage: float = COVERAGE) -> int:
    """The rank k of the distribution-free confidence interval [x_(k), x_(n+1-k)] of a median.

    For n independent samples, [x_(k), x_(n+1-k)] holds the true median with probability
    1 - 2 P(Binomial(n, 1/2) <= k - 1), whatever the distribution. k is the largest rank
    with at least ``coverage``; at least 1 (the whole range), which is all that few
    samples allow: the range of 3 covers 75 %, of 5 94 %; 9 samples reach 96 % at k = 2.

    Example:
        >>> [median_interval_rank(n) for n in (1, 3, 5, 7, 9, 15)]
        [1, 1, 1, 1, 2, 4]
    """
    k, below = 1, 0.0  # below: P(Binomial(n, 1/2) <= k - 1)
    while k < (n + 1) // 2:
        below += math.comb(n, k - 1) / 2**n  # ... extended to P(B <= k) for rank k + 1
        if 1 - 2 * (below + math.comb(n, k) / 2**n) < coverage:
            break
        k += 1
    return k


@dataclass(frozen=True)
class Ratio:
    """A speed ratio from paired, interleaved timings, with its spread.

    Each repeat times the numerator and the denominator back to back (their order
    alternating between repeats), and gives one ratio: a burst of load on a shared
    machine then moves both timings of a pair alike. The interval is the distribution-free
    confidence interval of the median paired ratio (:func:`median_interval_rank`: at least
    90 % where the repeats allow it; for up to 7 repeats the whole range, for 8 to 10 the
    range without its lowest and highest pair); a goal on the ratio counts as met only
    when the whole interval meets it (:meth:`meets`), so a verdict does not flip with the
    noise of one run, nor with one pair that a burst of load hit on one side only.

    Attributes:
        samples: the paired ratios, one per repeat.
    """

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median paired ratio."""
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        """The lower end of the interval: the k-th smallest paired ratio."""
        return sorted(self.samples)[median_interval_rank(len(self.samples)) - 1]

    @property
    def high(self) -> float:
        """The upper end of the interval: the k-th largest paired ratio.

        Example:
            >>> r = Ratio((2.0, 0.5, 2.1, 1.9, 2.2, 2.0, 1.8, 2.3, 2.1))  # one pair hit by load
            >>> r.low, r.high
            (1.8, 2.2)
        """
        return sorted(self.samples)[-median_interval_rank(len(self.samples))]

    def meets(self, target: str) -> bool:
        """Whether the whole interval meets ``">= x"`` or ``"<= x"`` (a trailing ``x`` ignored).

        Example:
            >>> r = Ratio((1.8, 2.2, 2.0))
            >>> r.meets(">= 1.5x"), r.meets(">= 2x"), r.meets("<= 2.5x")
            (True, False, True)
        """
        op, value = target.split()
        bound = float(value.rstrip("x"))
        if op == ">=":
            return self.low >= bound
        if op == "<=":
            return self.high <= bound
        raise ValueError(f"a ratio goal is '>= x' or '<= x', got {target!r}")

    def text(self, digits: int = 2) -> str:
        """``median x [low, high]``, e.g. ``2.00x [1.80, 2.20]``."""
        return f"{self.median:.{digits}f}x [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def goal(self, name: str, target: str, note: str = "") -> Goal:
        """The goal line of this ratio: met only when its whole interval meets ``target``."""
        n, k = len(self.samples), median_interval_rank(len(self.samples))
        spread = (f"median and range of {n} paired, interleaved repeats" if k == 1 else
                  f"median and its {k}th smallest to {k}th largest of {n} paired, "
                  "interleaved repeats (a distribution-free 90 % interval)")
        return Goal(name, self.text(), target, self.meets(target), f"{spread}. {note}".strip())


def paired_ratio(
    numerator: Callable[[], float], denominator: Callable[[], float], repeats: int
) -> Ratio:
    """Time two callables in interleaved pairs; each returns its own seconds.

    Repeat i calls both back to back (numerator first on even i, denominator first on
    odd i) and records numerator / denominator.

    Example:
        >>> paired_ratio(lambda: 2.0, lambda: 1.0, 3).samples
        (2.0, 2.0, 2.0)
    """
    out = []
    for i in range(repeats):
        if i % 2 == 0:
            num = numerator()
            den = denominator()
        else:
            den = denominator()
            num = numerator()
        out.append(num / den)
    return Ratio(tuple(out))


def seconds_of(fn: Callable[[], Any], min_seconds: float = 0.0) -> Callable[[], float]:
    """A callable that runs ``fn`` (looped until ``min_seconds``) and returns seconds per call."""

    def timed() -> float:
        return time_call(fn, repeats=1, warmup=0, min_seconds=min_seconds)["median"]

    return timed


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Goal:
    """One goal of a benchmark: ``name: measured (goal target) met|missed``.

    Attributes:
        name: what is measured, e.g. ``"optimizer speed-up vs kornia (28x28)"``.
        measured: the measured value, formatted.
        target: the goal, formatted with its comparison, e.g. ``">= 20x"``.
        met: whether the goal is met.
        note: what limits it, when missed (written to JSON, not to the line).
    """

    name: str
    measured: str
    target: str
    met: bool
    note: str = ""

    def line(self) -> str:
        """The goal line."""
        return goal_line(self.name, self.measured, self.target, self.met)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the line included)."""
        return {
            "name": self.name,
            "measured": self.measured,
            "target": self.target,
            "met": self.met,
            "note": self.note,
            "line": self.line(),
        }


def goal_line(name: str, measured: str, target: str, met: bool) -> str:
    """``<goal>: <measured> (goal <target>) met`` or ``... missed``."""
    return f"{name}: {measured} (goal {target}) {'met' if met else 'missed'}"


def environment() -> dict[str, Any]:
    """What the numbers were measured on (peers not installed are recorded as None)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "kornia": installed("kornia"),
        "torchreg": installed("torchreg"),
    }


def write_json(name: str, payload: dict[str, Any], goals: list[Goal], quick: bool) -> Path:
    """Write ``results/benchmarks/<name>.json`` with the payload, goals and environment."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "quick": quick,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "results": payload,
        "goals": [g.to_dict() for g in goals],
    }
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return path


def run_standalone(main: Any, doc: str | None) -> None:
    """Command line of a single benchmark script: ``--quick``/``--tiny``, goal lines printed."""
    import argparse

    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    for goal in main(a.quick, a.tiny):
        print(goal.line())
