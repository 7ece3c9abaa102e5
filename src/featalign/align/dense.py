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
    _points,
    _read,
    _sample,
    _sum_sq_in_dtype,
)
from featalign.geometry import Grid, check_shape

__all__ = ["DenseFit", "fit_dense", "warp_with_field"]


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
    steps: int = 60,
    lr: float = 0.1,
    max_batch_elements: int = 2**25,
    progress: bool = False,
) -> DenseFit:
    """Refine affine warps by a smooth dense displacement field, optimised by Adam.

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
        steps: Adam steps.
        lr: Adam's learning rate in feature pixels.
        max_batch_elements: bound on P × C × h × w per chunk; on the CPU at most
            :data:`~featalign.align.affine.CPU_CHUNK_ELEMENTS`.
        progress: tqdm bar over chunks.

    Returns:
        A :class:`DenseFit`.

    Raises:
        ValueError: on bad shapes or ``grid_size < 2``.
    """
    if grid_size < 2:
        raise ValueError(f"dense grid_size must be >= 2, got {grid_size}")
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
    per = max(1, budget // max(1, dims["C"] * dims["h"] * dims["w"]))
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
        ctrl = torch.zeros(
            maps.shape[0],
            2,
            grid_size,
            grid_size,
            dtype=maps.dtype,
            device=maps.device,
            requires_grad=True,
        )  # in feature pixels
        opt = Adam(ctrl, lr=lr)
        best = base.clone()
        best_ctrl = torch.zeros_like(ctrl, dtype=torch.float64)
        for _ in range(steps):
            opt.zero_grad()
            disp = _control_field(ctrl * stride, pts)  # image pixels
            x = _read(maps, _displace(affine_positions, disp, grid)[:, None])[:, :, 0]
            data = _sum_sq_in_dtype(x - values) / den
            dx = ctrl[:, :, 1:, :] - ctrl[:, :, :-1, :]
            dy = ctrl[:, :, :, 1:] - ctrl[:, :, :, :-1]
            # the smoothness penalty: a mean of squares over the control grid, not an error
            pen = (dx.pow(2).sum((1, 2, 3)) + dy.pow(2).sum((1, 2, 3))) / (
                dx[0].numel() + dy[0].numel()
            )
            with torch.no_grad():
                better = data < best
                best = torch.where(better, data, best)
                best_ctrl[better] = ctrl.detach().double()[better] * stride
            (data + smoothness * pen.double()).sum().backward()
            opt.step()
        with torch.no_grad():
            disp = _control_field(best_ctrl, pts)
            rms[sl] = disp.pow(2).sum(-1).mean(-1).sqrt()
        errors[sl] = best
        controls[sl] = best_ctrl
    return DenseFit(errors, rms, controls, time.perf_counter() - t0)


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
