"""Building blocks for the built-in networks, and the measurement of sampling grids.

Everything here works on images and feature maps of shape (N, C, H, W) with
pixel centres at integer indices, y down, x right (see ``featalign.geometry``).
Filtering uses zero padding placed symmetrically around odd kernels, and every
downsampling is centred (blur, then 2×2 average pooling on even sizes), so that a
layer of total stride s samples the image at ``offset + s·k`` with
``offset = (s − 1)/2`` and 90° rotations and flips of a square canvas map each
sampling grid onto itself.

:func:`measure_grid` measures, rather than assumes, each layer's stride and offset.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BlurPool2d",
    "GaussianJet",
    "GridProbe",
    "GroupPooledConv2d",
    "RadialConv2d",
    "ScaleChannelNet",
    "SeparableBank",
    "Tapped",
    "d4_copies",
    "gaussian_kernel1d",
    "measure_grid",
    "probe_grid",
    "random_disk_kernels",
    "rotate_kernel",
    "rotated_copies",
    "seeded",
]

log = logging.getLogger(__name__)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global CPU generator seeded, then restore it.

    Modules created inside the block get a deterministic random init, and the
    caller's random stream is left untouched.

    Args:
        seed: the seed.

    Example:
        >>> with seeded(0):
        ...     a = torch.rand(2)
        >>> with seeded(0):
        ...     b = torch.rand(2)
        >>> bool(torch.equal(a, b))
        True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def gaussian_kernel1d(
    sigma: float,
    order: int = 0,
    radius: int | None = None,
    *,
    truncate: float = 4.0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return a sampled 1-D Gaussian or Gaussian derivative.

    The order-0 kernel is normalised to sum 1; derivatives are the analytic
    derivatives of that normalised kernel, so that they are exact odd/even
    functions of the tap position.

    Args:
        sigma: standard deviation in pixels (> 0).
        order: derivative order, 0, 1 or 2.
        radius: half-width in taps; default ``ceil(truncate·sigma)``.
        truncate: half-width in units of sigma when ``radius`` is None.
        dtype: output dtype.

    Returns:
        Kernel of shape (2·radius + 1,), tap i at position i − radius.

    Raises:
        ValueError: on a non-positive sigma or an order other than 0, 1, 2.

    Example:
        >>> k = gaussian_kernel1d(1.0)
        >>> k.shape, round(float(k.sum()), 6)
        (torch.Size([9]), 1.0)
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2, got {order}")
    r = math.ceil(truncate * sigma) if radius is None else int(radius)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    if order == 1:
        g = -x / sigma**2 * g
    elif order == 2:
        g = (x**2 / sigma**4 - 1.0 / sigma**2) * g
    return g.to(dtype)


def _pad_to(k: torch.Tensor, length: int) -> torch.Tensor:
    extra = (length - k.numel()) // 2
    return F.pad(k, (extra, extra))


class SeparableBank(nn.Module):
    """Depthwise filtering of every channel by a fixed bank of separable kernels.

    Kernel p is the outer product ``ky[p] ⊗ kx[p]`` (odd lengths, centred, zero
    padding 'same'); the output has C·P channels, channel ``c·P + p`` being input
    channel c filtered by kernel p.

    Args:
        in_channels: C.
        kernels: P pairs (ky, kx) of 1-D kernels of odd length.
    """

    def __init__(
        self, in_channels: int, kernels: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        super().__init__()
        if not kernels:
            raise ValueError("kernels must not be empty")
        length = max(max(ky.numel(), kx.numel()) for ky, kx in kernels)
        if any(k.numel() % 2 == 0 for pair in kernels for k in pair):
            raise ValueError("kernels must have odd length so that they stay centred")
        ky = torch.stack([_pad_to(k.float(), length) for k, _ in kernels])
        kx = torch.stack([_pad_to(k.float(), length) for _, k in kernels])
        p = len(kernels)
        self.in_channels = in_channels
        self.n_kernels = p
        self.radius = length // 2
        self.register_buffer("wx", kx.repeat(in_channels, 1).view(in_channels * p, 1, 1, length))
        self.register_buffer("wy", ky.repeat(in_channels, 1).view(in_channels * p, 1, length, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter.

        Args:
            x: (N, C, H, W).

        Returns:
            (N, C·P, H, W).
        """
        r = self.radius
        y = F.conv2d(x, self.wx, padding=(0, r), groups=self.in_channels)
        return F.conv2d(y, self.wy, padding=(r, 0), groups=self.in_channels * self.n_kernels)


class BlurPool2d(nn.Module):
    """Anti-aliased, centred downsampling by 2: Gaussian blur then 2×2 average pooling.

    Output pixel k covers input pixels 2k and 2k+1, so a map of stride s and
    offset (s−1)/2 becomes one of stride 2s and offset (2s−1)/2. The blur is an
    odd, symmetric kernel with zero padding, so the block commutes exactly with
    90° rotations and flips of an even-sized square map.

    Args:
        sigma: blur standard deviation in input pixels (0 for no blur).
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma, truncate=3.0) if sigma > 0 else torch.ones(1)
        self.radius = k.numel() // 2
        self.register_buffer("kernel", k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsample.

        Args:
            x: (N, C, H, W) with H and W even.

        Returns:
            (N, C, H/2, W/2).

        Raises:
            ValueError: if H or W is odd (pooling would no longer be centred).
        """
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(
                f"BlurPool2d needs even map sizes to stay centred, got {h}×{w}; use a canvas "
                "divisible by the network's total stride"
            )
        r = self.radius
        y = x.reshape(n * c, 1, h, w)
        if r > 0:
            k = self.kernel.to(x.dtype)
            y = F.conv2d(y, k.view(1, 1, 1, -1), padding=(0, r))
            y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(r, 0))
        return F.avg_pool2d(y, 2).reshape(n, c, h // 2, w // 2)


class Tapped(nn.Module):
    """Run named stages in order and return every stage's output.

    Args:
        stages: (name, module) pairs; each module maps the previous output to
            the next.

    Example:
        >>> net = Tapped([("a", nn.Identity()), ("b", nn.AvgPool2d(2))])
        >>> {k: tuple(v.shape) for k, v in net(torch.zeros(1, 1, 4, 4)).items()}
        {'a': (1, 1, 4, 4), 'b': (1, 1, 2, 2)}
    """

    def __init__(self, stages: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(dict(stages))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            x: (N, C, H, W).

        Returns:
            {stage name: output (N, C_l, H_l, W_l)}.
        """
        out: dict[str, torch.Tensor] = {}
        for name, stage in self.stages.items():
            x = stage(x)
            out[name] = x
        return out


def rotate_kernel(w: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate square kernels about their centre by resampling.

    Multiples of 90° use ``torch.rot90`` (exact); other angles bilinear
    interpolation with zero padding.

    **Convention**: angle in degrees, counter-clockwise as displayed (y down),
    about the centre pixel (K−1)/2; target→source sampling, ``align_corners=False``.

    Args:
        w: kernels of shape (..., K, K), K odd.
        angle: rotation angle in degrees.

    Returns:
        Rotated kernels of shape (..., K, K).
    """
    quarter = angle / 90.0
    if abs(quarter - round(quarter)) < 1e-12:
        return torch.rot90(w, round(quarter) % 4, dims=(-2, -1))
    k = w.shape[-1]
    flat = w.reshape(-1, 1, k, k)
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    # target->source map in normalised (x, y), y down: source = R(t)·target, which
    # turns the content counter-clockwise as displayed (the sense of torch.rot90)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=flat.dtype).expand(flat.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(w.shape)


def rotated_copies(w: torch.Tensor, n: int, *, reflections: bool = False) -> torch.Tensor:
    """Return n rotated copies of kernels (and of their mirror images).

    Copy ``q·n/4 + j`` is ``rot90(rotate_kernel(w, 360·j/n), q)``: only the first
    quadrant is resampled; the others are exact 90° rotations of it, so the set is
    closed under rot90 exactly. With ``reflections`` the mirror images of these n
    copies follow (copy n + i is ``flip(copy i)``), and the set is closed exactly
    under all 8 symmetries of the grid.

    Args:
        w: kernels of shape (..., K, K).
        n: number of orientations, a positive multiple of 4.
        reflections: also include the copies of ``flip(w)`` (last axis).

    Returns:
        (G, ..., K, K) with G = n, or 2n with reflections.

    Example:
        >>> rotated_copies(torch.zeros(2, 5, 5), 8, reflections=True).shape
        torch.Size([16, 2, 5, 5])

    Raises:
        ValueError: if n is not a positive multiple of 4.
    """
    if n <= 0 or n % 4:
        raise ValueError(f"n must be a positive multiple of 4, got {n}")
    first = [rotate_kernel(w, 360.0 * j / n) for j in range(n // 4)]
    copies = [torch.rot90(f, q, dims=(-2, -1)) for q in range(4) for f in first]
    if reflections:  # mirror the resampled copies themselves, so closure is exact
        copies += [torch.flip(c, dims=(-1,)) for c in copies]
    return torch.stack(copies)


def d4_copies(w: torch.Tensor) -> torch.Tensor:
    """Return the 8 images of kernels under the symmetries of the square grid.

    Args:
        w: kernels of shape (..., K, K).

    Returns:
        (8, ..., K, K): rot90 by 0–3 quarter turns, then the same of ``flip(w)``.

    Example:
        >>> d4_copies(torch.arange(9.0).view(3, 3)).shape
        torch.Size([8, 3, 3])
    """
    return rotated_copies(w, 4, reflections=True)


def random_disk_kernels(
    out_channels: int, in_channels: int, size: int, *, sigma: float = 1.0
) -> torch.Tensor:
    """Draw smooth random kernels supported on a disk (from torch's global generator).

    White noise is blurred with a Gaussian of ``sigma`` pixels and multiplied by a
    disk window of radius (size−1)/2 with a cos² edge, so that rotating a kernel
    by resampling neither clips its corners nor aliases much; each filter is
    scaled to squared norm 2 (He init: unit-variance inputs keep their energy
    through a ReLU).

    Args:
        out_channels: O.
        in_channels: I.
        size: K, odd.
        sigma: smoothing in pixels (0 for none).

    Returns:
        Kernels of shape (O, I, K, K).
    """
    if size % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    w = torch.randn(out_channels * in_channels, 1, size, size)
    if sigma > 0:
        g = gaussian_kernel1d(sigma, truncate=3.0)
        r = g.numel() // 2
        w = F.conv2d(
            F.conv2d(w, g.view(1, 1, 1, -1), padding=(0, r)), g.view(1, 1, -1, 1), padding=(r, 0)
        )
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    rad = torch.sqrt(yy**2 + xx**2) / max(c, 0.5)
    window = torch.where(
        rad <= 0.6, 1.0, torch.cos((rad - 0.6) / 0.4 * math.pi / 2).clamp(min=0) ** 2
    )
    window = torch.where(rad >= 1.0, 0.0, window)
    if size == 1:
        window = torch.ones(1, 1)
    w = w.view(out_channels, in_channels, size, size) * window
    energy = w.pow(2).sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return w * torch.sqrt(2.0 / energy)


class GroupPooledConv2d(nn.Module):
    """Convolution whose every filter is applied in G transformed copies, pooled.

    Output channel o is ``pool_g conv(x, copies[g, o]) + bias[o]`` with pooling
    ``max`` or ``mean`` over g; odd K with padding K//2 ('same', zero padding).
    If the copies are closed under a group of grid symmetries, the output
    commutes with that group acting on the image.

    Args:
        copies: filter copies of shape (G, O, I, K, K).
        bias: (O,) or None.
        pool: ``"max"`` or ``"mean"``.
    """

    def __init__(
        self, copies: torch.Tensor, bias: torch.Tensor | None = None, pool: str = "max"
    ) -> None:
        super().__init__()
        if copies.ndim != 5 or copies.shape[-1] != copies.shape[-2] or copies.shape[-1] % 2 == 0:
            raise ValueError(
                f"copies must be (G, O, I, K, K) with K odd, got {tuple(copies.shape)}"
            )
        if pool not in ("max", "mean"):
            raise ValueError(f"pool must be 'max' or 'mean', got {pool!r}")
        g, o, i, k, _ = copies.shape
        self.groups_size, self.out_channels, self.pool = g, o, pool
        self.register_buffer("weight", copies.transpose(0, 1).reshape(o * g, i, k, k).contiguous())
        self.register_buffer("bias", torch.zeros(o) if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: (N, I, H, W).

        Returns:
            (N, O, H, W).
        """
        k = self.weight.shape[-1]
        y = F.conv2d(x, self.weight, padding=k // 2)
        y = y.view(y.shape[0], self.out_channels, self.groups_size, *y.shape[-2:])
        y = y.amax(dim=2) if self.pool == "max" else y.mean(dim=2)
        return y + self.bias.view(1, -1, 1, 1)


class RadialConv2d(nn.Module):
    """Radially symmetric filters: a bank of isotropic Gaussians mixed by a 1×1 conv.

    Every effective filter is ``Σ_j a_j G_{σ_j}`` (plus a delta), a function of the
    radius only (Gaussians are separable and radial at once, sampled to
    ``ceil(truncate·σ)`` so that the square cut-off does not show), so the layer
    commutes with rotations up to sampling, and exactly with 90° rotations and flips.

    Args:
        in_channels: I.
        out_channels: O.
        sigmas: Gaussian widths in pixels of this layer's grid.
        delta: include the identity (σ → 0) in the bank.
        truncate: kernel half-width in units of σ.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        sigmas: Sequence[float],
        *,
        delta: bool = True,
        truncate: float = 4.0,
    ) -> None:
        super().__init__()
        kernels = [(torch.ones(1), torch.ones(1))] if delta else []
        for s in sigmas:
            g = gaussian_kernel1d(s, truncate=truncate)
            kernels.append((g, g))
        self.bank = SeparableBank(in_channels, kernels)
        self.mix = nn.Conv2d(in_channels * len(kernels), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: (N, I, H, W).

        Returns:
            (N, O, H, W).
        """
        return self.mix(self.bank(x))


class GaussianJet(nn.Module):
    """Scale-normalised Gaussian derivatives up to order 2 at one scale.

    Per input channel: σ^(a+b) ∂x^a ∂y^b (G_σ * f) for a + b ≤ 2, i.e. L, Lx, Ly,
    Lxx, Lxy, Lyy (6 responses), so that the jet of a zoomed image at the zoomed
    scale equals the zoomed jet (Lindeberg's scale covariance).

    Args:
        in_channels: C.
        sigma: the scale in pixels.
        truncate: kernel half-width in units of σ.
    """

    ORDERS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0))

    def __init__(
        self,
        in_channels: int,
        sigma: float,
        *,
        orders: Sequence[tuple[int, int]] = ORDERS,
        truncate: float = 4.0,
    ) -> None:
        super().__init__()
        r = math.ceil(truncate * sigma)
        g = [gaussian_kernel1d(sigma, order=o, radius=r) for o in range(3)]
        self.orders = tuple(orders)
        kernels = [(g[ny] * sigma**ny, g[nx] * sigma**nx) for ny, nx in self.orders]
        self.bank = SeparableBank(in_channels, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: (N, C, H, W).

        Returns:
            (N, 6·C, H, W).
        """
        return self.bank(x)


class ScaleChannelNet(nn.Module):
    """A Gaussian-derivative scale-channel network with max pooling over scales.

    Each layer maps, at every scale σ_i of the channel, the previous layer's
    features at σ_i through the scale-normalised 2-jet at σ_i, one 1×1 mix shared
    by all scales, and a ReLU. A layer's output is the maximum over scale
    channels, which is (approximately) invariant to zooms by powers of the scale
    ratio (Lindeberg, "Scale-covariant and scale-invariant Gaussian derivative
    networks", 2022). Stride 1.

    Args:
        in_channels: image channels.
        widths: output channels of each layer.
        sigmas: the scale channels, in pixels.
        names: layer labels (as many as widths).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        sigmas: Sequence[float],
        names: Sequence[str],
        *,
        orders: Sequence[tuple[int, int]] = GaussianJet.ORDERS,
    ) -> None:
        super().__init__()
        if len(widths) != len(names):
            raise ValueError("widths and names must have the same length")
        self.names = tuple(names)
        self.sigmas = tuple(float(s) for s in sigmas)
        self.jets = nn.ModuleList()
        self.mixes = nn.ModuleList()
        c = in_channels
        for width in widths:
            self.jets.append(nn.ModuleList(GaussianJet(c, s, orders=orders) for s in self.sigmas))
            self.mixes.append(nn.Conv2d(len(orders) * c, width, 1))
            c = width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            x: (N, C, H, W).

        Returns:
            {layer: (N, width, H, W)}, each the maximum over scale channels.
        """
        feats = [x] * len(self.sigmas)
        out: dict[str, torch.Tensor] = {}
        for name, jets, mix in zip(self.names, self.jets, self.mixes, strict=True):
            feats = [F.relu(mix(jet(f))) for jet, f in zip(jets, feats, strict=True)]
            out[name] = torch.stack(feats).amax(dim=0)
        return out


# --------------------------------------------------------------------------- grids


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
        >>> net = Tapped([("conv", nn.Conv2d(1, 2, 3, padding=1)), ("pool", nn.AvgPool2d(2))])
        >>> measure_grid(net, 1, size=16)
        {'conv': (1, 0.0, 0.0, 16, 16), 'pool': (2, 0.5, 0.5, 8, 8)}
    """
    return {
        layer: (p.stride, p.offset_y, p.offset_x, p.height, p.width)
        for layer, p in probe_grid(extractor, in_channels, size).items()
    }
