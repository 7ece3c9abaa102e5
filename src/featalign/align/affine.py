"""The affine measure: the best 2×3 warp of each moving map, found from several starts.

:func:`fit_affine` runs all problems × starts in one batch, coarse to fine on the blur
pyramid (:mod:`featalign.align.pyramid`), with inverse-compositional Gauss–Newton
(Levenberg–Marquardt damping) or, for comparison, Adam through autograd. A *problem*
is one moving map and its target; ``target_index`` (P,) names the target (sample) of
each problem, and its chunks and subsets are spelled ``<which>_target_index``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from featalign.align.adam import Adam
from featalign.align.measures import (
    _affine_positions,
    _at,
    _denominator,
    _Points,
    _points,
    _read,
    _read_position_grad,
    _sample,
    _sum_sq,
    _sum_sq_in_dtype,
)
from featalign.align.pyramid import _gaussian_blur, _pyramid_sigmas, coarse_grid, reduce
from featalign.geometry import Grid, check_shape, compose

__all__ = ["AffineFit", "fit_affine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AffineFit:
    """The best affine warp per problem.

    Attributes:
        matrix: (P, 2, 3) float64, ``tgt_from_src`` applied to the moving map.
        error: (P,) float64, error at full resolution (σ = 0).
        iterations: (P,) int64, iterations of the winning start (all levels).
        converged: (P,) bool, whether the winning start met the tolerances at the last level.
        start: (P,) int64, index of the winning start.
        start_error: (P, K) float64, final error of every start.
        seconds: wall time of the fit.
    """

    matrix: torch.Tensor
    error: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    start: torch.Tensor
    start_error: torch.Tensor
    seconds: float


#: On the CPU a chunk of the optimiser holds at most this many elements (float32: 32
#: MiB), whatever ``max_batch_elements`` allows: a chunk whose maps and samples stay
#: near the size of the processor's last-level cache is refined faster per problem than
#: a larger one. Measured with ``.venv/bin/python benchmarks/chunk_sweep.py`` on the
#: benchmark's 12-start problems (2 threads, AMD EPYC with a 32 MiB L3, 2026-12-01, two
#: runs): 2**23 took 0.62x and 0.71x (28 px), 0.74x and 0.84x (56 px) the time per
#: problem of 2**25; 2**22 0.70-0.73x and 0.91-0.95x; 2**20 1.16-1.21x and 1.42-1.74x.
#: Where a chunk's edge splits the problems of one target, the products over that
#: target's rows change shape and their last bits: the matrices then move by rounding
#: (up to 2e-5 px in that sweep). On a GPU the chunks stay as large as allowed. That
#: sweep ran before jobs and benchmarks reused freed memory
#: (:func:`featalign.runtime.reuse_freed_memory`): glibc then mapped every block above
#: 32 MiB afresh, which 2**23 float32 elements do not pass, so page faults, not the cache
#: alone, may explain the larger chunks' cost (not remeasured). The dense measure's fit
#: (:func:`featalign.align.dense.fit_dense`) keeps the same bound: with the allocator's
#: reuse, on 55 problems of 128 channels at 104 × 104 (config/paper.yaml's stride-8 dense
#: maps; ``benchmarks/chunk_sweep.py --dense --rounds 2``, 2026-12-01), 60 Adam steps took
#: 11.8 s at 2**23 against 16.1 s at 2**25 (0.74x); 2**22 0.76x, 2**21 0.87x, 2**20
#: 1.02x; the errors moved by at most 2e-7 (relative).
CPU_CHUNK_ELEMENTS = 2**23


# --------------------------------------------------------------------------- parameters


def _delta_to_pixels(p: torch.Tensor, half_extent: float) -> torch.Tensor:
    """Parameters (..., 6) of ΔP in normalised centred coordinates -> (..., 2, 3) in pixels.

    ΔP(u) = [[1 + p0, p2, p4], [p1, 1 + p3, p5]] u with u = x / L.
    """
    p = p.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 + p[0], p[2], p[4] * half_extent], -1),
            torch.stack([p[1], 1 + p[3], p[5] * half_extent], -1),
        ],
        -2,
    )


def _valid_matrix(m: torch.Tensor) -> torch.Tensor:
    det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    return torch.isfinite(m).all(-1).all(-1) & (det.abs() > 1e-3) & (det.abs() < 1e3)


# --------------------------------------------------------------------------- levels and slots


def _target_runs(target_index: torch.Tensor) -> list[tuple[int, int, int]]:
    """Runs of equal targets in ``target_index`` (sorted by target): (start, stop, target)."""
    index = target_index.cpu()
    change = torch.nonzero(index[1:] != index[:-1]).squeeze(1) + 1
    bounds = [0, *change.tolist(), index.numel()]
    return [(a, b, int(index[a])) for a, b in itertools.pairwise(bounds) if b > a]


def _sample_slots(
    maps: torch.Tensor, tgt_from_src: torch.Tensor, grid: Grid, pts: _Points
) -> torch.Tensor:
    """Warp each map by each of its K matrices and read the results at the points of R.

    One ``grid_sample`` call reads K point sets per map, so the K starts of a problem
    share its moving map: nothing is copied per start. Convention as
    :func:`~featalign.align.measures._sample`.

    Args:
        maps: (V, C, h, w).
        tgt_from_src: (V, K, 2, 3).

    Returns:
        (V, C, K, N).
    """
    v, k = tgt_from_src.shape[:2]
    src = _affine_positions(tgt_from_src.reshape(v * k, 2, 3), grid, pts, maps)
    return _read(maps, src.view(v, k, -1, 2))


class _Level:
    """One pyramid level of the fixed target: values, steepest-descent images and Hessian.

    Coarse levels (σ ≥ 2) use every s-th feature pixel of R along each axis (s = ⌊σ⌋,
    halved while fewer than 24 points of R would remain)
    and read the moving maps downsampled to that lattice (:func:`~featalign.align.pyramid.reduce`,
    anti-aliased by the level's own blur): a coarse warp then costs a fraction of a
    full one. The target's values and gradients are taken at full resolution and read
    at those points.

    Attributes:
        grid: the lattice of this level's moving maps (:meth:`reduce`'s output).
        pts: the points of R on it.
    """

    def __init__(self, target: torch.Tensor, sigma: float, grid: Grid, mask: torch.Tensor):
        spacing = max(1, int(sigma))
        sub, step = mask.clone(), 1
        while spacing > 1:
            keep = torch.zeros_like(mask)
            keep[spacing // 2 :: spacing, spacing // 2 :: spacing] = True
            if int((mask & keep).sum()) >= 24:
                sub, step = mask & keep, spacing
                break
            spacing //= 2
        self.sigma = sigma
        self.step = step
        self.grid = coarse_grid(grid, step)
        phase = step // 2
        self.pts = _points(self.grid, sub[phase::step, phase::step])
        pts = _points(grid, sub)  # the same points, indexed on the full lattice
        blurred = _gaussian_blur(target, sigma)
        self.values = _at(blurred, pts)  # (S, C, N)
        self.scale = _sum_sq(self.values).cpu()
        # gradients in normalised centred coordinates u = x / L (x in image pixels)
        gy, gx = torch.gradient(blurred, spacing=float(grid.stride), dim=(-2, -1))
        gx = _at(gx, pts).double() * pts.half_extent
        gy = _at(gy, pts).double() * pts.half_extent
        u = (pts.centred / pts.half_extent).to(target.device)
        ux, uy = u[:, 0], u[:, 1]
        sd = torch.stack([gx * ux, gy * ux, gx * uy, gy * uy, gx, gy], -1)  # (S, C, N, 6)
        self.hessian = torch.einsum("scnk,scnl->skl", sd, sd).cpu()  # (S, 6, 6)
        # (S, 6, C·N): the gradient is formed as SDᵀ eᵀ, a 6-row product that MKL runs
        # about 4× faster than e SD with its 6 columns at these sizes, e.g. 28 against
        # 117 µs on 2 threads for 24 rows of 64 × 216 (python -m timeit -s "import torch;
        # e = torch.randn(24, 13824); s = torch.randn(6, 13824)" "s @ e.T"; then "e @ s.T")
        self.sd_t = sd.to(target.dtype).flatten(1, 2).transpose(1, 2).contiguous()

    def reduce(self, maps: torch.Tensor) -> torch.Tensor:
        """Moving maps (..., h, w) at this level: blurred by σ, on :attr:`grid`."""
        return reduce(maps, self.sigma, self.step)

    def residual(
        self,
        maps: torch.Tensor,
        matrix: torch.Tensor,
        target_index: torch.Tensor,
        *,
        with_grad: bool = True,
        runs: list[tuple[int, int, int]] | None = None,
        active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warp and compare K matrices per map: returns (Σ e², Σ SDᵀ e).

        Args:
            maps: (V, C, h', w') moving maps on :attr:`grid` (:meth:`reduce`), sorted by target.
            matrix: (V, K, 2, 3).
            target_index: (V,) the target of each map.
            with_grad: compute Σ SDᵀ e too (else None).
            runs: ``_target_runs(target_index)``, if the caller has it.
            active: (V, K) the slots whose gradient is wanted (None: all). The others'
                gradient is left zero, and the product that forms it has the active
                slots' rows only, so its shape, and the last bits of its sums, depend on
                the run's own active slots, not on which other maps are held along or
                how many slots the busiest map of the batch has.

        Returns:
            Shapes (V, K) and (V, K, 6), float64 on the CPU. The squares are summed in
            the maps' dtype (:func:`~featalign.align.measures._sum_sq_in_dtype`).
        """
        v, k = matrix.shape[:2]
        warped = _sample_slots(maps, matrix, self.grid, self.pts)  # (V, C, K, N)
        c, n = warped.shape[1], warped.shape[3]
        like = {"dtype": warped.dtype, "device": warped.device}
        loss = torch.empty(v * k, dtype=torch.float64)
        grad = None
        if with_grad:
            grad = (torch.empty if active is None else torch.zeros)(6, v * k, **like)
        # one matrix product per run of equal targets (the target's SD images are shared).
        # Not one batched product over the runs: at 2 threads that made the results depend
        # on how many samples a chunk holds (tests/test_memory_align.py: a matrix moved by
        # 1e-3), though it was bit-identical at 1 thread.
        for a, b, t in runs if runs is not None else _target_runs(target_index):
            # (n·K, C·N) laid out contiguously, so that the sum runs in the same order
            # however many maps the run holds (a strided view of one map's K slots would
            # not); the difference is written straight into that layout (one pass)
            e = torch.empty((b - a, k, c, n), **like)
            torch.sub(warped[a:b].transpose(1, 2), self.values[t][None, None], out=e)
            e = e.view((b - a) * k, -1)
            loss[a * k : b * k] = _sum_sq_in_dtype(e.view(-1, c, n))
            if grad is None:
                continue
            # (not mm's out=: a one-row product into a strided out takes another path)
            if active is None or bool((on := active[a:b].reshape(-1)).all()):
                grad[:, a * k : b * k] = self.sd_t[t] @ e.T
            elif bool(on.any()):
                idx = torch.nonzero(on).squeeze(1)
                grad[:, a * k + idx] = self.sd_t[t] @ e[idx].T
        return loss.view(v, k), None if grad is None else grad.T.reshape(v, k, 6).double().cpu()


def _active_slots(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact each row's active slots to the front: (order (V, K'), truly active (V, K')).

    K' is the largest number of active slots of any row, so a map whose starts have
    mostly converged is warped only as often as its busiest sibling needs.
    """
    kp = int(active.sum(1).max())
    if kp == active.shape[1]:
        order = torch.arange(kp).expand(active.shape[0], kp)
        return order, active
    order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :kp]
    return order, torch.gather(active, 1, order)


# --------------------------------------------------------------------------- one level


def _gauss_newton_level(
    maps: torch.Tensor,
    target_index: torch.Tensor,
    level: _Level,
    matrix: torch.Tensor,
    active: torch.Tensor,
    *,
    max_iter: int,
    rtol: float,
    xtol: float,
    keep: int | None = None,
    prune: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse-compositional Levenberg–Marquardt at one level for K starts per map.

    Each iteration warps the maps that still have an active start once, at the trial
    matrices of their active starts; the gradient Σ SDᵀ e is computed with the trial
    residual, so nothing else is re-warped.

    Args:
        maps: (U, C, h', w') moving maps at the level (:meth:`_Level.reduce`), sorted by target.
        target_index: (U,) the target of each map.
        matrix: (U, K, 2, 3) float64 on the CPU; updated in place and returned.
        active: (U, K) the starts to optimise (the others are left as they are).
        keep: the coarse level's start selection (``fit_affine``'s ``keep_starts``):
            after every iteration, a start whose loss exceeds ``prune`` × the
            ``keep``-th lowest loss of its map stops (``None``: every start runs to
            convergence). Losses only decrease, so the bound only tightens.
        prune: the factor of ``keep`` (needed with it).

    Returns:
        (matrix, loss (U, K), iterations (U, K), converged (U, K)); loss is NaN for
        starts that were not active.
    """
    u_count, k_count = active.shape
    half = level.pts.half_extent
    lam = torch.full((u_count, k_count), 1e-3, dtype=torch.float64)
    loss = torch.full((u_count, k_count), float("nan"), dtype=torch.float64)
    grad = torch.zeros(u_count, k_count, 6, dtype=torch.float64)
    iters = torch.zeros(u_count, k_count, dtype=torch.int64)
    conv = torch.zeros(u_count, k_count, dtype=torch.bool)
    active = active.clone()
    rows = torch.nonzero(active.any(1)).squeeze(1)
    # the maps with an active start (gathered again when that set shrinks)
    held, held_maps = rows, maps if rows.numel() == u_count else maps[rows]
    if rows.numel():
        order, ok_slot = _active_slots(active[rows])
        r2 = rows[:, None].expand_as(order)
        l0, g0 = level.residual(held_maps, matrix[r2, order], target_index[rows], active=ok_slot)
        loss[r2, order] = torch.where(ok_slot, l0, loss[r2, order])
        grad[r2, order] = torch.where(ok_slot[..., None], g0, grad[r2, order])
    held_cache = None
    for _ in range(max_iter):
        rows = torch.nonzero(active.any(1)).squeeze(1)
        if rows.numel() == 0:
            break
        if rows.numel() < 0.6 * held.numel():
            # regather only when the active maps have shrunk well: till then a finished
            # map is warped along with the others (cheaper than copying the maps)
            held_maps = held_maps[torch.searchsorted(held, rows)]
            held, held_cache = rows, None
        if held_cache is None:
            # what depends only on the held maps' targets, formed once per held set
            held_target_index = target_index[held]
            h = level.hessian[held_target_index][:, None]  # (V, 1, 6, 6), shared by a map's starts
            diag = torch.diagonal(h, dim1=-2, dim2=-1)
            held_cache = (
                held_target_index,
                _target_runs(held_target_index),
                h,
                torch.diag_embed(diag + 1e-12 * diag.amax(-1, keepdim=True)),
                1e-14 * level.scale[held_target_index][:, None],
            )
        held_target_index, runs, h, h_diag, exact_bound = held_cache
        order, slot = _active_slots(active[held])
        # flat indices of the (map, start) slots into the (U, K) tables
        flat = (held[:, None] * k_count + order).view(-1)
        shape = order.shape
        lam_s = lam.view(-1)[flat].view(shape)
        grad_s = grad.view(-1, 6)[flat].view(*shape, 6)
        dp, info = torch.linalg.solve_ex(h + lam_s[..., None, None] * h_diag, grad_s.unsqueeze(-1))
        # a target constant over R has a zero Hessian: no step (its errors are NaN anyway)
        dp = torch.where((info == 0)[..., None], dp.squeeze(-1), torch.zeros_like(dp.squeeze(-1)))
        current = matrix.view(-1, 2, 3)[flat]
        trial = compose(_delta_to_pixels(dp, half).reshape(-1, 2, 3), current)
        ok = (_valid_matrix(trial) & slot.view(-1))[:, None, None]
        trial = torch.where(ok, trial, current).view(*shape, 2, 3)
        loss_new, grad_new = level.residual(
            held_maps, trial, held_target_index, runs=runs, active=slot
        )
        old = loss.view(-1)[flat].view(shape)
        acc = ok.view(shape) & torch.isfinite(loss_new) & (loss_new < old)
        matrix.view(-1, 2, 3)[flat] = torch.where(acc[..., None, None], trial, current.view_as(trial)).view(-1, 2, 3)
        kept = torch.where(acc, loss_new, old)
        loss.view(-1)[flat] = kept.view(-1)
        grad.view(-1, 6)[flat] = torch.where(acc[..., None], grad_new, grad_s).view(-1, 6)
        lam_new = torch.where(acc, (lam_s / 10).clamp_min(1e-9), lam_s * 10)
        lam.view(-1)[flat] = torch.where(slot, lam_new, lam_s).view(-1)
        iters.view(-1)[flat] += slot.view(-1).to(torch.int64)
        step = dp.norm(dim=-1)
        small = acc & (((old - loss_new) <= rtol * old) | (step < xtol))
        stuck = ~acc & ((lam_new > 1e6) | (step < xtol))
        done = (slot & (small | stuck | (kept <= exact_bound))).view(-1)
        conv.view(-1)[flat[done]] = True
        active.view(-1)[flat[done]] = False
        if keep is not None and prune is not None:
            kth = torch.kthvalue(torch.nan_to_num(loss, nan=float("inf")), keep, dim=1).values
            active &= ~(loss > prune * kth[:, None])
    return matrix, loss, iters, conv


def _adam_level(
    maps: torch.Tensor,
    map_idx: torch.Tensor | None,
    level: _Level,
    target_index: torch.Tensor,
    matrix: torch.Tensor,
    *,
    max_iter: int,
    rtol: float,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam on the 6 entries of the matrix (normalised centred units).

    Problem i warps ``maps[map_idx[i]]`` (``None``: ``maps[i]``) onto the target
    ``target_index[i]``. The gradient is the one autograd gives through
    :func:`~featalign.align.measures._sample`, bit for bit, but only the sampling
    positions go through autograd: the residual and its gradient at the positions
    (``grid_sample``'s own backward, 2 e as the loss's gradient) are formed directly,
    so no graph holds the maps' samples (the polish of ``fit_affine`` took 15–25 % of
    a 12-start fit at 28 and 56 px).
    """
    pts = level.pts
    scale = torch.tensor([1.0, 1.0, pts.half_extent], dtype=torch.float64)
    q = (matrix / scale).clone().requires_grad_(True)
    opt = Adam(q, lr=lr)
    gathered = maps if map_idx is None else maps[map_idx]  # kept out of autograd
    values = level.values[target_index]
    best = torch.full((matrix.shape[0],), float("inf"), dtype=torch.float64)
    best_m = matrix.clone()
    prev = None
    iters = torch.zeros(matrix.shape[0], dtype=torch.int64)
    conv = torch.zeros(matrix.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        opt.zero_grad()
        m = q * scale
        positions = _affine_positions(m, level.grid, pts, gathered)  # (B, N, 2), in the graph
        at = positions.detach()[:, None]
        with torch.no_grad():
            e = _read(gathered, at)[:, :, 0] - values  # (B, C, N)
            lc = _sum_sq_in_dtype(e).cpu()
            better = lc < best
            best = torch.where(better, lc, best)
            best_m[better] = m.detach()[better]
        iters += 1
        if prev is not None and bool(((prev - lc).abs() <= rtol * prev).all()):
            conv[:] = True
            break
        prev = lc
        positions.backward(_read_position_grad(gathered, at, (2 * e)[:, :, None])[:, 0])
        opt.step()
    return best_m, best, iters, conv


def _adam_slots(
    maps: torch.Tensor,
    target_index: torch.Tensor,
    level: _Level,
    matrix: torch.Tensor,
    active: torch.Tensor,
    *,
    max_iter: int,
    rtol: float,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_adam_level` on the active starts of a (U, K) layout (the comparison method)."""
    u_idx, k_idx = torch.nonzero(active, as_tuple=True)
    loss = torch.full(active.shape, float("nan"), dtype=torch.float64)
    iters = torch.zeros(active.shape, dtype=torch.int64)
    conv = torch.zeros(active.shape, dtype=torch.bool)
    if u_idx.numel():
        m, lo, it, cv = _adam_level(
            maps,
            u_idx.to(maps.device),
            level,
            target_index[u_idx],
            matrix[u_idx, k_idx],
            max_iter=max_iter,
            rtol=rtol,
            lr=lr,
        )
        matrix[u_idx, k_idx], loss[u_idx, k_idx] = m, lo
        iters[u_idx, k_idx], conv[u_idx, k_idx] = it, cv
    return matrix, loss, iters, conv


# --------------------------------------------------------------------------- the fit


def fit_affine(
    target: torch.Tensor,
    moving: torch.Tensor,
    target_index: torch.Tensor,
    starts: torch.Tensor,
    grid: Grid,
    mask: torch.Tensor,
    *,
    method: str = "gauss_newton",
    sigmas: Sequence[float] | None = None,
    max_iter: int = 40,
    rtol: float = 1e-6,
    xtol: float = 1e-4,
    adam_lr: float = 0.01,
    keep_starts: int | None = 3,
    prune: float | None = 4.0,
    polish_iter: int = 10,
    max_batch_elements: int = 2**25,
    progress: bool = False,
) -> AffineFit:
    """Find the best affine warp of each moving map onto its target, from several starts.

    Why inverse-compositional Gauss–Newton (Lucas–Kanade, Baker & Matthews 2004): the
    target Γ(f) is fixed, so its gradients, the steepest-descent images of the 6 affine
    parameters and the 6×6 Hessian over R are computed once per sample and pyramid
    level, not per iteration or per problem; each iteration then costs one warp of the
    moving map (no autograd, the moving map never enters a graph), and Gauss–Newton with
    Levenberg–Marquardt damping converges in a handful of iterations where first-order
    methods (Adam) need hundreds and stall in narrow valleys. Coarse-to-fine blurring
    (σ = 8, 4, 2, 1, 0 feature pixels at 64×64) widens the basin; several starts (the grid
    symmetries cover reflections, which no continuous path from the identity reaches)
    cover the rest. The starts of a problem share its moving map: one ``grid_sample``
    call reads the points of all its active starts, so nothing is copied per start.
    ``method="adam"`` keeps an Adam-through-autograd variant on the same pyramid and
    starts, for comparison.

    Each start of each problem is run (at the coarsest level until it converges or,
    with ``prune``, falls far behind its problem's best ``keep_starts``); per start the
    error at full resolution is compared with the start's own, and the start is kept if
    the optimisation made it worse, so the result is never worse than the best start.

    **Convention**: matrices are ``tgt_from_src`` in centred image pixels ((x, y)),
    applied to the moving maps as :func:`featalign.geometry.warp` does (bilinear, zero
    padding, ``align_corners=False``). The loss is the error of
    :func:`~featalign.align.measures.relative_error` over R.

    Args:
        target: Γ(f), shape (S, C, h, w).
        moving: maps to warp, shape (P, C, h, w).
        target_index: (P,) long, the target of each problem (sorting problems by target
            makes the fit faster, not different).
        starts: starting matrices (P, K, 2, 3) or (K, 2, 3) (shared).
        grid: the lattice of the maps.
        mask: the region R, boolean (h, w).
        method: ``"gauss_newton"`` or ``"adam"``.
        sigmas: blur pyramid in feature pixels, coarse to fine (default: min(h, w) / 8
            halved down to 1, then 0; 64×64 maps get 8, 4, 2, 1, 0); a final 0 is
            appended if missing.
        max_iter: iterations per level (Adam: steps per level).
        rtol: relative loss change tolerance at the last level (coarser levels: 100×).
        xtol: step size tolerance (normalised units, the half-extent of the canvas is 1)
            at the last level (coarser levels: 10×): a start stops when a step below it
            is accepted, or is rejected (more damping would only shrink it further).
        adam_lr: Adam's learning rate (normalised units).
        keep_starts: after the coarsest level, only the ``keep_starts`` starts of each
            problem with the lowest coarse loss go on to the finer levels (``None``: all);
            a dropped start reports its starting matrix and error.
        prune: at that coarsest level, a start stops early once its loss exceeds
            ``prune`` × the ``keep_starts``-th lowest loss of its problem (``None``: every
            start runs until it converges or reaches ``max_iter``). Most of the coarse
            level's iterations were a tail of starts headed for other, worse minima (on
            the benchmark's 12-start problems about three quarters of its iterations
            were spent on starts that ended outside the best 3); such a start would
            have to lose three quarters of its loss to still be selected. Starts that
            reach the same optimum as the selected ones may then be replaced by another
            of them (the fit's ``start`` changes, its error does not).
        polish_iter: Adam steps (autograd's gradient, learning rate ``adam_lr / 10``) on each
            problem's winner at full resolution, after Gauss–Newton (0: none). Bilinear
            sampling makes the loss kinked at the sub-pixel scale, which Gauss–Newton's
            smooth linearisation does not see. Of 256 planted stride-2 problems
            (``pytest tests/test_align.py -s -k polish``), 0 steps recovered 248, 10 steps
            all 256 and 30 steps 255, at three times the polish cost. Only decreases are
            kept.
        max_batch_elements: bound on the elements of the moving maps and of their
            samples at R (problems × C × (h·w + starts × |R|)) per chunk; on the CPU
            at most :data:`CPU_CHUNK_ELEMENTS`.
        progress: show a tqdm bar over chunks.

    Returns:
        An :class:`AffineFit` with P problems.

    Raises:
        ValueError: on bad shapes or an unknown method.
    """
    if method not in ("gauss_newton", "adam"):
        raise ValueError(f"method must be 'gauss_newton' or 'adam', got {method!r}")
    dims = check_shape(target, "S C h w", "target")
    check_shape(moving, f"P {dims['C']} {dims['h']} {dims['w']}", "moving")
    p_count = moving.shape[0]
    if starts.dim() == 3:
        starts = starts.unsqueeze(0).expand(p_count, -1, -1, -1)
    check_shape(starts, f"{p_count} K 2 3", "starts")
    check_shape(target_index, f"{p_count}", "target_index")
    k_count = starts.shape[1]
    t0 = time.perf_counter()
    device = moving.device
    levels_sigma = _pyramid_sigmas(dims["h"], dims["w"], sigmas)
    levels = [_Level(target, s, grid, mask) for s in levels_sigma]
    full = levels[-1]
    denom = _denominator(full.values).cpu()
    target_index = target_index.to(torch.int64).cpu()
    all_starts = starts.to(torch.float64).cpu()
    keep = k_count if keep_starts is None else max(1, min(int(keep_starts), k_count))

    # chunks of whole problems: their maps plus the samples of their busiest level
    n_full = full.pts.flat.numel()
    n_first = levels[0].pts.flat.numel()
    slots = max(keep, math.ceil(k_count * n_first / max(1, n_full)))
    per_problem = dims["C"] * (dims["h"] * dims["w"] + slots * n_full)
    budget = int(max_batch_elements)
    if device.type == "cpu":
        budget = min(budget, CPU_CHUNK_ELEMENTS)
    per = max(1, budget // max(1, per_problem))

    out_m = all_starts.clone()
    out_err = torch.empty(p_count, k_count, dtype=torch.float64)
    out_it = torch.zeros(p_count, k_count, dtype=torch.int64)
    out_conv = torch.zeros(p_count, k_count, dtype=torch.bool)
    for lo in tqdm(range(0, p_count, per), desc="affine", disable=not progress, leave=False):
        hi = min(p_count, lo + per)
        chunk_target_index = target_index[lo:hi]
        perm = torch.argsort(chunk_target_index, stable=True)
        if bool((perm == torch.arange(perm.numel())).all()):
            perm = None
            chunk_maps = moving[lo:hi]
        else:
            chunk_target_index = chunk_target_index[perm]
            chunk_maps = moving[lo + perm.to(device)]
        m0 = all_starts[lo:hi] if perm is None else all_starts[lo + perm]
        loss0 = torch.cat(
            [
                full.residual(
                    chunk_maps, m0[:, k : k + slots], chunk_target_index, with_grad=False
                )[0]
                for k in range(0, k_count, slots)
            ],
            1,
        )
        m = m0.clone()
        loss = loss0.clone()
        it = torch.zeros(m.shape[:2], dtype=torch.int64)
        conv = torch.zeros(m.shape[:2], dtype=torch.bool)
        run = torch.ones(m.shape[:2], dtype=torch.bool)  # the starts still optimised
        for li, (sigma, level) in enumerate(zip(levels_sigma, levels)):
            last = li == len(levels) - 1
            maps_l = level.reduce(chunk_maps)
            kwargs = {"max_iter": max_iter, "rtol": rtol if last else rtol * 100}
            if method == "gauss_newton":
                xt = xtol if last else xtol * 10
                select = li == 0 and not last and keep < k_count and prune is not None
                m, loss_l, it_l, conv_l = _gauss_newton_level(
                    maps_l, chunk_target_index, level, m, run, xtol=xt,
                    keep=keep if select else None, prune=prune, **kwargs
                )
            else:
                m, loss_l, it_l, conv_l = _adam_slots(
                    maps_l, chunk_target_index, level, m, run, lr=adam_lr, **kwargs
                )
            loss = torch.where(run, loss_l, loss)
            conv = torch.where(run, conv_l, conv)
            it += it_l
            if li == 0 and not last and keep < k_count:
                # coarse-to-fine start selection: the best `keep` starts of each problem go on
                coarse = torch.nan_to_num(loss, nan=float("inf"))
                best_k = torch.topk(coarse, keep, dim=1, largest=False).indices
                run = torch.zeros_like(run).scatter_(1, best_k, True)
                m = torch.where(run[..., None, None], m, m0)
                loss = torch.where(run, loss, loss0)
                conv = conv & run
        worse = ~(loss <= loss0)
        m = torch.where(worse[..., None, None], m0, m)
        loss = torch.where(worse, loss0, loss)
        rows = torch.arange(lo, hi) if perm is None else lo + perm
        out_m[rows] = m
        out_err[rows] = loss / denom[chunk_target_index][:, None]
        out_it[rows] = it
        out_conv[rows] = conv
        log.debug("affine chunk %d-%d: median error %.4g", lo, hi, float(out_err[lo:hi].median()))

    best = torch.argmin(torch.nan_to_num(out_err, nan=float("inf")), dim=1)
    pick = torch.arange(p_count)
    win_m, win_it = out_m[pick, best].clone(), out_it[pick, best].clone()
    per_p = max(1, budget // max(1, 3 * dims["C"] * dims["h"] * dims["w"]))
    win_err = torch.empty(p_count, dtype=torch.float64)
    for lo in range(0, p_count, per_p):
        ps = torch.arange(lo, min(p_count, lo + per_p))
        chunk_target_index = target_index[ps]
        maps = moving[ps.to(device)]
        if method == "gauss_newton" and polish_iter > 0:
            loss = out_err[ps, best[ps]] * denom[chunk_target_index]
            m, loss_a, it, _ = _adam_level(
                maps,
                None,
                full,
                chunk_target_index,
                win_m[ps].clone(),
                max_iter=polish_iter,
                rtol=0.0,
                lr=adam_lr * 0.1,
            )
            better = loss_a < loss
            win_m[ps] = torch.where(better[:, None, None], m, win_m[ps])
            win_it[ps] += it
        # the reported error of the reported matrix, summed in float64
        e = _sample(maps, win_m[ps], grid, full.pts) - full.values[chunk_target_index.to(device)]
        win_err[ps] = _sum_sq(e).cpu() / denom[chunk_target_index]
    err = out_err.clone()
    err[pick, best] = win_err
    return AffineFit(
        matrix=win_m,
        error=win_err,
        iterations=win_it,
        converged=out_conv[pick, best],
        start=best,
        start_error=err,
        seconds=time.perf_counter() - t0,
    )
