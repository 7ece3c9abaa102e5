"""The STN study's classifier and the placements of its spatial transformer.

The classifier, in the spirit of Jaderberg et al.'s and Finnveden et al.'s MNIST
networks: ``len(channels)`` conv layers (``kernel``×``kernel``, 'same' padding, then
2×2 max-pooling and ReLU; layer k has stride 2^k), then one linear layer on the
flattened last maps. The spatial transformer is affine: a localisation network
(``len(localisation_channels)`` conv layers like the classifier's, an adaptive
average pool to 3×3, a hidden linear layer of 32 units, and a linear layer to the six
warp parameters, initialised to zero) predicts ``[A | b] = [I + Δ_A | (size/2) Δ_b]``,
the identity at initialisation.

**Convention**: the predicted warp is ``tgt_from_src`` in centred *image* pixels
(:mod:`featalign.geometry`), whatever it is applied to: the input (``C0``, ``SLk``)
or the layer-k maps, whose lattice is ``Grid.centred(size, size, 2**k)`` (``Ck``). So
the warps of all placements are comparable, and one that undoes an applied
transformation ``T`` is ``T⁻¹``.
"""

from __future__ import annotations

import torch
from torch import nn

from featalign import geometry
from featalign.stn.config import parse_variant

__all__ = ["Localisation", "StnClassifier", "conv_block"]

#: Units of the localisation network's hidden layer.
HIDDEN = 32

#: Side of the localisation network's pooled maps (adaptive average pooling).
POOL = 3


def conv_block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Conv (``kernel``, 'same' padding) → 2×2 max-pool → ReLU: stride 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.MaxPool2d(2), nn.ReLU()
    )


class Localisation(nn.Module):
    """Maps (B, C, H, W) to affine warps (B, 2, 3), the identity at initialisation.

    Args:
        in_channels: channels of what it reads (1 for the image).
        channels: its conv layers' widths.
        kernel: their kernel size.
        size: the canvas side, pixels (the translation's scale).
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], kernel: int, size: int):
        super().__init__()
        widths = (in_channels, *channels)
        self.features = nn.Sequential(
            *(conv_block(a, b, kernel) for a, b in zip(widths, widths[1:])),
            nn.AdaptiveAvgPool2d(POOL),
            nn.Flatten(),
            nn.Linear(widths[-1] * POOL**2, HIDDEN),
            nn.ReLU(),
        )
        self.out = nn.Linear(HIDDEN, 6)
        self.half = size / 2
        self.reset()

    def reset(self) -> None:
        """Back to the identity warp: the output layer's weights and bias to zero."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.out(self.features(x)).view(-1, 2, 3)
        scale = delta.new_tensor([1.0, 1.0, self.half])
        return geometry.identity(len(x), dtype=delta.dtype).to(delta.device) + delta * scale


class StnClassifier(nn.Module):
    """The classifier with a spatial transformer at one placement.

    Args:
        variant: ``none``, ``C0``..``C{depth}`` or ``SL1``..``SL{depth}``
            (:mod:`featalign.stn.config`).
        size: canvas side, pixels (a multiple of 2^depth).
        channels: the classifier's conv widths; depth = their number.
        localisation_channels: the localisation network's conv widths.
        kernel: conv kernel size (odd).
        classes: output classes.

    ``forward(x)`` takes images (B, 1, size, size) and returns ``(logits (B, classes),
    warp (B, 2, 3))``, the warp the transformer applied (the identity for ``none``).

    Example:
        >>> net = StnClassifier("C1", 16, (4, 4), (4,), 3)
        >>> logits, warp = net(torch.zeros(2, 1, 16, 16))
        >>> tuple(logits.shape), torch.equal(warp, geometry.identity(2))
        ((2, 10), True)
    """

    def __init__(
        self,
        variant: str,
        size: int,
        channels: tuple[int, ...] = (8, 16),
        localisation_channels: tuple[int, ...] = (8, 8),
        kernel: int = 5,
        classes: int = 10,
    ):
        super().__init__()
        self.kind, self.k = parse_variant(variant)
        if self.k > len(channels) or (self.kind == "SL" and self.k == 0):
            raise ValueError(f"placement {variant!r} does not fit {len(channels)} layers")
        self.variant, self.size = variant, size
        widths = (1, *channels)
        self.layers = nn.ModuleList(conv_block(a, b, kernel) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(channels[-1] * (size // 2 ** len(channels)) ** 2, classes)
        self.localisation = None
        if self.kind != "none":
            self.localisation = Localisation(
                widths[self.k], tuple(localisation_channels), kernel, size
            )

    def _layers(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.layers[start:stop]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        geometry.check_shape(x, "B 1 H W", "images")
        depth = len(self.layers)
        if self.localisation is None:
            warp = geometry.identity(len(x), dtype=x.dtype).to(x.device)
        elif self.kind == "C":
            h = self._layers(x, 0, self.k)
            warp = self.localisation(h)
            grid = geometry.Grid.centred(self.size, self.size, 2**self.k)
            x = geometry.warp(h, warp, grid=grid)
            return self.head(self._layers(x, self.k, depth).flatten(1)), warp
        else:  # SL: the classifier's own layer-k features locate, the input is warped
            warp = self.localisation(self._layers(x, 0, self.k))
            x = geometry.warp(x, warp)
        return self.head(self._layers(x, 0, depth).flatten(1)), warp
