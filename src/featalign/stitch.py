"""Shift-and-stitch: a strided layer evaluated densely, on every image pixel.

The theorem is about *translation-covariant* feature extractors. A layer of
stride s is covariant only to shifts by multiples of s: a shift by one pixel
moves its lattice off its own sampling points (aliasing). Every rotation,
scaling or shear moves content by sub-stride amounts somewhere, so at a strided
layer the best warp's excess mixes the theorem's effect with aliasing.

Evaluating the layer *densely* removes the aliasing without changing the
network: run it on the s² copies of the (zero-padded) image shifted by
(dy, dx) ∈ {0, …, s−1}², and interleave the outputs. Output pixel k of phase
(dy, dx) sits at image position offset + s·k + d of the unshifted image, so the
dense map

    D[..., s·k + dy, s·l + dx] = Γ(f shifted by (−dy, −dx))[..., k, l]

has stride 1 and the layer's measured offset, holds the as-built map as its
phase (0, 0) (``D[..., ::s, ::s]``), and commutes with every integer shift of
the input (up to the border). This is exact for any network (no assumption
about its layers); the cost is s² forward passes and s² more pixels.

The shift is applied through the zero padding that the feature stage already
uses against border effects (:func:`phase_padding`): padding ``pad − d`` on the
leading side and ``pad + d`` on the trailing one moves the content by −d and
keeps the padded size, so the same crop applies to every phase.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["dense_phases", "phase_padding", "shift_and_stitch"]


def phase_padding(pad: int, dy: int, dx: int) -> tuple[int, int, int, int]:
    """``torch.nn.functional.pad`` widths that pad by ``pad`` and move the content by (−dy, −dx).

    Returns (left, right, top, bottom); the padded size is that of the symmetric
    padding, so every phase crops the same way. A negative width crops (only
    zero border is lost: the content is windowed).

    Example:
        >>> phase_padding(8, 1, 3)
        (5, 11, 7, 9)
    """
    return (pad - dx, pad + dx, pad - dy, pad + dy)


def dense_phases(strides: Mapping[str, int]) -> list[tuple[int, int]]:
    """The phases (dy, dx) needed to evaluate every strided layer densely.

    Layers of stride 1 need none (they are dense already); a layer of stride s
    needs {0, …, s−1}², so the union is {0, …, max s − 1}² (phase (0, 0), the
    as-built evaluation, included).

    Example:
        >>> dense_phases({"a": 1, "b": 2})
        [(0, 0), (0, 1), (1, 0), (1, 1)]
        >>> dense_phases({"a": 1})
        []
    """
    top = max((int(s) for s in strides.values()), default=1)
    if top <= 1:
        return []
    return [(dy, dx) for dy in range(top) for dx in range(top)]


def shift_and_stitch(
    forward: Callable[[tuple[int, int]], Mapping[str, np.ndarray]],
    strides: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """Dense maps of every strided layer from one forward pass per phase.

    Args:
        forward: given a phase (dy, dx), runs the network on the images padded
            by :func:`phase_padding` for it and returns each layer's map cropped
            to the canvas's lattice, (..., h, w).
        strides: layer -> stride; layers of stride 1 are skipped.

    Returns:
        layer -> dense map (..., s·h, s·w) with ``dense[..., s·k + dy, s·l + dx]``
        the phase-(dy, dx) map's pixel (k, l), for the layers of stride > 1. The
        phase maps are written into it as they come, so a layer's peak memory is
        its dense map, not s² copies.

    Example:
        >>> fwd = lambda d: {"a": np.full((1, 1), 10 * d[0] + d[1])}
        >>> shift_and_stitch(fwd, {"a": 2})["a"].tolist()
        [[0, 1], [10, 11]]
    """
    strided = {layer: int(s) for layer, s in strides.items() if int(s) > 1}
    dense: dict[str, np.ndarray] = {}
    for dy, dx in dense_phases(strided):
        maps = forward((dy, dx))
        for layer, s in strided.items():
            if dy >= s or dx >= s:
                continue
            m = maps[layer]
            if layer not in dense:
                dense[layer] = np.empty((*m.shape[:-2], s * m.shape[-2], s * m.shape[-1]),
                                        m.dtype)
            dense[layer][..., dy::s, dx::s] = m
    return dense
