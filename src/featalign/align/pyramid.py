"""The blur pyramid of the affine optimiser: Gaussian blur in feature pixels, and its σs.

Coarse-to-fine blurring widens the basin of the optimiser: a warp far from the
answer still sees the content it must move towards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__: list[str] = []


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


def _pyramid_sigmas(h: int, w: int, sigmas: Sequence[float] | None) -> list[float]:
    """σs coarse to fine, in feature pixels: min(h, w) / 8 halved down to 1, then 0.

    64×64 maps get 8, 4, 2, 1, 0; 32×32 get 4, 2, 1, 0; 16×16 get 2, 1, 0; 8×8 get 1, 0;
    smaller maps get 0 alone. (A prototype's fixed 4, 2, 1, 0 left 3 of 256 planted warps of
    64×64 maps unrecovered from every non-oracle start; the extra σ = 8 level fixed them.)

    Example:
        >>> _pyramid_sigmas(64, 64, None), _pyramid_sigmas(8, 8, [2.0])
        ([8.0, 4.0, 2.0, 1.0, 0.0], [2.0, 0.0])
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
