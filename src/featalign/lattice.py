"""The sampling lattice and receptive field of each layer, measured rather than assumed.

Feature pixel k of a layer of total stride s sits at image pixel ``offset + s·k``
(per axis). :func:`probe_grid` measures s exactly from how the output grows with
the input, and the offset and receptive field from the support of input gradients;
the feature stage records them with every layer (``stride``, ``offset_y``,
``offset_x``), pads the images by the largest receptive field, and ``featalign
plugins check`` tests covariance on the measured lattice.

**Convention**: pixel centres at integer indices; offsets and extents in
input-pixel units, (y, x) order (see :mod:`featalign.geometry`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["GridProbe", "measure_grid", "probe_grid"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridProbe:
    """The measured sampling grid and receptive field of one layer.

    Feature pixel (ky, kx) sits at image pixel (offset_y + stride·ky, offset_x +
    stride·kx); its receptive field spans rows ``centre + extent_y[0] …
    centre + extent_y[1]`` (input-pixel units), likewise for columns.

    Attributes:
        stride: total stride (same along y and x).
        offset_y: row of feature pixel (0, 0)'s centre, in input-pixel indices.
        offset_x: column of feature pixel (0, 0)'s centre.
        height: output height at the probed input size.
        width: output width at the probed input size.
        extent_y: (lo, hi) rows of the receptive field relative to its centre.
        extent_x: (lo, hi) columns of the receptive field relative to its centre.
        clipped: True when the receptive field still touched the canvas border at
            the largest probe size (offset and extent are then less reliable).
    """

    stride: int
    offset_y: float
    offset_x: float
    height: int
    width: int
    extent_y: tuple[float, float]
    extent_x: tuple[float, float]
    clipped: bool = False

    @property
    def radius(self) -> float:
        """The largest half-extent of the receptive field, in input pixels."""
        return max(-self.extent_y[0], self.extent_y[1], -self.extent_x[0], self.extent_x[1])


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _shapes(
    extractor: nn.Module, in_channels: int, size: int, device: torch.device, dtype: torch.dtype
) -> dict[str, tuple[int, int]]:
    with torch.no_grad():
        out = extractor(torch.zeros(1, in_channels, size, size, device=device, dtype=dtype))
    if not isinstance(out, Mapping):
        raise TypeError(f"the extractor must return a dict of layers, got {type(out).__name__}")
    shapes = {}
    for layer, t in out.items():
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"layer {layer!r} is not a 4-D tensor (N, C, H, W)")
        shapes[layer] = (int(t.shape[-2]), int(t.shape[-1]))
    return shapes


def _as_float64(
    extractor: nn.Module, in_channels: int, device: torch.device
) -> tuple[nn.Module, torch.dtype]:
    try:
        model = copy.deepcopy(extractor).to(torch.float64)
        _shapes(model, in_channels, 16, device, torch.float64)
        return model, torch.float64
    except Exception:  # noqa: BLE001 -- modules that cannot run in float64 are measured in float32
        log.info("measuring the grid in float32: the extractor does not run in float64")
        return extractor, torch.float32


def _measure_strides(
    extractor: nn.Module,
    in_channels: int,
    size: int,
    base: Mapping[str, tuple[int, int]],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, int]:
    """Find each layer's stride s from output growth: h(n + m·s) = h(n) + m exactly.

    A rough estimate from a second size narrows the candidates c; a candidate c ≠ s
    can show growth m at n + m·c only if s > m·|c − s|, so m = 8 settles strides up
    to 8 and m = 16, 32 break the remaining ties.
    """
    cache: dict[int, dict[str, tuple[int, int]] | None] = {}

    def shapes(n: int) -> dict[str, tuple[int, int]] | None:
        if n not in cache:
            try:
                cache[n] = _shapes(extractor, in_channels, n, device, dtype)
            except (RuntimeError, ValueError):  # sizes a network rejects count as "no"
                cache[n] = None
        return cache[n]

    def grows(layer: str, c: int, m: int) -> bool:
        h, w = base[layer]
        got = shapes(size + m * c)
        return got is not None and got[layer] == (h + m, w + m)

    strides: dict[str, int] = {}
    for layer, (h, w) in base.items():
        if h <= 0 or w <= 0:
            raise ValueError(f"layer {layer!r} has an empty output at input size {size}")
        c0 = max(1, -(-size // h))
        far = shapes(size + 8 * c0)
        dh = far[layer][0] - h if far is not None else 0
        if dh > 0:
            est = 8 * c0 / dh
            lo, hi = max(1, math.floor(est * 8 / 9) - 1), math.ceil(est * 8 / 7) + 1
            cands = sorted(range(lo, hi + 1), key=lambda c: (abs(c - est), c))
        else:
            est = float(c0)
            cands = sorted({max(1, size // h), c0})
        passing: list[int] = []
        for c in cands:
            if grows(layer, c, 8):
                passing.append(c)
                if c < 8:  # no other candidate can pass when s ≤ 8: done
                    break
        for m in (16, 32):
            if len(passing) <= 1:
                break
            passing = [c for c in passing if grows(layer, c, m)] or passing[:1]
        if not passing:
            raise ValueError(
                f"layer {layer!r}: cannot measure an integer stride equal along y and x "
                f"(output {h}×{w} at input {size}×{size})"
            )
        if len(passing) > 1:
            log.warning(
                "layer %s: stride ambiguous among %s; taking %d", layer, passing, passing[0]
            )
        strides[layer] = passing[0]
    return strides


def probe_grid(
    extractor: nn.Module,
    in_channels: int,
    size: int = 64,
    *,
    n_inputs: int = 3,
    seed: int = 0,
    max_size: int = 512,
) -> dict[str, GridProbe]:
    """Measure each layer's stride, grid offset and receptive field.

    Stride: for input sizes n and n + 8·s the output grows by exactly 8 pixels
    (this holds for padded and unpadded layers alike), so s is found exactly.
    Offset: the receptive-field centre of an interior output unit k is the
    centre of the bounding box of the support of the input gradient (union over
    ``n_inputs`` random inputs and all channels, in float64), and the offset is
    centre − s·k. The probe canvas grows (by multiples of every stride) until
    the support stays clear of the border, up to ``max_size``.

    **Convention**: pixel centres at integer indices; offsets and extents in
    input-pixel units, (y, x) order.

    Args:
        extractor: module mapping (N, in_channels, H, W) to {layer: (N, C, H_l, W_l)}.
        in_channels: image channels.
        size: input size n (square) at which heights and widths are reported.
        n_inputs: random inputs whose gradient supports are united.
        seed: seed of the random inputs.
        max_size: the largest probe canvas.

    Returns:
        {layer: GridProbe}, in the extractor's layer order.

    Raises:
        ValueError: if a stride is not an integer, differs between y and x, or a
            layer does not depend on its input.
    """
    device = _device_of(extractor)
    param = next(iter(extractor.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    base = _shapes(extractor, in_channels, size, device, dtype)

    strides = _measure_strides(extractor, in_channels, size, base, device, dtype)

    model, ftype = _as_float64(extractor, in_channels, device)
    lcm = math.lcm(*strides.values())
    gen = torch.Generator().manual_seed(seed)
    pending = list(base)
    probes: dict[str, GridProbe] = {}
    n = size
    while pending:
        inputs = [
            torch.randn(1, in_channels, n, n, generator=gen, dtype=torch.float64).to(device, ftype)
            for _ in range(n_inputs)
        ]
        support = {layer: torch.zeros(n, n, dtype=torch.bool) for layer in pending}
        centre_unit: dict[str, tuple[int, int]] = {}
        for x in inputs:
            x = x.requires_grad_(True)
            with torch.enable_grad():
                out = model(x)
                for layer in pending:
                    f = out[layer]
                    ky, kx = f.shape[-2] // 2, f.shape[-1] // 2
                    centre_unit[layer] = (ky, kx)
                    cw = torch.rand(f.shape[1], generator=gen, dtype=torch.float64) + 0.5
                    obj = (f[0, :, ky, kx] * cw.to(f.device, f.dtype)).sum()
                    if not obj.requires_grad:
                        continue
                    (grad,) = torch.autograd.grad(obj, x, retain_graph=True, allow_unused=True)
                    if grad is not None:
                        support[layer] |= (grad[0].abs().sum(0) != 0).cpu()
        still: list[str] = []
        grow = n + lcm * max(1, -(-n // lcm))
        for layer in pending:
            mask = support[layer]
            rows = torch.nonzero(mask.any(1)).flatten()
            cols = torch.nonzero(mask.any(0)).flatten()
            if rows.numel() == 0:
                raise ValueError(f"layer {layer!r}: the output does not depend on the input")
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
            touches = r0 == 0 or c0 == 0 or r1 == n - 1 or c1 == n - 1
            if touches and grow <= max_size:
                still.append(layer)
                continue
            if touches:
                log.warning(
                    "receptive field of %s exceeds a %d px canvas; offset may be off", layer, n
                )
            s = strides[layer]
            ky, kx = centre_unit[layer]
            cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
            h, w = base[layer]
            probes[layer] = GridProbe(
                stride=s,
                offset_y=cy - s * ky,
                offset_x=cx - s * kx,
                height=h,
                width=w,
                extent_y=(r0 - cy, r1 - cy),
                extent_x=(c0 - cx, c1 - cx),
                clipped=touches,
            )
        pending = still
        n = grow
    return {layer: probes[layer] for layer in base}


def measure_grid(
    extractor: nn.Module, in_channels: int, size: int = 64
) -> dict[str, tuple[int, float, float, int, int]]:
    """Measure each layer's stride and the offset of its sampling grid.

    Feature pixel k of a layer sits at image pixel ``offset + stride·k`` (per
    axis). See :func:`probe_grid` for how it is measured.

    **Convention**: pixel centres at integer indices; offsets in input-pixel
    units; (y, x) order.

    Args:
        extractor: module mapping (N, in_channels, H, W) to {layer: (N, C, H_l, W_l)}.
        in_channels: image channels.
        size: square input size at which heights and widths are reported.

    Returns:
        {layer: (stride, offset_y, offset_x, height, width)}.

    Example:
        >>> from featalign.nets import Tapped
        >>> net = Tapped([("conv", nn.Conv2d(1, 2, 3, padding=1)), ("pool", nn.AvgPool2d(2))])
        >>> measure_grid(net, 1, size=16)
        {'conv': (1, 0.0, 0.0, 16, 16), 'pool': (2, 0.5, 0.5, 8, 8)}
    """
    return {
        layer: (p.stride, p.offset_y, p.offset_x, p.height, p.width)
        for layer, p in probe_grid(extractor, in_channels, size).items()
    }
