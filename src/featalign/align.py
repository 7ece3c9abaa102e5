"""Aligning feature maps: the warp optimiser, the dense warp, channel mixing and the measures.

For one layer this module measures how well Γ(T_g f) (features of transformed
images, the *moving* maps) can be brought back onto Γ(f) (features of the
originals, the *target*), by warps of increasing power, and by comparison
baselines (see ``MEASURES`` and DESIGN.md, "Measures").

**Normalisation** (the one used for every measure, see :data:`NORMALISATION`
and :func:`relative_error`): for a candidate X of Γ(f) on the layer's lattice,

    err(X) = Σ_{p∈R} Σ_c (X_c(p) − Γ_c(f)(p))² / Σ_{p∈R} Σ_c (Γ_c(f)(p) − μ_c)²,

with μ_c the mean of channel c of Γ(f) over R, per sample. R is a disk of
``region_radius`` image pixels about the canvas centre in the *target* frame; at
a layer it is the set of feature pixels whose physical centre (from its
:class:`~featalign.geometry.Grid`) lies within the radius. R never moves with a
warp, and warps sample with zero padding, so a warp cannot win by looking away
from the content. By construction the ``constant`` measure (each channel replaced
by its mean over R) is exactly 1.

**Convention**: every affine matrix here is a ``tgt_from_src`` map in centred image
pixels ((x, y) order) applied to the *moving* map, as in
:func:`featalign.geometry.warp`; the exact answer for a planted
``moving = warp(target, g)`` is ``invert(g)``. Sampling is bilinear, zero padding,
``align_corners=False``, through :func:`featalign.geometry.to_theta`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from featalign.geometry import (
    FAMILIES,
    Grid,
    anisotropic_scaling,
    check_shape,
    compose,
    invert,
    reflection,
    rotation,
    scaling,
    shear,
    to_theta,
    translation,
)
from featalign.geometry import affine as random_affine

__all__ = [
    "MEASURES",
    "NORMALISATION",
    "SYMMETRY_NAMES",
    "AffineFit",
    "DenseFit",
    "LayerAlignment",
    "align_layer",
    "family_starts",
    "fit_affine",
    "fit_dense",
    "grid_symmetries",
    "mixing_error",
    "region_mask",
    "relative_error",
    "warp_loss",
]

log = logging.getLogger(__name__)

#: The seven measures, in the order of the last axis of ``LayerAlignment.errors``.
MEASURES: tuple[str, ...] = ("none", "oracle", "affine", "dense", "mixing", "input", "constant")

#: The one normalisation of every error (stated once; :func:`relative_error` computes it).
NORMALISATION: str = (
    "err(X) = sum_{p in R} sum_c (X - G)^2 / sum_{p in R} sum_c (G - mu_c)^2, "
    "G = target features Gamma(f), mu_c = mean of channel c of G over R, per sample"
)

#: Names of the 8 symmetries of the pixel grid, in the order of :func:`grid_symmetries`.
SYMMETRY_NAMES: tuple[str, ...] = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_ud",
    "flip_lr",
    "transpose",
    "antitranspose",
)

_TINY = 1e-30


# --------------------------------------------------------------------------- region, measures


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
        ValueError: if no feature pixel lies in R.

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
        raise ValueError(
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


def _sum_sq(e: torch.Tensor) -> torch.Tensor:
    """Σ_c Σ_p e² per problem: (B, C, N) -> (B,) float64 (the one reduction of every loss)."""
    return e.double().pow(2).sum((1, 2))


def _denominator(target_pts: torch.Tensor) -> torch.Tensor:
    """Σ_R Σ_c (G − μ_c)² per sample: (S, C, N) -> (S,) float64."""
    t = target_pts.double()
    return (t - t.mean(-1, keepdim=True)).pow(2).sum((-2, -1))


def relative_error(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The relative error of :data:`NORMALISATION` over the region ``mask``.

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
    num = (xm - tm).pow(2).sum((-2, -1))
    den = (tm - tm.mean(-1, keepdim=True)).pow(2).sum((-2, -1))
    return num / torch.where(den > _TINY, den, torch.full_like(den, float("nan")))


def _grid_to_normalised(grid: Grid) -> torch.Tensor:
    """Linear part (2, 2) of the map centred image pixels -> torch normalised coordinates."""
    m = grid.normalised_from_index(torch.float64) @ torch.linalg.inv(
        grid.centred_from_index(torch.float64)
    )
    return m[:2, :2]


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
    theta = to_theta(tgt_from_src.to(torch.float64), grid).to(maps.device)
    norm = pts.normalised.to(maps.device)
    src = torch.einsum("nj,bij->bni", norm, theta[:, :, :2]) + theta[:, None, :, 2]
    src = src.to(maps.dtype)
    if displacement is not None:
        lin = _grid_to_normalised(grid).to(maps.device, maps.dtype)
        src = src + displacement @ lin.T
    out = F.grid_sample(
        maps, src[:, None], mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out[:, :, 0]


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
    """The differentiable relative error of warped moving maps (Adam variant, dense warp).

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
        Relative errors of shape (B,), differentiable in ``tgt_from_src``, ``control``
        and the maps.
    """
    pts = _points(grid, mask)
    disp = None if control is None else _control_field(control, pts)
    x = _sample(moving, tgt_from_src, grid, pts, disp)
    t = _at(target, pts)
    return (x - t).pow(2).sum((1, 2)).to(torch.float64) / _denominator(t.detach())


# --------------------------------------------------------------------------- starts


def grid_symmetries(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 8 symmetries of the square pixel grid about the canvas centre.

    In the order of :data:`SYMMETRY_NAMES`: identity, rotations by 90/180/270°, and the
    reflections about the x axis (up-down), the y axis (left-right), and the two diagonals.

    Returns:
        Matrices (8, 2, 3) in centred pixels, exact integers.
    """
    rots = rotation(torch.tensor([0.0, 90.0, 180.0, 270.0], dtype=torch.float64))
    refl = reflection(torch.tensor([0.0, 90.0, 45.0, 135.0], dtype=torch.float64))
    return torch.cat([rots, refl]).to(dtype)


def _stratified(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return lo + (torch.arange(n, dtype=torch.float64) + u) / max(n, 1) * (hi - lo)


def family_starts(
    family: str, n: int, generator: torch.Generator, image_size: tuple[int, int]
) -> torch.Tensor:
    """``n`` random members of a family, drawn stratified over its range (starting points).

    Ranges: translation ±10 % of the canvas per axis; rotation angles over the full
    circle; reflection axes over [0°, 180°); scaling factors log-uniform in [1/2, 2];
    anisotropic factors m (m along x, 1/m along y) log-uniform in [1/2, 2]; shear
    coefficients in [−0.5, 0.5]; affine: a rotation over the full circle composed with a
    random affine map of log-strength 0.3. The k-th draw falls in the k-th of ``n`` equal
    bins of the range (stratified), so few draws still cover it.

    Args:
        family: one of :data:`featalign.geometry.FAMILIES`.
        n: how many.
        generator: seeded generator.
        image_size: (H, W) of the canvas, for the translation range.

    Returns:
        Matrices (n, 2, 3) in float64 (``tgt_from_src``, centred image pixels).

    Raises:
        ValueError: on an unknown family.
    """
    if n == 0:
        return torch.zeros(0, 2, 3, dtype=torch.float64)
    if family == "translation":
        h, w = image_size
        tx = _stratified(n, -0.1 * w, 0.1 * w, generator)
        ty = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * 0.1 * h
        return translation(tx, ty)
    if family == "rotation":
        return rotation(_stratified(n, -180.0, 180.0, generator))
    if family == "reflection":
        return reflection(_stratified(n, 0.0, 180.0, generator))
    if family == "scaling":
        return scaling(torch.exp(_stratified(n, -math.log(2), math.log(2), generator)))
    if family == "anisotropic_scaling":
        m = torch.exp(_stratified(n, -math.log(2), math.log(2), generator))
        return anisotropic_scaling(m, 1.0 / m)
    if family == "shear":
        return shear(_stratified(n, -0.5, 0.5, generator))
    if family == "affine":
        rot = rotation(_stratified(n, -180.0, 180.0, generator))
        return compose(rot, random_affine(n, 0.3, generator=generator))
    raise ValueError(f"unknown family {family!r}; known families: {', '.join(FAMILIES)}")


# --------------------------------------------------------------------------- affine optimiser


@dataclass(frozen=True)
class AffineFit:
    """The best affine warp per problem.

    Attributes:
        matrix: (P, 2, 3) float64, ``tgt_from_src`` applied to the moving map.
        error: (P,) float64, relative error at full resolution (σ = 0).
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


def _blur_matrix(n: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (n, n) matrix of a 1-D Gaussian blur with zero padding: ``out = K @ x``.

    Rows are the kernel exp(−d²/2σ²) cut at |d| ≤ ⌈3σ⌉ and normalised over its whole
    support, so a row near the border sums to less than 1 (the zeros outside count).
    """
    r = math.ceil(3 * sigma)
    i = torch.arange(n, dtype=torch.float64)
    d = i[:, None] - i[None, :]
    taps = torch.arange(-r, r + 1, dtype=torch.float64)
    norm = torch.exp(-0.5 * (taps / sigma) ** 2).sum()
    k = torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= r) / norm
    return k.to(device, dtype)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur in feature pixels, zero padding: (..., h, w) -> same.

    Two matrix products with banded blur matrices (:func:`_blur_matrix`): on a CPU this
    is an order of magnitude faster than single-channel ``conv2d`` over B·C maps, and
    equal to it up to float rounding.
    """
    if sigma <= 0:
        return maps
    h, w = maps.shape[-2:]
    kh = _blur_matrix(h, sigma, maps.dtype, maps.device)
    kw = _blur_matrix(w, sigma, maps.dtype, maps.device)
    return kh @ (maps @ kw.T)


def _pyramid(h: int, w: int, sigmas: Sequence[float] | None) -> list[float]:
    """σs coarse to fine, in feature pixels: min(h, w) / 8 halved down to 1, then 0.

    64×64 maps get 8, 4, 2, 1, 0; 32×32 get 4, 2, 1, 0; 16×16 get 2, 1, 0; 8×8 and
    smaller get 1, 0. (A prototype's fixed 4, 2, 1, 0 left 3 of 256 planted warps of
    64×64 maps unrecovered from every non-oracle start; the extra σ = 8 level fixed them.)
    """
    if sigmas is None:
        top = min(h, w) / 8.0
        sigmas = []
        s = 2.0 ** math.floor(math.log2(top)) if top >= 1 else 0.0
        while s >= 1:
            sigmas.append(s)
            s /= 2
    out = [float(s) for s in sigmas]
    if not out or out[-1] != 0.0:
        out.append(0.0)
    return out


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
    det = torch.linalg.det(m[..., :2])
    return torch.isfinite(m).all(-1).all(-1) & (det.abs() > 1e-3) & (det.abs() < 1e3)


def _target_runs(tidx: torch.Tensor) -> list[tuple[int, int, int]]:
    """Runs of equal targets in ``tidx`` (sorted by target): (start, stop, target)."""
    ti = tidx.cpu()
    change = torch.nonzero(ti[1:] != ti[:-1]).squeeze(1) + 1
    bounds = [0, *change.tolist(), ti.numel()]
    return [(a, b, int(ti[a])) for a, b in itertools.pairwise(bounds) if b > a]


def _sample_slots(
    maps: torch.Tensor, tgt_from_src: torch.Tensor, grid: Grid, pts: _Points
) -> torch.Tensor:
    """Warp each map by each of its K matrices and read the results at the points of R.

    One ``grid_sample`` call reads K point sets per map, so the K starts of a problem
    share its moving map: nothing is copied per start. Convention as :func:`_sample`.

    Args:
        maps: (V, C, h, w).
        tgt_from_src: (V, K, 2, 3).

    Returns:
        (V, C, K, N).
    """
    v, k = tgt_from_src.shape[:2]
    theta = to_theta(tgt_from_src.reshape(v * k, 2, 3).to(torch.float64), grid).to(maps.device)
    norm = pts.normalised.to(maps.device)
    src = torch.einsum("nj,bij->bni", norm, theta[:, :, :2]) + theta[:, None, :, 2]
    src = src.to(maps.dtype).view(v, k, -1, 2)
    return F.grid_sample(maps, src, mode="bilinear", padding_mode="zeros", align_corners=False)


class _Level:
    """One pyramid level of the fixed target: values, steepest-descent images and Hessian.

    Coarse levels (σ ≥ 2) use every ⌊σ⌋-th feature pixel of R along each axis: the
    blurred maps are smooth there, and the warp then costs a fraction of a full one.
    """

    def __init__(self, target: torch.Tensor, sigma: float, grid: Grid, mask: torch.Tensor):
        spacing = max(1, int(sigma))
        sub = mask.clone()
        while spacing > 1:
            keep = torch.zeros_like(mask)
            keep[spacing // 2 :: spacing, spacing // 2 :: spacing] = True
            if int((mask & keep).sum()) >= 24:
                sub = mask & keep
                break
            spacing //= 2
        self.sigma = sigma
        self.pts = _points(grid, sub)
        pts = self.pts
        blurred = _gaussian_blur(target, sigma)
        self.values = _at(blurred, pts)  # (S, C, N)
        self.scale = self.values.double().pow(2).sum((1, 2)).cpu()
        # gradients in normalised centred coordinates u = x / L (x in image pixels)
        gy, gx = torch.gradient(blurred, spacing=float(grid.stride), dim=(-2, -1))
        gx = _at(gx, pts).double() * pts.half_extent
        gy = _at(gy, pts).double() * pts.half_extent
        u = (pts.centred / pts.half_extent).to(target.device)
        ux, uy = u[:, 0], u[:, 1]
        sd = torch.stack([gx * ux, gy * ux, gx * uy, gy * uy, gx, gy], -1)  # (S, C, N, 6)
        self.hessian = torch.einsum("scnk,scnl->skl", sd, sd).cpu()  # (S, 6, 6)
        self.sd = sd.to(target.dtype).flatten(1, 2)  # (S, C·N, 6)

    def residual(
        self,
        maps: torch.Tensor,
        matrix: torch.Tensor,
        tmap: torch.Tensor,
        grid: Grid,
        *,
        with_grad: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Warp and compare K matrices per map: returns (Σ e², Σ SDᵀ e).

        Args:
            maps: (V, C, h, w) moving maps, sorted by target.
            matrix: (V, K, 2, 3).
            tmap: (V,) the target of each map.
            with_grad: compute Σ SDᵀ e too (else None).

        Returns:
            Shapes (V, K) and (V, K, 6), float64 on the CPU. The squares are summed in
            float32 (pairwise summation, relative rounding ≈ 1e-7, far below any
            tolerance), which is several times faster than summing in float64.
        """
        v, k = matrix.shape[:2]
        warped = _sample_slots(maps, matrix, grid, self.pts)  # (V, C, K, N)
        loss = torch.empty(v, k, dtype=torch.float64)
        grad = torch.empty(v, k, 6, dtype=torch.float64) if with_grad else None
        # one matrix product per run of equal targets (the target's SD images are shared)
        for a, b, t in _target_runs(tmap):
            e = warped[a:b].sub_(self.values[t][None, :, None, :]).transpose(1, 2)
            e = e.reshape((b - a) * k, -1)  # (n·K, C·N)
            loss[a:b] = e.square().sum(1).view(b - a, k).double().cpu()
            if grad is not None:
                grad[a:b] = (e @ self.sd[t]).view(b - a, k, 6).double().cpu()
        return loss, grad


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


def _gauss_newton_level(
    maps: torch.Tensor,
    tmap: torch.Tensor,
    level: _Level,
    matrix: torch.Tensor,
    active: torch.Tensor,
    grid: Grid,
    *,
    max_iter: int,
    rtol: float,
    xtol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse-compositional Levenberg–Marquardt at one level for K starts per map.

    Each iteration warps the maps that still have an active start once, at the trial
    matrices of their active starts; the gradient Σ SDᵀ e is computed with the trial
    residual, so nothing else is re-warped.

    Args:
        maps: (U, C, h, w) blurred moving maps, sorted by target.
        tmap: (U,) the target of each map.
        matrix: (U, K, 2, 3) float64 on the CPU; updated in place and returned.
        active: (U, K) the starts to optimise (the others are left as they are).

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
        l0, g0 = level.residual(held_maps, matrix[r2, order], tmap[rows], grid)
        loss[r2, order] = torch.where(ok_slot, l0, loss[r2, order])
        grad[r2, order] = torch.where(ok_slot[..., None], g0, grad[r2, order])
    for _ in range(max_iter):
        rows = torch.nonzero(active.any(1)).squeeze(1)
        if rows.numel() == 0:
            break
        if rows.numel() < 0.6 * held.numel():
            # regather only when the active maps have shrunk well: till then a finished
            # map is warped along with the others (cheaper than copying the maps)
            held_maps = held_maps[torch.searchsorted(held, rows)]
            held = rows
        rows = held
        order, slot = _active_slots(active[rows])
        r2 = rows[:, None].expand_as(order)
        ti = tmap[rows]
        h = level.hessian[ti][:, None]  # (V, 1, 6, 6), shared by the starts of a map
        diag = torch.diagonal(h, dim1=-2, dim2=-1)
        lam_s = lam[r2, order]
        damp = lam_s[..., None, None] * torch.diag_embed(diag + 1e-12 * diag.amax(-1, keepdim=True))
        dp = torch.linalg.solve(h + damp, grad[r2, order].unsqueeze(-1)).squeeze(-1)
        current = matrix[r2, order]
        trial = compose(
            _delta_to_pixels(dp, half).reshape(-1, 2, 3), current.reshape(-1, 2, 3)
        ).view_as(current)
        ok = _valid_matrix(trial) & slot
        trial = torch.where(ok[..., None, None], trial, current)
        loss_new, grad_new = level.residual(held_maps, trial, ti, grid)
        old = loss[r2, order]
        acc = ok & torch.isfinite(loss_new) & (loss_new < old)
        matrix[r2, order] = torch.where(acc[..., None, None], trial, current)
        loss[r2, order] = torch.where(acc, loss_new, old)
        grad[r2, order] = torch.where(acc[..., None], grad_new, grad[r2, order])
        lam_new = torch.where(acc, (lam_s / 10).clamp_min(1e-9), lam_s * 10)
        lam[r2, order] = torch.where(slot, lam_new, lam_s)
        iters[r2, order] += slot.to(torch.int64)
        step = dp.norm(dim=-1)
        small = acc & (((old - loss_new) <= rtol * old) | (step < xtol))
        stuck = ~acc & (lam_new > 1e6)
        exact = loss[r2, order] <= 1e-14 * level.scale[ti][:, None]
        done = slot & (small | stuck | exact)
        conv[r2[done], order[done]] = True
        active[r2[done], order[done]] = False
    return matrix, loss, iters, conv


def _adam_level(
    maps: torch.Tensor,
    map_idx: torch.Tensor,
    level: _Level,
    tidx: torch.Tensor,
    matrix: torch.Tensor,
    grid: Grid,
    *,
    max_iter: int,
    rtol: float,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam through autograd on the 6 entries of the matrix (normalised centred units)."""
    pts = level.pts
    scale = torch.tensor([1.0, 1.0, pts.half_extent], dtype=torch.float64)
    q = (matrix / scale).clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=lr)
    gathered = maps[map_idx]  # the moving maps stay out of autograd
    values = level.values[tidx]
    best = torch.full((matrix.shape[0],), float("inf"), dtype=torch.float64)
    best_m = matrix.clone()
    prev = None
    iters = torch.zeros(matrix.shape[0], dtype=torch.int64)
    conv = torch.zeros(matrix.shape[0], dtype=torch.bool)
    for _ in range(max_iter):
        opt.zero_grad()
        m = q * scale
        loss = (_sample(gathered, m, grid, pts) - values).pow(2).sum((1, 2)).double()
        with torch.no_grad():
            lc = loss.detach().cpu()
            better = lc < best
            best = torch.where(better, lc, best)
            best_m[better] = m.detach()[better]
        iters += 1
        if prev is not None and bool(((prev - lc).abs() <= rtol * prev).all()):
            conv[:] = True
            break
        prev = lc
        loss.sum().backward()
        opt.step()
    return best_m, best, iters, conv


def _adam_slots(
    maps: torch.Tensor,
    tmap: torch.Tensor,
    level: _Level,
    matrix: torch.Tensor,
    active: torch.Tensor,
    grid: Grid,
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
            tmap[u_idx],
            matrix[u_idx, k_idx],
            grid,
            max_iter=max_iter,
            rtol=rtol,
            lr=lr,
        )
        matrix[u_idx, k_idx], loss[u_idx, k_idx] = m, lo
        iters[u_idx, k_idx], conv[u_idx, k_idx] = it, cv
    return matrix, loss, iters, conv


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

    Each start of each problem is run; per start the error at full resolution is
    compared with the start's own, and the start is kept if the optimisation made it
    worse, so the result is never worse than the best start.

    **Convention**: matrices are ``tgt_from_src`` in centred image pixels ((x, y)),
    applied to the moving maps as :func:`featalign.geometry.warp` does (bilinear, zero
    padding, ``align_corners=False``). The loss is :func:`relative_error` over R.

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
            at the last level (coarser levels: 10×).
        adam_lr: Adam's learning rate (normalised units).
        keep_starts: after the coarsest level, only the ``keep_starts`` starts of each
            problem with the lowest coarse loss go on to the finer levels (``None``: all);
            a dropped start reports its starting matrix and error.
        polish_iter: Adam steps (through autograd, learning rate ``adam_lr / 10``) on each
            problem's winner at full resolution, after Gauss–Newton (0: none). Bilinear
            sampling makes the loss kinked at the sub-pixel scale, which Gauss–Newton's
            smooth linearisation does not see. Of 256 planted stride-2 problems
            (``pytest tests/test_align.py -s -k polish``), 0 steps recovered 248, 10 steps
            all 256 and 30 steps 255, at three times the polish cost. Only decreases are
            kept.
        max_batch_elements: bound on the elements of the moving maps and of their
            samples at R (problems × C × (h·w + starts × |R|)) per chunk.
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
    levels_sigma = _pyramid(dims["h"], dims["w"], sigmas)
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
    per = max(1, int(max_batch_elements) // max(1, per_problem))

    out_m = all_starts.clone()
    out_err = torch.empty(p_count, k_count, dtype=torch.float64)
    out_it = torch.zeros(p_count, k_count, dtype=torch.int64)
    out_conv = torch.zeros(p_count, k_count, dtype=torch.bool)
    for lo in tqdm(range(0, p_count, per), desc="affine", disable=not progress, leave=False):
        hi = min(p_count, lo + per)
        tmap = target_index[lo:hi]
        perm = torch.argsort(tmap, stable=True)
        if bool((perm == torch.arange(perm.numel())).all()):
            perm = None
            chunk_maps = moving[lo:hi]
        else:
            tmap = tmap[perm]
            chunk_maps = moving[lo + perm.to(device)]
        m0 = all_starts[lo:hi] if perm is None else all_starts[lo + perm]
        loss0 = torch.cat(
            [
                full.residual(chunk_maps, m0[:, k : k + slots], tmap, grid, with_grad=False)[0]
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
            maps_l = _gaussian_blur(chunk_maps, sigma)
            kwargs = {"max_iter": max_iter, "rtol": rtol if last else rtol * 100}
            if method == "gauss_newton":
                xt = xtol if last else xtol * 10
                m, loss_l, it_l, conv_l = _gauss_newton_level(
                    maps_l, tmap, level, m, run, grid, xtol=xt, **kwargs
                )
            else:
                m, loss_l, it_l, conv_l = _adam_slots(
                    maps_l, tmap, level, m, run, grid, lr=adam_lr, **kwargs
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
        out_err[rows] = loss / denom[tmap][:, None]
        out_it[rows] = it
        out_conv[rows] = conv
        log.debug("affine chunk %d-%d: median error %.4g", lo, hi, float(out_err[lo:hi].median()))

    best = torch.argmin(torch.nan_to_num(out_err, nan=float("inf")), dim=1)
    pick = torch.arange(p_count)
    win_m, win_it = out_m[pick, best].clone(), out_it[pick, best].clone()
    per_p = max(1, int(max_batch_elements) // max(1, 3 * dims["C"] * dims["h"] * dims["w"]))
    win_err = torch.empty(p_count, dtype=torch.float64)
    for lo in range(0, p_count, per_p):
        ps = torch.arange(lo, min(p_count, lo + per_p))
        tidx = target_index[ps]
        maps = moving[ps.to(device)]
        if method == "gauss_newton" and polish_iter > 0:
            loss = out_err[ps, best[ps]] * denom[tidx]
            m, loss_a, it, _ = _adam_level(
                maps,
                torch.arange(ps.numel(), device=device),
                full,
                tidx,
                win_m[ps].clone(),
                grid,
                max_iter=polish_iter,
                rtol=0.0,
                lr=adam_lr * 0.1,
            )
            better = loss_a < loss
            win_m[ps] = torch.where(better[:, None, None], m, win_m[ps])
            win_it[ps] += it
        # the reported error of the reported matrix, summed in float64
        e = _sample(maps, win_m[ps], grid, full.pts) - full.values[tidx.to(device)]
        win_err[ps] = _sum_sq(e).cpu() / denom[tidx]
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


# --------------------------------------------------------------------------- dense warp


@dataclass(frozen=True)
class DenseFit:
    """The best smooth dense warp per problem (on top of an affine one).

    Attributes:
        error: (P,) float64, relative error (the data term only).
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
    objective is the relative error plus ``smoothness`` × the mean squared difference of
    neighbouring control points (in feature pixels). The error reported is the data term
    of the best iterate (never above the start, so dense ≤ affine).

    **Convention**: ``matrix`` as in :func:`fit_affine` (``tgt_from_src``, centred image
    pixels, (x, y)); displacements in image pixels of the moving (source) frame; bilinear,
    zero padding, ``align_corners=False`` for the maps.

    Args:
        target: Γ(f), shape (S, C, h, w).
        moving: (P, C, h, w).
        target_index: (P,) long.
        matrix: the affine warps to start from, (P, 2, 3).
        grid: the lattice of the maps.
        mask: the region R, boolean (h, w).
        grid_size: control points per axis (≥ 2).
        smoothness: weight of the smoothness penalty.
        steps: Adam steps.
        lr: Adam's learning rate in feature pixels.
        max_batch_elements: bound on P × C × h × w per chunk.
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
    per = max(1, int(max_batch_elements) // max(1, dims["C"] * dims["h"] * dims["w"]))
    errors = torch.empty(p_count, dtype=torch.float64)
    rms = torch.zeros(p_count, dtype=torch.float64)
    controls = torch.zeros(p_count, 2, grid_size, grid_size, dtype=torch.float64)
    for lo in tqdm(range(0, p_count, per), desc="dense", disable=not progress, leave=False):
        sl = slice(lo, min(p_count, lo + per))
        maps = moving[sl]
        ti = target_index[sl].to(torch.int64)
        values = tv[ti]
        den = denom[ti]
        m = matrix[sl].to(torch.float64)
        theta_pts = None
        with torch.no_grad():
            base = (_sample(maps, m, grid, pts) - values).pow(2).sum((1, 2)).double() / den
        # the affine sampling position is fixed: precompute it once
        theta = to_theta(m, grid).to(maps.device)
        norm = pts.normalised.to(maps.device)
        theta_pts = (torch.einsum("nj,bij->bni", norm, theta[:, :, :2]) + theta[:, None, :, 2]).to(
            maps.dtype
        )
        lin = _grid_to_normalised(grid).to(maps.device, maps.dtype)
        ctrl = torch.zeros(
            maps.shape[0],
            2,
            grid_size,
            grid_size,
            dtype=maps.dtype,
            device=maps.device,
            requires_grad=True,
        )  # in feature pixels
        opt = torch.optim.Adam([ctrl], lr=lr)
        best = base.clone()
        best_ctrl = torch.zeros_like(ctrl, dtype=torch.float64)
        for _ in range(steps):
            opt.zero_grad()
            disp = _control_field(ctrl * stride, pts)  # image pixels
            src = theta_pts + disp @ lin.T
            x = F.grid_sample(
                maps, src[:, None], mode="bilinear", padding_mode="zeros", align_corners=False
            )[:, :, 0]
            data = (x - values).pow(2).sum((1, 2)).double() / den
            dx = ctrl[:, :, 1:, :] - ctrl[:, :, :-1, :]
            dy = ctrl[:, :, :, 1:] - ctrl[:, :, :, :-1]
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


# --------------------------------------------------------------------------- channel mixing


def _mixing_from_points(
    aligned: torch.Tensor, target: torch.Tensor, denom: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Leave-one-out ridge 1×1 maps: aligned (S, T, C, N), target (S, C, N) -> (S, T).

    Each sample is scored by a map fitted on all the *other* samples (never on
    itself). Leave-one-out rather than two folds: with few samples a fixed split
    can put all of one kind of image (say the grey photographs) on one side, and a
    map fitted there cannot speak for the rest.
    """
    s_count, t_count, c, n = aligned.shape
    out = torch.full((s_count, t_count), float("nan"), dtype=torch.float64)
    if s_count < 2:
        log.warning("mixing needs at least 2 samples for held-out scoring; got %d -> NaN", s_count)
        return out
    x = torch.cat([aligned.double(), aligned.new_ones(s_count, t_count, 1, n).double()], 2)
    y = target.double()
    xtx = torch.einsum("stin,stjn->stij", x, x)  # (S, T, C+1, C+1)
    xty = torch.einsum("stin,sjn->stij", x, y)  # (S, T, C+1, C)
    a_all, b_all = xtx.sum(0), xty.sum(0)
    eye = torch.eye(c + 1, dtype=torch.float64)
    eye[-1, -1] = 0.0  # the bias is not penalised
    for held in range(s_count):
        a = a_all - xtx[held]  # (T, C+1, C+1): every sample but the held-out one
        b = b_all - xty[held]
        scale = torch.diagonal(a[:, :-1, :-1], dim1=1, dim2=2).mean(-1).clamp_min(_TINY)
        mixing = torch.linalg.solve(a + ridge * scale[:, None, None] * eye, b)  # (T, C+1, C)
        pred = torch.einsum("tin,tij->tjn", x[held], mixing)
        num = (pred - y[held][None]).pow(2).sum((-2, -1))
        out[held] = num / denom[held]
    return out


def mixing_error(
    aligned: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ridge: float = 1e-3
) -> torch.Tensor:
    """Held-out error of a 1×1 channel map (C×C plus bias) per transform, fitted by ridge.

    Leave-one-out: each sample is scored by a map fitted on the pixels in R of all
    the other samples, so every sample gets a held-out score and none is scored by
    a map fitted on itself. The ridge penalty is
    ``ridge`` × the mean diagonal of XᵀX (scale-free), the bias unpenalised.

    Args:
        aligned: maps after the oracle warp, shape (S, T, C, h, w).
        target: Γ(f), shape (S, C, h, w).
        mask: the region R, boolean (h, w).
        ridge: relative ridge penalty.

    Returns:
        Relative errors (S, T) in float64; NaN (with a logged warning) if S < 2.
    """
    dims = check_shape(aligned, "S T C h w", "aligned")
    check_shape(target, f"{dims['S']} {dims['C']} {dims['h']} {dims['w']}", "target")
    pts = _points(Grid(dims["h"], dims["w"]), mask)
    tv = _at(target, pts)
    return _mixing_from_points(_at(aligned, pts), tv, _denominator(tv), ridge)


# --------------------------------------------------------------------------- the layer


@dataclass(frozen=True)
class LayerAlignment:
    """All measures and fitted warps of one layer.

    Attributes:
        errors: (S, T, 7) float64, relative errors in the order of ``measures``.
        measures: the names of the last axis of ``errors`` (:data:`MEASURES`).
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


def align_layer(
    target: torch.Tensor,
    moving: torch.Tensor,
    realigned: torch.Tensor,
    tgt_from_src: torch.Tensor,
    grid: Grid,
    *,
    region_radius: float,
    families: Sequence[str],
    starts_per_family: int = 4,
    include_oracle_start: bool = True,
    method: str = "gauss_newton",
    dense_grid: int = 6,
    dense_smoothness: float = 1e-3,
    dense_steps: int = 60,
    ridge: float = 1e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_batch_elements: int = 2**25,
) -> LayerAlignment:
    """Measure all seven errors (:data:`MEASURES`) of one layer per (sample, transform).

    **Convention**: ``tgt_from_src`` are the forward image transforms g in centred image
    pixels ((x, y)); the oracle warps the moving maps by ``invert(g)`` on ``grid``
    (bilinear, zero padding, ``align_corners=False``); R is a disk of ``region_radius``
    image pixels about the canvas centre in the target frame. Errors follow
    :data:`NORMALISATION`.

    Starts of the affine optimiser, in order: the oracle ``invert(g)`` (if
    ``include_oracle_start``), the 8 grid symmetries (:data:`SYMMETRY_NAMES`, identity
    first), and ``starts_per_family`` draws from each transform's family
    (:func:`family_starts`, seeded by ``seed``).

    Args:
        target: Γ(f), shape (S, C, h, w).
        moving: Γ(T_g f), shape (S, T, C, h, w).
        realigned: Γ(T_g⁻¹ T_g f), shape (S, T, C, h, w).
        tgt_from_src: the transforms g, (T, 2, 3).
        grid: the layer's lattice on the image plane.
        region_radius: radius of R in image pixels.
        families: the family of each transform, length T.
        starts_per_family: family draws per transform.
        include_oracle_start: start also from the oracle (off for known-answer tests).
        method: ``"gauss_newton"`` (default) or ``"adam"`` for the affine optimiser.
        dense_grid: control points per axis of the dense warp.
        dense_smoothness: weight of the dense warp's smoothness penalty.
        dense_steps: Adam steps of the dense warp (0 skips it: dense = affine).
        ridge: relative ridge penalty of the channel mixing.
        seed: seed of the family draws.
        device: where to compute.
        progress: show tqdm bars.
        max_batch_elements: memory bound per chunk of the optimisers (see
            :func:`fit_affine` and :func:`fit_dense`).

    Returns:
        A :class:`LayerAlignment`.

    Raises:
        ValueError: on non-finite inputs (naming which), mismatched shapes (with the
            shapes), an empty region R, a wrong number of families or an unknown family.
    """
    dims = check_shape(target, "S C h w", "target")
    spec = f"{dims['S']} T {dims['C']} {dims['h']} {dims['w']}"
    check_shape(moving, spec, "moving")
    check_shape(realigned, spec, "realigned")
    if realigned.shape != moving.shape:
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
    mask = region_mask(grid, region_radius)
    pts = _points(grid, mask)
    device = torch.device(device)
    s_count = dims["S"]
    timings: dict[str, float] = {}

    target = target.to(device, torch.float32)
    moving = moving.to(device, torch.float32)
    realigned = realigned.to(device, torch.float32)
    g = tgt_from_src.to(torch.float64).cpu()
    tv = _at(target, pts)  # (S, C, N)
    denom = _denominator(tv)
    if bool((denom <= _TINY).any()):
        log.warning("target features are constant over R for some samples; their errors are NaN")
    denom = torch.where(denom > _TINY, denom, torch.full_like(denom, float("nan")))

    def rel(x_pts: torch.Tensor) -> torch.Tensor:  # (S, T, C, N) -> (S, T), as fit_affine does
        e = (x_pts - tv[:, None]).expand(s_count, t_count, -1, -1)
        e = e.reshape(s_count * t_count, dims["C"], -1)
        return _sum_sq(e).view(s_count, t_count) / denom[:, None].cpu()

    errors = torch.full((s_count, t_count, len(MEASURES)), float("nan"), dtype=torch.float64)
    errors[..., MEASURES.index("none")] = rel(_at(moving, pts))
    errors[..., MEASURES.index("input")] = rel(_at(realigned, pts))
    mean = tv.mean(-1, keepdim=True).expand_as(tv)
    errors[..., MEASURES.index("constant")] = rel(mean[:, None])

    # oracle (through the optimiser's own sampling, so affine <= oracle exactly)
    flat_moving = moving.reshape(s_count * t_count, *moving.shape[2:])
    oracle_m = invert(g).repeat(s_count, 1, 1)
    oracle_pts = _sample(flat_moving, oracle_m, grid, pts).view(s_count, t_count, dims["C"], -1)
    errors[..., MEASURES.index("oracle")] = rel(oracle_pts)
    errors[..., MEASURES.index("mixing")] = _mixing_from_points(oracle_pts, tv, denom, ridge)

    # starts
    gen = torch.Generator().manual_seed(int(seed))
    names: list[str] = (["oracle"] if include_oracle_start else []) + list(SYMMETRY_NAMES)
    names += [f"family{k}" for k in range(starts_per_family)]
    image_size = (grid.image_height or dims["h"], grid.image_width or dims["w"])
    per_t = []
    for t in range(t_count):
        parts = [invert(g[t : t + 1])] if include_oracle_start else []
        parts += [grid_symmetries(), family_starts(families[t], starts_per_family, gen, image_size)]
        per_t.append(torch.cat(parts))
    starts = torch.stack(per_t)  # (T, K, 2, 3)
    problem_starts = starts.repeat(s_count, 1, 1, 1)
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
