"""The dense measure: a smooth displacement field on top of the best affine warp."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from featalign.align.adam import Adam
from featalign.align.affine import CPU_CHUNK_ELEMENTS
from featalign.align.measures import (
    _affine_positions,
    _at,
    _control_field,
    _denominator,
    _displace,
    _Points,
    _points,
    _read,
    _sample,
    _sum_sq_in_dtype,
)
from featalign.geometry import Grid, check_shape

__all__ = ["DENSE_METHODS", "DENSE_STEPS", "DenseFit", "fit_dense", "resolve_steps", "warp_with_field"]

#: How :func:`fit_dense` minimises: ``gauss_newton`` (Levenberg–Marquardt on the control
#: grid, the default) or ``adam`` (first-order steps through autograd, the default until
#: the runs of 2026-12-01: README "The dense warp's optimiser" has how the two compare).
DENSE_METHODS = ("gauss_newton", "adam")

#: Each method's own number of iterations, used where none is given.
DENSE_STEPS = {"gauss_newton": 20, "adam": 60}


def resolve_steps(method: str, steps: int | None = None) -> int:
    """The iterations :func:`fit_dense` runs: ``steps``, or ``method``'s own
    (:data:`DENSE_STEPS`) where it is None.

    Example:
        >>> resolve_steps("adam"), resolve_steps("gauss_newton"), resolve_steps("adam", 5)
        (60, 20, 5)

    Raises:
        ValueError: on an unknown ``method`` (naming the known ones) or negative ``steps``.
    """
    if method not in DENSE_METHODS:
        raise ValueError(f"dense method must be one of {', '.join(DENSE_METHODS)}, got {method!r}")
    if steps is None:
        return DENSE_STEPS[method]
    if steps < 0:
        raise ValueError(f"dense steps must be >= 0, got {steps}")
    return int(steps)


@dataclass(frozen=True)
class DenseFit:
    """The best smooth dense warp per problem (on top of an affine one).

    Attributes:
        error: (P,) float64, error (the data term only).
        displacement_rms: (P,) float64, rms displacement over R in image pixels.
        control: (P, 2, G, G) float64, control-grid displacements (x, y) in image pixels.
        seconds: wall time.
    """

    error: torch.Tensor
    displacement_rms: torch.Tensor
    control: torch.Tensor
    seconds: float


def fit_dense(
    target: torch.Tensor,
    moving: torch.Tensor,
    target_index: torch.Tensor,
    matrix: torch.Tensor,
    grid: Grid,
    mask: torch.Tensor,
    *,
    grid_size: int = 6,
    smoothness: float = 1e-3,
    steps: int | None = None,
    lr: float = 0.1,
    method: str = "gauss_newton",
    max_batch_elements: int = 2**25,
    progress: bool = False,
) -> DenseFit:
    """Refine affine warps by a smooth dense displacement field, found by optimisation.

    The field is a ``grid_size × grid_size`` grid of control displacements spanning the
    canvas, interpolated bicubically and added to the affine sampling position, so the
    warp stays continuous (it cannot tear). It starts at zero (the affine warp). The
    objective is the error plus ``smoothness`` × the mean squared difference of
    neighbouring control points (in feature pixels). The error reported is the data term
    of the best iterate (never above the start, so dense ≤ affine), summed in the maps'
    dtype (:func:`~featalign.align.measures._sum_sq_in_dtype`).

    **Convention**: ``matrix`` as in :func:`~featalign.align.affine.fit_affine`
    (``tgt_from_src``, centred image pixels, (x, y)); displacements in image pixels of
    the moving (source) frame; bilinear, zero padding, ``align_corners=False`` for the maps.

    Args:
        target: Γ(f), shape (S, C, h, w).
        moving: (P, C, h, w).
        target_index: (P,) long, the target of each problem.
        matrix: the affine warps to start from, (P, 2, 3).
        grid: the lattice of the maps.
        mask: the region R, boolean (h, w).
        grid_size: control points per axis (≥ 2).
        smoothness: weight of the smoothness penalty.
        steps: iterations: Levenberg–Marquardt trials, or Adam steps; None: the
            method's own (:data:`DENSE_STEPS`: 20 and 60).
        lr: Adam's learning rate in feature pixels (``method="adam"`` only).
        method: one of :data:`DENSE_METHODS`: ``gauss_newton`` (Levenberg–Marquardt on
            the control grid with the exact Jacobian: :func:`_levenberg_marquardt`) or
            ``adam`` (first-order steps through autograd).
        max_batch_elements: bound on the elements a chunk holds (P × C × h × w, three
            times that for ``gauss_newton``, whose chunk holds the maps' difference maps
            too); on the CPU at most :data:`~featalign.align.affine.CPU_CHUNK_ELEMENTS`.
        progress: tqdm bar over chunks.

    Returns:
        A :class:`DenseFit`.

    Raises:
        ValueError: on bad shapes, ``grid_size < 2``, an unknown ``method`` or negative
            ``steps``.
    """
    if grid_size < 2:
        raise ValueError(f"dense grid_size must be >= 2, got {grid_size}")
    steps = resolve_steps(method, steps)
    dims = check_shape(target, "S C h w", "target")
    check_shape(moving, f"P {dims['C']} {dims['h']} {dims['w']}", "moving")
    p_count = moving.shape[0]
    check_shape(matrix, f"{p_count} 2 3", "matrix")
    t0 = time.perf_counter()
    pts = _points(grid, mask)
    tv = _at(target, pts)
    denom = _denominator(tv)
    stride = float(grid.stride)
    budget = int(max_batch_elements)
    if moving.device.type == "cpu":  # as the affine fit's chunks, for the same reason
        budget = min(budget, CPU_CHUNK_ELEMENTS)
    # Levenberg–Marquardt holds the maps' difference maps too: about three times the maps
    held = (3 if method == "gauss_newton" else 1) * dims["C"] * dims["h"] * dims["w"]
    per = max(1, budget // max(1, held))
    errors = torch.empty(p_count, dtype=torch.float64)
    rms = torch.zeros(p_count, dtype=torch.float64)
    controls = torch.zeros(p_count, 2, grid_size, grid_size, dtype=torch.float64)
    for lo in tqdm(range(0, p_count, per), desc="dense", disable=not progress, leave=False):
        sl = slice(lo, min(p_count, lo + per))
        maps = moving[sl]
        chunk_target_index = target_index[sl].to(torch.int64)
        values = tv[chunk_target_index]
        den = denom[chunk_target_index]
        m = matrix[sl].to(torch.float64)
        with torch.no_grad():
            base = _sum_sq_in_dtype(_sample(maps, m, grid, pts) - values) / den
        # the affine sampling position is fixed: computed once per chunk
        affine_positions = _affine_positions(m, grid, pts, maps)
        chunk = _Chunk(maps, values, den, affine_positions, grid, pts, grid_size, smoothness)
        if method == "adam":
            best, best_ctrl = _adam(chunk, base, steps, lr)
        else:
            best, best_ctrl = _levenberg_marquardt(chunk, base, steps)
        best_ctrl = best_ctrl * stride  # image pixels
        with torch.no_grad():
            disp = _control_field(best_ctrl, pts)
            rms[sl] = disp.pow(2).sum(-1).mean(-1).sqrt()
        errors[sl] = best
        controls[sl] = best_ctrl
    return DenseFit(errors, rms, controls, time.perf_counter() - t0)


@dataclass(frozen=True)
class _Chunk:
    """One chunk of :func:`fit_dense`'s problems and what every step reads."""

    maps: torch.Tensor  # (P, C, h, w) moving maps
    values: torch.Tensor  # (P, C, N) the targets at R
    den: torch.Tensor  # (P,) the error's denominators
    positions: torch.Tensor  # (P, N, 2) the affine warp's sampling positions
    grid: Grid
    pts: _Points
    grid_size: int
    smoothness: float

    def positions_for(self, ctrl: torch.Tensor) -> torch.Tensor:
        """Where control displacements ``ctrl`` (P, 2, G, G), feature pixels, read."""
        disp = _control_field(ctrl * float(self.grid.stride), self.pts)  # image pixels
        return _displace(self.positions, disp, self.grid)


def _adam(
    chunk: _Chunk, base: torch.Tensor, steps: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on the control grid through autograd: the best data term and its controls
    (feature pixels, float64)."""
    ctrl = torch.zeros(
        chunk.maps.shape[0],
        2,
        chunk.grid_size,
        chunk.grid_size,
        dtype=chunk.maps.dtype,
        device=chunk.maps.device,
        requires_grad=True,
    )  # in feature pixels
    opt = Adam(ctrl, lr=lr)
    best = base.clone()
    best_ctrl = torch.zeros_like(ctrl, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad()
        x = _read(chunk.maps, chunk.positions_for(ctrl)[:, None])[:, :, 0]
        data = _sum_sq_in_dtype(x - chunk.values) / chunk.den
        dx = ctrl[:, :, 1:, :] - ctrl[:, :, :-1, :]
        dy = ctrl[:, :, :, 1:] - ctrl[:, :, :, :-1]
        # the smoothness penalty: a mean of squares over the control grid, not an error
        pen = (dx.pow(2).sum((1, 2, 3)) + dy.pow(2).sum((1, 2, 3))) / (
            dx[0].numel() + dy[0].numel()
        )
        with torch.no_grad():
            better = data < best
            best = torch.where(better, data, best)
            best_ctrl[better] = ctrl.detach().double()[better]
        (data + chunk.smoothness * pen.double()).sum().backward()
        opt.step()
    return best, best_ctrl


def _roughness(grid_size: int) -> tuple[torch.Tensor, int]:
    """The smoothness penalty's quadratic form on one component's flattened control grid:
    ``L`` (G², G²) with ``c @ L @ c`` the sum of squared neighbour differences, and the
    number of differences the penalty's mean divides by (both components)."""
    idx = torch.arange(grid_size * grid_size).view(grid_size, grid_size)
    pairs = [(idx[1:, :], idx[:-1, :]), (idx[:, 1:], idx[:, :-1])]
    d = torch.zeros(sum(a.numel() for a, _ in pairs), idx.numel(), dtype=torch.float64)
    row = 0
    for a, b in pairs:
        r = torch.arange(row, row + a.numel())
        d[r, a.flatten()], d[r, b.flatten()] = 1.0, -1.0
        row += a.numel()
    return d.T @ d, 2 * d.shape[0]


#: Levenberg–Marquardt's damping: where it starts, relative to the diagonal of the
#: Gauss–Newton matrix, and how it moves after a trial that lowers the objective (down)
#: or does not (up); a floor on the diagonal for control points R hardly sees.
_DAMPING, _DOWN, _UP, _DIAGONAL_FLOOR = 1e-3, 0.3, 10.0, 1e-9
#: A problem has settled once the undamped Gauss–Newton model promises less than this
#: fraction of its objective (the Newton decrement), or once its damping has risen past
#: ``_STUCK`` (its steps keep failing); a chunk stops when all its problems have
#: settled. Their errors would move by about a millionth of themselves, against verdict
#: margins of a thousandth.
_SETTLED, _STUCK = 1e-6, 1e4


class _Slopes:
    """The exact spatial gradient of :func:`_read`'s bilinear interpolant, per channel.

    Within a cell the interpolant's d/dx is the forward difference along x, interpolated
    linearly along y (and likewise d/dy): the difference maps of the zero-padded maps,
    made once, read with x (y) held at the cell's left (top) edge.
    """

    def __init__(self, maps: torch.Tensor) -> None:
        self.h, self.w = maps.shape[-2:]
        padded = torch.nn.functional.pad(maps, (1, 1, 1, 1))
        self.dx = padded[..., :, 1:] - padded[..., :, :-1]  # (P, C, h + 2, w + 1)
        self.dy = padded[..., 1:, :] - padded[..., :-1, :]  # (P, C, h + 1, w + 2)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d/dx and d/dy in feature pixels, (P, C, N) each, at normalised positions
        (P, 1, N, 2) (``align_corners=False``)."""
        ix = ((positions[..., 0] + 1) * self.w - 1) / 2 + 1  # index into the padded maps
        iy = ((positions[..., 1] + 1) * self.h - 1) / 2 + 1
        out = []
        for diff, x, y in ((self.dx, ix.floor(), iy), (self.dy, ix, iy.floor())):
            rows, cols = diff.shape[-2:]
            at = torch.stack([2 * x / (cols - 1) - 1, 2 * y / (rows - 1) - 1], -1)
            out.append(
                torch.nn.functional.grid_sample(
                    diff, at, mode="bilinear", padding_mode="zeros", align_corners=True
                )[:, :, 0]
            )
        return out[0], out[1]


def _levenberg_marquardt(
    chunk: _Chunk, base: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg–Marquardt on the control grid: the best data term and its controls
    (feature pixels, float64).

    The residual's Jacobian is exact: the bilinear interpolant's spatial gradient at the
    warped positions (:class:`_Slopes`) times the field's bicubic weights, which are
    linear in the controls; the smoothness penalty is quadratic, so its part of the
    Gauss–Newton matrix is exact too. Each of at most ``steps`` iterations evaluates one
    trial; a problem keeps a trial that lowers its objective (data + penalty), then damps
    its next step less, and damps it harder after one that does not. It stops early once
    every problem of the chunk has settled (``_SETTLED``, ``_STUCK``).
    """
    maps, values, den = chunk.maps, chunk.values, chunk.den
    p_count, g = maps.shape[0], chunk.grid_size
    k = g * g
    dev = maps.device
    unit = torch.eye(k, dtype=torch.float64).view(k, 1, g, g)
    basis = _control_field(unit, chunk.pts)[..., 0].T.to(dev)  # (N, K): field = basis @ ctrl
    rough, count = _roughness(g)
    penalty = torch.block_diag(rough, rough).to(dev) * (2.0 * chunk.smoothness / count)
    slopes = _Slopes(maps)

    def evaluate(
        ctrl: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = chunk.positions_for(ctrl.view(p_count, 2, g, g).to(maps.dtype))[:, None]
        residual = _read(maps, positions)[:, :, 0] - values
        data = _sum_sq_in_dtype(residual) / den
        pen = torch.einsum("pi,ij,pj->p", ctrl, penalty, ctrl) / 2
        return data, data + pen, residual, positions

    def normal_equations(
        ctrl: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gx, gy = slopes.at(positions)
        scale = (2.0 / den)[:, None, None]
        along = torch.stack([(residual * gx).sum(1), (residual * gy).sum(1)], 1).double()
        grad = (along @ basis * scale).flatten(1) + ctrl @ penalty  # (P, 2K)
        xx, xy, yy = (
            basis.T @ ((a * b).sum(1).double()[:, :, None] * basis) * scale
            for a, b in ((gx, gx), (gx, gy), (gy, gy))
        )
        matrix = torch.cat([torch.cat([xx, xy], 2), torch.cat([xy, yy], 2)], 1) + penalty
        return matrix, grad

    ctrl = torch.zeros(p_count, 2 * k, dtype=torch.float64, device=dev)
    _, objective, residual, positions = evaluate(ctrl)
    matrix, grad = normal_equations(ctrl, residual, positions)
    best, best_ctrl = base.clone(), ctrl.clone()
    damping = torch.full((p_count,), _DAMPING, dtype=torch.float64, device=dev)
    settled = torch.zeros(p_count, dtype=torch.bool, device=dev)
    for _ in range(steps):
        diag = matrix.diagonal(dim1=1, dim2=2)
        floor = _DIAGONAL_FLOOR * diag.mean(1, keepdim=True).clamp_min(1e-30)
        undamped = matrix + torch.diag_embed(floor.expand_as(diag))
        newton = torch.linalg.solve(undamped, grad[..., None])[..., 0]
        settled |= ((grad * newton).sum(1) / 2 <= _SETTLED * objective) | (damping >= _STUCK)
        if bool(settled.all()):
            break
        diag = diag + floor
        damped = matrix + torch.diag_embed(damping[:, None] * diag)
        trial = ctrl - torch.linalg.solve(damped, grad[..., None])[..., 0]
        data, trial_objective, residual, positions = evaluate(trial)
        better = data < best
        best = torch.where(better, data, best)
        best_ctrl[better] = trial[better]
        accept = trial_objective < objective
        damping = torch.where(accept, damping * _DOWN, damping * _UP)
        if bool(accept.any()):
            ctrl = torch.where(accept[:, None], trial, ctrl)
            objective = torch.where(accept, trial_objective, objective)
            new_matrix, new_grad = normal_equations(ctrl, residual, positions)
            matrix = torch.where(accept[:, None, None], new_matrix, matrix)
            grad = torch.where(accept[:, None], new_grad, grad)
    return best, best_ctrl.view(p_count, 2, g, g)


def warp_with_field(
    maps: torch.Tensor, tgt_from_src: torch.Tensor, grid: Grid, control: torch.Tensor | None = None
) -> torch.Tensor:
    """Warp whole maps by an affine map plus a dense warp's control field (what
    :func:`fit_dense` found), everywhere on the lattice, not only in R.

    **Convention**: as :func:`fit_dense` (``tgt_from_src`` in centred image pixels,
    (x, y); ``control`` displacements in image pixels of the source frame; bilinear,
    zero padding, ``align_corners=False``). Without ``control`` (or with zeros) it is
    :func:`featalign.geometry.warp` of the maps on ``grid``.

    Args:
        maps: (B, C, h, w); ``grid``'s stride and offsets, its size is the maps' own.
        tgt_from_src: (B, 2, 3).
        grid: the maps' lattice.
        control: (B, 2, G, G) control displacements (x, y), or None (affine only).

    Returns:
        The warped maps (B, C, h, w), in ``maps``' dtype.

    Example:
        >>> maps = torch.arange(16.0).view(1, 1, 4, 4)
        >>> shift = torch.zeros(1, 2, 2, 2)
        >>> shift[:, 0] = 1.0  # read one pixel to the right
        >>> warp_with_field(maps, torch.eye(2, 3)[None], Grid(4, 4), shift)[0, 0, 0].tolist()
        [1.0, 2.0, 3.0, 0.0]
    """
    dims = check_shape(maps, "B C h w", "maps")
    b, h, w = dims["B"], dims["h"], dims["w"]
    check_shape(tgt_from_src, f"{b} 2 3", "tgt_from_src")
    on = replace(grid, height=h, width=w)
    pts = _points(on, torch.ones(h, w, dtype=torch.bool))
    displacement = None
    if control is not None:
        check_shape(control, f"{b} 2 G G", "control")
        displacement = _control_field(control.to(maps.device, maps.dtype), pts)
    return _sample(maps, tgt_from_src, on, pts, displacement).unflatten(-1, (h, w))
