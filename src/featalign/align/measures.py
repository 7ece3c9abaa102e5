"""The measures, their one normalisation, the region R and sampling at R.

For one layer the alignment measures how well Γ(T_g f) (features of transformed
images, the *moving* maps) can be brought back onto Γ(f) (features of the
originals, the *target*), by warps of increasing power, and by comparison
baselines (see :data:`MEASURES` and DESIGN.md, "Measures").

**Error** (every "error" in :mod:`featalign.align` is this squared relative error,
:data:`NORMALISATION`, computed by :func:`relative_error`): for a candidate X of
Γ(f) on the layer's lattice,

    err(X) = Σ_{p∈R} Σ_c (X_c(p) − Γ_c(f)(p))² / Σ_{p∈R} Σ_c (Γ_c(f)(p) − μ_c)²,

with μ_c the mean of channel c of Γ(f) over R, per sample. R is a disk of
``region_radius`` image pixels about the canvas centre in the *target* frame; at
a layer it is the set of feature pixels whose physical centre (from its
:class:`~featalign.geometry.Grid`) lies within the radius. R never moves with a
warp, and warps sample with zero padding, so a warp cannot win by looking away
from the content. By construction the ``constant`` measure (each channel replaced
by its mean over R) is exactly 1. A target constant over R has no error: its
denominator is replaced by NaN in one place (:func:`_nan_where_flat`).

**Convention**: every affine matrix is a ``tgt_from_src`` map in centred image pixels
((x, y) order) applied to the *moving* map, as in :func:`featalign.geometry.warp`;
the exact answer for a planted ``moving = warp(target, g)`` is ``invert(g)``.
Sampling is bilinear, zero padding, ``align_corners=False``, through
:func:`featalign.geometry.to_theta`; the sampling positions of an affine warp are
computed in one place (:func:`_affine_positions`).

The underscore names are shared by the modules of :mod:`featalign.align` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featalign.geometry import Grid, to_theta
from featalign.names import MEASURES

__all__ = [
    "MEASURES",
    "NORMALISATION",
    "EmptyRegionError",
    "region_mask",
    "relative_error",
    "warp_loss",
]

#: The one normalisation of every error (stated once; :func:`relative_error` computes it).
NORMALISATION: str = (
    "err(X) = sum_{p in R} sum_c (X - G)^2 / sum_{p in R} sum_c (G - mu_c)^2, "
    "G = target features Gamma(f), mu_c = mean of channel c of G over R, per sample"
)

#: Denominators at or below this count as a target constant over R.
_TINY = 1e-30


class EmptyRegionError(ValueError):
    """No feature pixel of a layer lies in the region R (raised by :func:`region_mask`)."""


# --------------------------------------------------------------------------- the region R


def region_mask(grid: Grid, radius: float) -> torch.Tensor:
    """The region R at a layer: feature pixels whose physical centre lies within ``radius``.

    **Convention**: R is a disk about the canvas centre in the target frame, radius in
    image pixels; a feature pixel's centre is read from ``grid`` (stride and offset).

    Args:
        grid: the layer's lattice on the image plane.
        radius: radius of R in image pixels.

    Returns:
        Boolean mask of shape (grid.height, grid.width).

    Raises:
        EmptyRegionError: (a ``ValueError``) if no feature pixel lies in R.

    Example:
        >>> int(region_mask(Grid.image(8, 8), 2.2).sum())  # centres at ±0.5, ±1.5
        16
    """
    cols = torch.arange(grid.width, dtype=torch.float64)
    rows = torch.arange(grid.height, dtype=torch.float64)
    m = grid.centred_from_index(torch.float64)
    x = m[0, 0] * cols + m[0, 2]
    y = m[1, 1] * rows + m[1, 2]
    mask = (x[None, :] ** 2 + y[:, None] ** 2) <= float(radius) ** 2
    if not bool(mask.any()):
        raise EmptyRegionError(
            f"the region R is empty at a layer of {grid.height}x{grid.width} feature pixels "
            f"(stride {grid.stride}) with region radius {radius} image pixels; "
            "enlarge `region.radius` or the canvas"
        )
    return mask


@dataclass(frozen=True)
class _Points:
    """The feature pixels of R: flat indices, centred and normalised coordinates."""

    flat: torch.Tensor  # (N,) long, row-major index into h*w
    centred: torch.Tensor  # (N, 2) float64, centred image pixels (x, y)
    normalised: torch.Tensor  # (N, 2) float64, torch normalised coords (align_corners=False)
    half_extent: float  # L: the unit of the optimiser's normalised centred coordinates


def _points(grid: Grid, mask: torch.Tensor) -> _Points:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    idx = torch.stack([cols, rows, torch.ones_like(cols)], 0).to(torch.float64)  # (3, N)
    centred = (grid.centred_from_index(torch.float64) @ idx)[:2].T.contiguous()
    normalised = (grid.normalised_from_index(torch.float64) @ idx)[:2].T.contiguous()
    ih = grid.image_height if grid.image_height is not None else grid.height * grid.stride
    iw = grid.image_width if grid.image_width is not None else grid.width * grid.stride
    return _Points(rows * grid.width + cols, centred, normalised, max(ih, iw) / 2.0)


def _at(maps: torch.Tensor, pts: _Points) -> torch.Tensor:
    """Values at the points of R: (..., C, h, w) -> (..., C, N)."""
    return maps.flatten(-2)[..., pts.flat.to(maps.device)]


# --------------------------------------------------------------------------- the error


def _sum_sq(e: torch.Tensor) -> torch.Tensor:
    """Σ_c Σ_p e², cast to float64 before squaring: (..., C, N) -> (...) float64.

    The one reduction of every reported error and of the normalisation.
    """
    return e.double().pow(2).sum((-2, -1))


def _sum_sq_in_dtype(e: torch.Tensor) -> torch.Tensor:
    """Σ_c Σ_p e² squared and summed in ``e``'s own dtype, then float64: (..., C, N) -> (...).

    The same sum as :func:`_sum_sq` with the cast after the sum instead of before: the
    optimisers' inner losses (Gauss–Newton residuals, Adam steps, the dense warp,
    :func:`warp_loss`) sum float32 residuals in float32 (pairwise summation, relative
    rounding ≈ 1e-7, far below any tolerance), several times faster than in float64.
    The two differ in the last bits for float32 input, so each caller keeps the one it
    has always used (changing it would move reported numbers). The errors of the
    measures ``none``, ``oracle``, ``affine``, ``mixing``, ``input`` and ``constant`` go
    through :func:`_sum_sq`; ``dense`` and the per-start errors are inner losses.
    """
    return e.pow(2).sum((-2, -1)).double()


def _denominator(target_pts: torch.Tensor) -> torch.Tensor:
    """Σ_R Σ_c (G − μ_c)² per sample: (..., C, N) -> (...) float64 (no flat-target guard)."""
    t = target_pts.double()
    return _sum_sq(t - t.mean(-1, keepdim=True))


def _nan_where_flat(denominator: torch.Tensor) -> torch.Tensor:
    """The one flat-target guard: a denominator ≤ 1e-30 (target constant over R) -> NaN."""
    return torch.where(denominator > _TINY, denominator, torch.full_like(denominator, float("nan")))


def relative_error(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The error of :data:`NORMALISATION` (a squared relative error) over the region ``mask``.

    Args:
        x: candidates of shape (..., C, h, w).
        target: Γ(f) of shape (..., C, h, w), broadcastable to ``x``.
        mask: the region R, boolean (h, w).

    Returns:
        Errors of shape (...) in float64 (NaN where the target is constant over R).

    Example:
        >>> t = torch.randn(2, 3, 5, 5)
        >>> m = torch.ones(5, 5, dtype=torch.bool)
        >>> mean = (t * m).sum((-2, -1), keepdim=True) / m.sum()
        >>> torch.allclose(relative_error(mean.expand_as(t), t, m), torch.ones(2, dtype=torch.float64))
        True
    """
    x, target = torch.broadcast_tensors(x, target)
    xm = x[..., mask].double()
    tm = target[..., mask].double()
    return _sum_sq(xm - tm) / _nan_where_flat(_denominator(tm))


# --------------------------------------------------------------------------- sampling at R


def _grid_to_normalised(grid: Grid) -> torch.Tensor:
    """Linear part (2, 2) of the map centred image pixels -> torch normalised coordinates."""
    m = grid.normalised_from_index(torch.float64) @ torch.linalg.inv(
        grid.centred_from_index(torch.float64)
    )
    return m[:2, :2]


def _affine_positions(
    tgt_from_src: torch.Tensor, grid: Grid, pts: _Points, like: torch.Tensor
) -> torch.Tensor:
    """Where an affine warp reads the moving maps for the points of R (the one place).

    **Convention**: ``tgt_from_src`` in centred image pixels, (x, y); positions in
    torch normalised coordinates (``align_corners=False``), computed in float64
    through :func:`featalign.geometry.to_theta`, returned in ``like``'s dtype.

    Args:
        tgt_from_src: (B, 2, 3).
        like: the maps to be sampled (their device and dtype).

    Returns:
        (B, N, 2).
    """
    theta = to_theta(tgt_from_src.to(torch.float64), grid).to(like.device)
    norm = pts.normalised.to(like.device)
    src = torch.einsum("nj,bij->bni", norm, theta[:, :, :2]) + theta[:, None, :, 2]
    return src.to(like.dtype)


def _displace(positions: torch.Tensor, displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Add ``displacement`` (B, N, 2), image pixels of the source frame, to positions (B, N, 2)."""
    lin = _grid_to_normalised(grid).to(positions.device, positions.dtype)
    return positions + displacement @ lin.T


def _read(maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Bilinear, zero padding, ``align_corners=False``: maps (B, C, h, w) at (B, K, N, 2)
    normalised positions -> (B, C, K, N)."""
    return F.grid_sample(
        maps, positions, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _read_position_grad(
    maps: torch.Tensor, positions: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    """The gradient of a loss at the positions :func:`_read` read, given its gradient
    ``grad_out`` (B, C, K, N) at the read values: (B, K, N, 2). ``grid_sample``'s own
    backward with :func:`_read`'s convention, for the maps kept out of autograd."""
    _, grad = torch.ops.aten.grid_sampler_2d_backward(
        grad_out, maps, positions, 0, 0, False, [False, True]  # bilinear, zeros, False
    )
    return grad


def _sample(
    maps: torch.Tensor,
    tgt_from_src: torch.Tensor,
    grid: Grid,
    pts: _Points,
    displacement: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp ``maps`` by ``tgt_from_src`` and read the result at the points of R.

    **Convention**: as :func:`featalign.geometry.warp` (centred image pixels, (x, y),
    bilinear, zero padding, ``align_corners=False``), evaluated only at R.
    ``displacement`` (B, N, 2), in image pixels of the source frame, is added to the
    affine sampling position.

    Args:
        maps: (B, C, h, w).
        tgt_from_src: (B, 2, 3).

    Returns:
        (B, C, N).
    """
    src = _affine_positions(tgt_from_src, grid, pts, maps)
    if displacement is not None:
        src = _displace(src, displacement, grid)
    return _read(maps, src[:, None])[:, :, 0]


def _control_field(control: torch.Tensor, pts: _Points) -> torch.Tensor:
    """Bicubic interpolation of a control grid of displacements at the points of R.

    The control points span the canvas (``align_corners=True``: the outer control
    points sit on the canvas border), border padding.

    Args:
        control: (B, 2, G, G) displacements (x, y) in image pixels.

    Returns:
        (B, N, 2) in image pixels.
    """
    norm = pts.normalised.to(control.device, control.dtype)
    g = norm[None, None].expand(control.shape[0], 1, -1, 2)
    out = F.grid_sample(control, g, mode="bicubic", padding_mode="border", align_corners=True)
    return out[:, :, 0].transpose(1, 2)


def warp_loss(
    target: torch.Tensor,
    moving: torch.Tensor,
    tgt_from_src: torch.Tensor,
    grid: Grid,
    mask: torch.Tensor,
    control: torch.Tensor | None = None,
) -> torch.Tensor:
    """The differentiable error of warped moving maps (no flat-target guard).

    **Convention**: ``tgt_from_src`` acts on the moving maps in centred image pixels,
    (x, y) order, bilinear, zero padding, ``align_corners=False``; ``control`` is an
    optional dense displacement control grid (image pixels, source frame) added to
    the affine sampling position.

    Args:
        target: Γ(f), shape (B, C, h, w).
        moving: shape (B, C, h, w).
        tgt_from_src: shape (B, 2, 3).
        grid: the lattice of both maps.
        mask: the region R, boolean (h, w).
        control: optional (B, 2, G, G).

    Returns:
        Errors of shape (B,), differentiable in ``tgt_from_src``, ``control`` and the
        maps; the squares are summed in the maps' dtype (:func:`_sum_sq_in_dtype`).
    """
    pts = _points(grid, mask)
    disp = None if control is None else _control_field(control, pts)
    x = _sample(moving, tgt_from_src, grid, pts, disp)
    t = _at(target, pts)
    return _sum_sq_in_dtype(x - t) / _denominator(t.detach())
