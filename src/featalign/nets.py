"""Building blocks of the built-in networks (plugins/ import them).

Everything here works on images and feature maps of shape (N, C, H, W) with
pixel centres at integer indices, y down, x right (see ``featalign.geometry``).
Filtering uses zero padding placed symmetrically around odd kernels, and every
downsampling is centred (blur, then 2×2 average pooling on even sizes), so that a
layer of total stride s samples the image at ``offset + s·k`` with
``offset = (s − 1)/2`` and 90° rotations and flips of a square canvas map each
sampling grid onto itself.

:mod:`featalign.lattice` measures, rather than assumes, each layer's stride and offset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BlurPool2d",
    "CentredAvgPool2d",
    "GaussianBlur2d",
    "GaussianJet",
    "GroupPooledConv2d",
    "RadialConv2d",
    "ScaleChannelNet",
    "SeparableBank",
    "Tapped",
    "d4_copies",
    "gaussian_kernel1d",
    "random_disk_kernels",
    "rotate_kernel",
    "rotated_copies",
    "seeded",
]


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


class GaussianBlur2d(nn.Module):
    """Depthwise separable Gaussian blur with zero padding (same size out).

    Args:
        sigma: standard deviation in pixels (0: the identity).
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma, truncate=3.0) if sigma > 0 else torch.ones(1)
        self.radius = k.numel() // 2
        self.register_buffer("kernel", k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        r = self.radius
        if r == 0:
            return x
        # depthwise (groups = C): the same sums as filtering each channel on its own,
        # bit for bit, but 10-30x faster on the CPU than folding the channels into the
        # batch (one-channel convolutions are oneDNN's slow case)
        c = x.shape[1]
        k = self.kernel.to(x.dtype)
        y = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
        return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


class CentredAvgPool2d(nn.Module):
    """2×2 average pooling of an even-sized map (odd sizes would move its centre)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W), H and W even -> (N, C, H/2, W/2).

        Raises:
            ValueError: if H or W is odd (pooling would no longer be centred).
        """
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            raise ValueError(
                f"BlurPool2d needs even map sizes to stay centred, got {h}×{w}; use a canvas "
                "divisible by the network's total stride"
            )
        return F.avg_pool2d(x, 2)


class BlurPool2d(nn.Sequential):
    """Anti-aliased, centred downsampling by 2: Gaussian blur then 2×2 average pooling.

    Output pixel k covers input pixels 2k and 2k+1, so a map of stride s and
    offset (s−1)/2 becomes one of stride 2s and offset (2s−1)/2. The blur is an
    odd, symmetric kernel with zero padding, so the block commutes exactly with
    90° rotations and flips of an even-sized square map. The two steps are the
    sequence's two modules, so that the stage-by-stage dense evaluation
    (:func:`featalign.stitch.stitch_stages`) blurs once per phase of the input's
    stride, not of the output's.

    Args:
        sigma: blur standard deviation in input pixels (0 for no blur).

    Raises (on forward):
        ValueError: if H or W is odd (pooling would no longer be centred).
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__(GaussianBlur2d(sigma), CentredAvgPool2d())


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
