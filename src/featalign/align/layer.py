"""The per-layer driver: all seven measures of one layer per (sample, transform).

:data:`ALIGNMENT_DEFAULTS` is the one statement of the defaults of the config's
``alignment`` section: :func:`align_layer`'s keyword defaults are read from it, the
per-file stage (:mod:`featalign.align.files`) fills missing options from it, and a
test holds the config schema's defaults equal to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from featalign.align.affine import fit_affine
from featalign.align.dense import fit_dense, resolve_steps
from featalign.align.measures import (
    MEASURES,
    _at,
    _denominator,
    _nan_where_flat,
    _points,
    _sample,
    _sum_sq,
    region_mask,
)
from featalign.align.mixing import _mixing_from_points
from featalign.align.starts import SYMMETRY_NAMES, family_starts, grid_symmetries
from featalign.geometry import Grid, check_shape, invert

__all__ = ["ALIGNMENT_DEFAULTS", "LayerAlignment", "align_layer", "oracle_points", "values_in_region"]

log = logging.getLogger(__name__)

#: Defaults of the config's ``alignment`` section and of :func:`align_layer` (stated
#: once here; ``workflow/schemas/config.schema.yaml`` states the same, held by a test).
ALIGNMENT_DEFAULTS: dict[str, Any] = {
    "method": "gauss_newton",
    "starts_per_family": 4,
    "dense_grid": 6,
    "dense_smoothness": 1e-3,
    "dense_method": "gauss_newton",
    "dense_steps": None,  # the method's own (featalign.align.dense.DENSE_STEPS)
    "ridge": 1e-3,
    "max_batch_elements": 2**25,
}


@dataclass(frozen=True)
class LayerAlignment:
    """All measures and fitted warps of one layer.

    Attributes:
        errors: (S, T, 7) float64, errors (:data:`~featalign.align.measures.NORMALISATION`)
            in the order of ``measures``.
        measures: the names of the last axis of ``errors``
            (:data:`~featalign.align.measures.MEASURES`).
        affine_matrix: (S, T, 2, 3) float64, best affine ``tgt_from_src`` on the moving maps.
        affine_iterations: (S, T) int64.
        affine_converged: (S, T) bool.
        affine_start: (S, T) int64, index into ``start_names``.
        start_names: names of the starts.
        start_matrix: (T, K, 2, 3) float64, the starting matrices.
        start_error: (S, T, K) float64, final error of every start.
        dense_displacement_rms: (S, T) float64, in image pixels.
        dense_control: (S, T, 2, G, G) float64, control displacements in image pixels.
        region_pixels: feature pixels in R.
        seconds: dict of wall times per stage.
    """

    errors: torch.Tensor
    measures: tuple[str, ...]
    affine_matrix: torch.Tensor
    affine_iterations: torch.Tensor
    affine_converged: torch.Tensor
    affine_start: torch.Tensor
    start_names: tuple[str, ...]
    start_matrix: torch.Tensor
    start_error: torch.Tensor
    dense_displacement_rms: torch.Tensor
    dense_control: torch.Tensor
    region_pixels: int
    seconds: dict[str, float]


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")


def _starts(
    tgt_from_src: torch.Tensor,
    families: Sequence[str],
    starts_per_family: int,
    include_oracle_start: bool,
    seed: int,
    image_size: tuple[int, int],
) -> tuple[list[str], torch.Tensor]:
    """Names and matrices (T, K, 2, 3) of the starts: oracle, grid symmetries, family draws."""
    gen = torch.Generator().manual_seed(int(seed))
    names: list[str] = (["oracle"] if include_oracle_start else []) + list(SYMMETRY_NAMES)
    names += [f"family{k}" for k in range(starts_per_family)]
    per_t = []
    for t, family in enumerate(families):
        parts = [invert(tgt_from_src[t : t + 1])] if include_oracle_start else []
        parts += [grid_symmetries(), family_starts(family, starts_per_family, gen, image_size)]
        per_t.append(torch.cat(parts))
    return names, torch.stack(per_t)


def _region_targets(
    target: torch.Tensor, grid: Grid, region_radius: float
) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """The region R (mask, points), Γ(f) at its points (S, C, N) and each sample's
    denominator (S,), NaN where Γ(f) is constant over R."""
    mask = region_mask(grid, region_radius)
    pts = _points(grid, mask)
    tv = _at(target, pts)  # (S, C, N)
    return mask, pts, tv, _nan_where_flat(_denominator(tv))


def values_in_region(maps: torch.Tensor, grid: Grid, region_radius: float) -> torch.Tensor:
    """Maps (..., C, h, w) at the feature pixels of R (:func:`align_layer`'s region):
    (..., C, N), in the order :func:`align_layer` reads them.

    Where only R's values count (the ``input`` measure's Γ(T_g⁻¹ T_g f)), a caller can
    pass these to :func:`align_layer` instead of the maps and read the maps a part at a
    time: R holds about a fifth of a map's pixels at the default radius.
    """
    return _at(maps, _points(grid, region_mask(grid, region_radius)))


def _oracle(moving: torch.Tensor, g: torch.Tensor, grid: Grid, pts: Any) -> torch.Tensor:
    """Γ(T_g f) (S, T, C, h, w) warped by the oracle g⁻¹ (g: (T, 2, 3) float64), at R's
    points: (S, T, C, N)."""
    s_count, t_count, c = moving.shape[:3]
    flat_moving = moving.reshape(s_count * t_count, *moving.shape[2:])
    oracle_m = invert(g).repeat(s_count, 1, 1)
    return _sample(flat_moving, oracle_m, grid, pts).view(s_count, t_count, c, -1)


def oracle_points(
    target: torch.Tensor,
    moving: torch.Tensor,
    tgt_from_src: torch.Tensor,
    grid: Grid,
    region_radius: float,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the ``mixing`` measure needs of some samples, as :func:`align_layer` computes it.

    For :func:`featalign.align.mixing.mixing_in_chunks`, when a layer's samples are
    aligned in chunks (``align_layer(..., mixing=False)``): the mixing fit pools every
    sample.

    Args:
        target: Γ(f), (S, C, h, w).
        moving: Γ(T_g f), (S, T, C, h, w).
        tgt_from_src: the transforms g, (T, 2, 3).
        grid: the layer's lattice.
        region_radius: radius of R in image pixels.
        device: where to compute.

    Returns:
        The oracle-warped moving maps at R's points (S, T, C, N), the target's (S, C, N)
        and the denominators (S,).
    """
    device = torch.device(device)
    target = target.to(device, torch.float32)
    _, pts, tv, denom = _region_targets(target, grid, region_radius)
    g = tgt_from_src.to(torch.float64).cpu()
    return _oracle(moving.to(device, torch.float32), g, grid, pts), tv, denom


def align_layer(
    target: torch.Tensor,
    moving: torch.Tensor,
    realigned: torch.Tensor,
    tgt_from_src: torch.Tensor,
    grid: Grid,
    *,
    region_radius: float,
    families: Sequence[str],
    starts_per_family: int = ALIGNMENT_DEFAULTS["starts_per_family"],
    include_oracle_start: bool = True,
    method: str = ALIGNMENT_DEFAULTS["method"],
    dense_grid: int = ALIGNMENT_DEFAULTS["dense_grid"],
    dense_smoothness: float = ALIGNMENT_DEFAULTS["dense_smoothness"],
    dense_method: str = ALIGNMENT_DEFAULTS["dense_method"],
    dense_steps: int | None = ALIGNMENT_DEFAULTS["dense_steps"],
    ridge: float = ALIGNMENT_DEFAULTS["ridge"],
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_batch_elements: int = ALIGNMENT_DEFAULTS["max_batch_elements"],
    mixing: bool = True,
) -> LayerAlignment:
    """Measure all seven errors (:data:`~featalign.align.measures.MEASURES`) of one layer.

    **Convention**: ``tgt_from_src`` are the forward image transforms g in centred image
    pixels ((x, y)); the oracle warps the moving maps by ``invert(g)`` on ``grid``
    (bilinear, zero padding, ``align_corners=False``); R is a disk of ``region_radius``
    image pixels about the canvas centre in the target frame. Errors follow
    :data:`~featalign.align.measures.NORMALISATION`; a sample whose target is constant
    over R gets NaN errors (with a logged warning).

    Starts of the affine optimiser, in order: the oracle ``invert(g)`` (if
    ``include_oracle_start``), the 8 grid symmetries
    (:data:`~featalign.align.starts.SYMMETRY_NAMES`, identity first), and
    ``starts_per_family`` draws from each transform's family
    (:func:`~featalign.align.starts.family_starts`, seeded by ``seed``).

    Args:
        target: Γ(f), shape (S, C, h, w).
        moving: Γ(T_g f), shape (S, T, C, h, w).
        realigned: Γ(T_g⁻¹ T_g f), shape (S, T, C, h, w), or only its values at R,
            (S, T, C, N) (:func:`values_in_region`): the ``input`` measure reads no more.
        tgt_from_src: the transforms g, (T, 2, 3).
        grid: the layer's lattice on the image plane.
        region_radius: radius of R in image pixels.
        families: the family of each transform, length T.
        starts_per_family: family draws per transform.
        include_oracle_start: start also from the oracle (off for known-answer tests).
        method: ``"gauss_newton"`` (default) or ``"adam"`` for the affine optimiser.
        dense_grid: control points per axis of the dense warp.
        dense_smoothness: weight of the dense warp's smoothness penalty.
        dense_method: the dense warp's optimiser, ``"gauss_newton"`` (default:
            Levenberg–Marquardt) or ``"adam"`` (:func:`~featalign.align.dense.fit_dense`).
        dense_steps: iterations of the dense warp (0 skips it: dense = affine); None:
            the method's own (:data:`~featalign.align.dense.DENSE_STEPS`).
        ridge: relative ridge penalty of the channel mixing.
        seed: seed of the family draws.
        device: where to compute.
        progress: show tqdm bars.
        max_batch_elements: memory bound per chunk of the optimisers (see
            :func:`~featalign.align.affine.fit_affine` and
            :func:`~featalign.align.dense.fit_dense`).
        mixing: score the ``mixing`` measure (held out across these samples); False
            leaves it NaN, for a caller that aligns a layer's samples in chunks and
            scores it over all of them (:func:`oracle_points`,
            :func:`~featalign.align.mixing.mixing_in_chunks`).

    Returns:
        A :class:`LayerAlignment`.

    Raises:
        ValueError: on non-finite inputs (naming which), mismatched shapes (with the
            shapes), a wrong number of families, an unknown family or ``dense_method``,
            or negative ``dense_steps``.
        EmptyRegionError: (a ``ValueError``) if the region R holds no feature pixel.
    """
    dense_steps = resolve_steps(dense_method, dense_steps)
    dims = check_shape(target, "S C h w", "target")
    spec = f"{dims['S']} T {dims['C']} {dims['h']} {dims['w']}"
    check_shape(moving, spec, "moving")
    at_points = realigned.dim() == 4  # values_in_region(realigned maps): (S, T, C, N)
    check_shape(realigned, f"{dims['S']} T {dims['C']} N" if at_points else spec, "realigned")
    if realigned.shape[:2] != moving.shape[:2]:
        raise ValueError(
            f"realigned has shape {tuple(realigned.shape)} but moving has {tuple(moving.shape)}"
        )
    t_count = moving.shape[1]
    check_shape(tgt_from_src, f"{t_count} 2 3", "tgt_from_src")
    if (grid.height, grid.width) != (dims["h"], dims["w"]):
        raise ValueError(
            f"features are {dims['h']}x{dims['w']} but the grid says {grid.height}x{grid.width}"
        )
    if len(families) != t_count:
        raise ValueError(f"families has {len(families)} entries for {t_count} transforms")
    for name, x in (
        ("target", target),
        ("moving", moving),
        ("realigned", realigned),
        ("tgt_from_src", tgt_from_src),
    ):
        _check_finite(x, name)
    device = torch.device(device)
    s_count = dims["S"]
    timings: dict[str, float] = {}

    target = target.to(device, torch.float32)
    moving = moving.to(device, torch.float32)
    realigned = realigned.to(device, torch.float32)
    g = tgt_from_src.to(torch.float64).cpu()
    mask, pts, tv, denom = _region_targets(target, grid, region_radius)
    if at_points and realigned.shape[-1] != pts.flat.numel():
        raise ValueError(
            f"realigned holds {realigned.shape[-1]} values per channel but R has "
            f"{pts.flat.numel()} feature pixels: pass values_in_region() of the same grid and radius"
        )
    if bool(denom.isnan().any()):
        log.warning("target features are constant over R for some samples; their errors are NaN")

    def error(x_pts: torch.Tensor) -> torch.Tensor:  # (S, T, C, N) -> (S, T), as fit_affine does
        e = (x_pts - tv[:, None]).expand(s_count, t_count, -1, -1)
        e = e.reshape(s_count * t_count, dims["C"], -1)
        return _sum_sq(e).view(s_count, t_count) / denom[:, None].cpu()

    errors = torch.full((s_count, t_count, len(MEASURES)), float("nan"), dtype=torch.float64)
    errors[..., MEASURES.index("none")] = error(_at(moving, pts))
    errors[..., MEASURES.index("input")] = error(realigned if at_points else _at(realigned, pts))
    mean = tv.mean(-1, keepdim=True).expand_as(tv)
    errors[..., MEASURES.index("constant")] = error(mean[:, None])

    # oracle (through the optimiser's own sampling, so affine <= oracle exactly)
    flat_moving = moving.reshape(s_count * t_count, *moving.shape[2:])
    oracle_pts = _oracle(moving, g, grid, pts)
    errors[..., MEASURES.index("oracle")] = error(oracle_pts)
    if mixing:
        errors[..., MEASURES.index("mixing")] = _mixing_from_points(oracle_pts, tv, denom, ridge)

    image_size = (grid.image_height or dims["h"], grid.image_width or dims["w"])
    names, starts = _starts(  # starts: (T, K, 2, 3)
        g, families, starts_per_family, include_oracle_start, seed, image_size
    )
    problem_starts = starts.repeat(s_count, 1, 1, 1)
    # problems are sample-major: problem s·T + t warps moving[s, t] onto target[s]
    target_index = torch.arange(s_count).repeat_interleave(t_count)

    log.info(
        "aligning %d samples x %d transforms, %d starts, %d channels, %dx%d, |R| = %d",
        s_count,
        t_count,
        len(names),
        dims["C"],
        dims["h"],
        dims["w"],
        pts.flat.numel(),
    )
    fit = fit_affine(
        target,
        flat_moving,
        target_index,
        problem_starts,
        grid,
        mask,
        method=method,
        max_batch_elements=max_batch_elements,
        progress=progress,
    )
    timings["affine"] = fit.seconds
    errors[..., MEASURES.index("affine")] = fit.error.view(s_count, t_count)

    if dense_steps > 0:
        dense = fit_dense(
            target,
            flat_moving,
            target_index,
            fit.matrix,
            grid,
            mask,
            grid_size=dense_grid,
            smoothness=dense_smoothness,
            steps=dense_steps,
            method=dense_method,
            max_batch_elements=max_batch_elements,
            progress=progress,
        )
        timings["dense"] = dense.seconds
        dense_err = torch.minimum(dense.error, fit.error)
        dense_rms, dense_ctrl = dense.displacement_rms, dense.control
    else:
        dense_err = fit.error
        dense_rms = torch.zeros(s_count * t_count, dtype=torch.float64)
        dense_ctrl = torch.zeros(s_count * t_count, 2, dense_grid, dense_grid, dtype=torch.float64)
    errors[..., MEASURES.index("dense")] = dense_err.view(s_count, t_count)
    log.info("layer aligned in %s", {k: round(v, 2) for k, v in timings.items()})

    return LayerAlignment(
        errors=errors,
        measures=MEASURES,
        affine_matrix=fit.matrix.view(s_count, t_count, 2, 3),
        affine_iterations=fit.iterations.view(s_count, t_count),
        affine_converged=fit.converged.view(s_count, t_count),
        affine_start=fit.start.view(s_count, t_count),
        start_names=tuple(names),
        start_matrix=starts,
        start_error=fit.start_error.view(s_count, t_count, -1),
        dense_displacement_rms=dense_rms.view(s_count, t_count),
        dense_control=dense_ctrl.view(s_count, t_count, 2, dense_grid, dense_grid),
        region_pixels=int(pts.flat.numel()),
        seconds=timings,
    )
