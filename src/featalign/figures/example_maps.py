"""The example panel's computation: the feature maps and errors of one example (no drawing).

:func:`example_panels` warps one layer's features the ways the alignment stage does
(oracle, fitted affine) and measures each panel's relative error against Γ(f) over
the region R; :func:`default_transform` picks the transform an example shows.
:mod:`featalign.figures.example_panel` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from featalign import geometry
from featalign.align.measures import region_mask, relative_error
from featalign.features import layer_grid
from featalign.summary.families import claim_family

__all__ = ["ExamplePanels", "default_transform", "example_panels"]


@dataclass(frozen=True)
class ExamplePanels:
    """The feature maps of one example (one network, layer, sample and transform).

    Attributes:
        channel: the channel shown.
        maps: one (h, w) float64 array per panel of that channel: ``original`` Γ(f),
            ``transformed`` Γ(T_g f), ``oracle`` T_g⁻¹ Γ(T_g f), ``affine`` (the fitted
            warp of Γ(T_g f); absent without an affine matrix) and ``input``
            Γ(T_g⁻¹ T_g f).
        errors: the relative error of each panel against Γ(f) over all channels and
            the region R (:func:`featalign.align.measures.relative_error`), keyed by measure:
            ``none``, ``oracle``, ``affine`` (if present), ``input``.
        region: the region R on the layer's lattice, boolean (h, w).
    """

    channel: int
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    region: np.ndarray | None = None


def example_panels(
    features: xr.Dataset,
    matrix: np.ndarray | torch.Tensor,
    *,
    sample: int = 0,
    transform: int = 0,
    affine_matrix: np.ndarray | torch.Tensor | None = None,
    channel: int | None = None,
    region_radius: float | None = None,
) -> ExamplePanels:
    """Compute the feature panels of one example (no drawing).

    **Convention**: ``matrix`` is the forward image transform g (``tgt_from_src``,
    centred image pixels, (x, y)); the oracle panel is
    ``geometry.warp(Γ(T_g f), geometry.invert(g), grid=layer_grid(features))``, and the
    affine panel warps Γ(T_g f) by ``affine_matrix`` on the same grid (bilinear, zero
    padding, ``align_corners=False``).

    Args:
        features: one layer group of a features file (``original``, ``transformed``,
            ``realigned`` and the grid attributes of :func:`featalign.features.layer_grid`).
        matrix: g, shape (2, 3).
        sample: position of the sample.
        transform: position of the transform.
        affine_matrix: the fitted warp for this (sample, transform), shape (2, 3), or None.
        channel: the channel to show; default: the one of Γ(f) with the most energy
            about its mean over R (a constant bias would otherwise win).
        region_radius: radius of R in image pixels for the errors; default: the disk
            inscribed in the canvas, ``min(image_height, image_width) / 2``.

    Returns:
        An :class:`ExamplePanels`.

    Raises:
        ValueError: if the channel is out of range.
    """
    grid = layer_grid(features)
    original = torch.as_tensor(np.asarray(features["original"].isel(sample=sample).values))
    moving = torch.as_tensor(
        np.asarray(features["transformed"].isel(sample=sample, transform=transform).values)
    )
    realigned = torch.as_tensor(
        np.asarray(features["realigned"].isel(sample=sample, transform=transform).values)
    )
    n_channels = original.shape[0]
    if region_radius is None:
        region_radius = min(grid.image_height or grid.height, grid.image_width or grid.width) / 2
    mask = region_mask(grid, region_radius)
    if channel is None:
        inside = original[:, mask].double()
        channel = int((inside - inside.mean(-1, keepdim=True)).pow(2).sum(-1).argmax())
    if not 0 <= channel < n_channels:
        raise ValueError(f"channel {channel} is out of range for {n_channels} channels")
    g = torch.as_tensor(np.asarray(matrix), dtype=torch.float64).reshape(2, 3)
    oracle = geometry.warp(moving[None], geometry.invert(g), grid=grid)[0]
    candidates = {"transformed": moving, "oracle": oracle, "input": realigned}
    if affine_matrix is not None:
        a = torch.as_tensor(np.asarray(affine_matrix), dtype=torch.float64).reshape(2, 3)
        candidates["affine"] = geometry.warp(moving[None], a, grid=grid)[0]
    measure = {"transformed": "none", "oracle": "oracle", "affine": "affine", "input": "input"}
    errors = {measure[k]: float(relative_error(v, original, mask)) for k, v in candidates.items()}
    maps = {"original": original[channel].double().numpy()}
    for k in ("transformed", "oracle", "affine", "input"):
        if k in candidates:
            maps[k] = candidates[k][channel].double().numpy()
    return ExamplePanels(channel=channel, maps=maps, errors=errors, region=mask.numpy())


def default_transform(families: Sequence[str], magnitudes: Sequence[float]) -> int:
    """The transform shown by default: a rotation near 30°, else a shear, else any non-symmetry.

    Translations, exact symmetries of the pixel grid (multiples of 90°, flips) and
    identities are skipped, since the theory says nothing interesting about them
    (they align).

    Example:
        >>> default_transform(["translation", "rotation", "rotation", "shear"], [2, 90, 45, 0.2])
        2
        >>> default_transform(["translation", "scaling"], [1, 1.25])
        1
    """
    identity = {
        "rotation": 0.0,
        "scaling": 1.0,
        "anisotropic_scaling": 1.0,
        "shear": 0.0,
        "affine": 0.0,
        "translation": 0.0,
    }
    candidates = [
        t
        for t, (f, m) in enumerate(zip(families, magnitudes))
        if f != "translation"
        and claim_family(f, float(m), 1) == f
        and not math.isclose(float(m), identity.get(f, math.nan))
    ]
    if not candidates:
        return 0
    rotations = [t for t in candidates if families[t] == "rotation"]
    if rotations:
        return min(rotations, key=lambda t: abs(abs(float(magnitudes[t])) - 30.0))
    shears = [t for t in candidates if families[t] == "shear"]
    if shears:
        return max(shears, key=lambda t: abs(float(magnitudes[t])))
    return candidates[0]
