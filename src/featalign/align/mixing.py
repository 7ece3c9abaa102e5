"""The mixing measure: the oracle warp followed by a 1×1 channel map, scored held out.

The positive control (Lenc & Vedaldi): where the oracle warp alone fails but a
channel map fitted on other samples succeeds, the information is there, just not
spatially alignable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from featalign.align.measures import _TINY, _at, _denominator, _points, _sum_sq
from featalign.geometry import Grid, check_shape

__all__ = ["mixing_error", "mixing_in_chunks"]

log = logging.getLogger(__name__)


def _gram(aligned: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The design x = [aligned; 1] (S, T, C+1, N), XᵀX (S, T, C+1, C+1) and XᵀY (S, T, C+1, C)
    per sample and transform, and the target y (S, C, N), in float64."""
    s_count, t_count, c, n = aligned.shape
    x = torch.cat([aligned.double(), aligned.new_ones(s_count, t_count, 1, n).double()], 2)
    y = target.double()
    xtx = torch.einsum("stin,stjn->stij", x, x)  # (S, T, C+1, C+1)
    xty = torch.einsum("stin,sjn->stij", x, y)  # (S, T, C+1, C)
    return x, y, xtx, xty


def _held_out(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    denom: torch.Tensor,
    ridge: float,
) -> torch.Tensor:
    """Error (T,) of one held-out sample (x (T, C+1, N), y (C, N)) under the maps fitted on
    the others' sums a = ΣXᵀX (T, C+1, C+1), b = ΣXᵀY (T, C+1, C)."""
    c = y.shape[0]
    eye = torch.eye(c + 1, dtype=torch.float64)
    eye[-1, -1] = 0.0  # the bias is not penalised
    prior = eye[:, :c]  # (C+1, C): the identity map, no bias
    scale = torch.diagonal(a[:, :-1, :-1], dim1=1, dim2=2).mean(-1).clamp_min(_TINY)
    penalty = ridge * scale[:, None, None]
    # argmin ||X M - Y||^2 + penalty ||M - I||^2 (bias free): (A + pE) M = B + pE I
    mixing = torch.linalg.solve(a + penalty * eye, b + penalty * prior)  # (T, C+1, C)
    pred = torch.einsum("tin,tij->tjn", x, mixing)
    return _sum_sq(pred - y[None]) / denom


def _mixing_from_points(
    aligned: torch.Tensor, target: torch.Tensor, denom: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Leave-one-out ridge 1×1 maps: aligned (S, T, C, N), target (S, C, N) -> (S, T).

    Each sample is scored by a map fitted on all the *other* samples (never on
    itself). Leave-one-out rather than two folds: with few samples a fixed split
    can put all of one kind of image (say the grey photographs) on one side, and a
    map fitted there cannot speak for the rest.

    The map is a correction of the identity: the ridge penalty is ‖M − I‖², not
    ‖M‖², so an underdetermined fit (a wide layer, few pixels) falls back on the
    oracle warp instead of on zero, and where the oracle is exact the fit is I
    exactly (the data and the prior agree), so ``mixing`` cannot lose to it.
    """
    s_count, t_count, c, n = aligned.shape
    out = torch.full((s_count, t_count), float("nan"), dtype=torch.float64)
    if s_count < 2:
        log.warning("mixing needs at least 2 samples for held-out scoring; got %d -> NaN", s_count)
        return out
    x, y, xtx, xty = _gram(aligned, target)
    a_all, b_all = xtx.sum(0), xty.sum(0)
    for held in range(s_count):
        out[held] = _held_out(x[held], y[held], a_all - xtx[held], b_all - xty[held],
                              denom[held], ridge)
    return out


def mixing_in_chunks(
    chunks: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
    s_count: int,
    ridge: float,
) -> torch.Tensor:
    """:func:`_mixing_from_points` over samples that come in chunks, never all at once.

    Two passes over the chunks: the first sums XᵀX and XᵀY over every sample, the
    second scores each sample of each chunk against the sums without it. Memory: one
    chunk and the (T, C+1, C+1) sums. Equal to :func:`_mixing_from_points` up to the
    order of the float64 sums (about 1e-15 relative).

    Args:
        chunks: called once per pass; yields (aligned (s, T, C, N), target (s, C, N),
            denominators (s,)) for consecutive samples, the same both times.
        s_count: the number of samples the chunks hold together.
        ridge: relative ridge penalty.

    Returns:
        Errors (S, T) in float64; NaN (with a logged warning) if S < 2.
    """
    if s_count < 2:
        log.warning("mixing needs at least 2 samples for held-out scoring; got %d -> NaN", s_count)
    a_all = b_all = None
    t_count = 0
    for aligned, target, _ in chunks():
        _, _, xtx, xty = _gram(aligned, target)
        t_count = aligned.shape[1]
        a_all = xtx.sum(0) if a_all is None else a_all + xtx.sum(0)
        b_all = xty.sum(0) if b_all is None else b_all + xty.sum(0)
    out = torch.full((s_count, t_count), float("nan"), dtype=torch.float64)
    if s_count < 2 or a_all is None:
        return out
    first = 0
    for aligned, target, denom in chunks():
        x, y, xtx, xty = _gram(aligned, target)
        for held in range(aligned.shape[0]):
            out[first + held] = _held_out(x[held], y[held], a_all - xtx[held],
                                          b_all - xty[held], denom[held], ridge)
        first += aligned.shape[0]
    return out


def mixing_error(
    aligned: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ridge: float = 1e-3
) -> torch.Tensor:
    """Held-out error of a 1×1 channel map (C×C plus bias) per transform, fitted by ridge.

    Leave-one-out: each sample is scored by a map fitted on the pixels in R of all
    the other samples, so every sample gets a held-out score and none is scored by
    a map fitted on itself. The map is shrunk towards the identity (not towards
    zero) with penalty ``ridge`` × the mean diagonal of XᵀX (scale-free), the
    bias unpenalised.

    Args:
        aligned: maps after the oracle warp, shape (S, T, C, h, w).
        target: Γ(f), shape (S, C, h, w).
        mask: the region R, boolean (h, w).
        ridge: relative ridge penalty.

    Returns:
        Errors (S, T) in float64; NaN (with a logged warning) if S < 2.
    """
    dims = check_shape(aligned, "S T C h w", "aligned")
    check_shape(target, f"{dims['S']} {dims['C']} {dims['h']} {dims['w']}", "target")
    pts = _points(Grid(dims["h"], dims["w"]), mask)
    tv = _at(target, pts)
    return _mixing_from_points(_at(aligned, pts), tv, _denominator(tv), ridge)
