"""Starting points of the affine optimiser: the 8 grid symmetries and draws from a family.

Reflections have determinant −1, so no continuous path from the identity reaches
them: the symmetries of the pixel grid are started from explicitly, and draws from
each transform's family cover the rest of its range.
"""

from __future__ import annotations

import math

import torch

from featalign.geometry import (
    FAMILIES,
    anisotropic_scaling,
    compose,
    reflection,
    rotation,
    scaling,
    shear,
    translation,
)
from featalign.geometry import affine as random_affine

__all__ = ["SYMMETRY_NAMES", "family_starts", "grid_symmetries"]

#: Names of the 8 symmetries of the pixel grid, in the order of :func:`grid_symmetries`.
#: ``flip_y`` mirrors y (up-down, ``torch.flip`` over dim −2), ``flip_x`` mirrors x
#: (left-right, dim −1), as in :mod:`featalign.check`.
SYMMETRY_NAMES: tuple[str, ...] = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_y",
    "flip_x",
    "transpose",
    "antitranspose",
)


def grid_symmetries(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 8 symmetries of the square pixel grid about the canvas centre.

    In the order of :data:`SYMMETRY_NAMES`: identity, rotations by 90/180/270°, and the
    reflections about the x axis (``flip_y``, up-down), the y axis (``flip_x``,
    left-right), and the two diagonals.

    Returns:
        Matrices (8, 2, 3) in centred pixels, exact integers.

    Example:
        >>> m = grid_symmetries()
        >>> m[SYMMETRY_NAMES.index("flip_y"), :, :2].tolist()
        [[1.0, 0.0], [0.0, -1.0]]
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
