"""Shift-and-stitch: dense evaluation of strided layers (featalign.stitch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featalign.stitch import (
    dense_phases,
    phase_padding,
    shift_and_stitch,
    stage_maps,
    stage_reach,
    stages_agree,
    stitch_stages,
)

SIZE = 32
PAD = 8  # a multiple of every stride below, wider than the receptive fields


def strided_net(seed: int = 0) -> nn.Module:
    """conv 3×3 → avg-pool 2 → conv 3×3 → avg-pool 2: layers of stride 1, 2, 4."""
    torch.manual_seed(seed)
    convs = nn.ModuleList([nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)])

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = convs

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            a = torch.relu(self.convs[0](x))
            b = torch.relu(self.convs[1](F.avg_pool2d(a, 2)))
            return {"s1": a, "s2": b, "s4": F.avg_pool2d(b, 2)}

    return Net().double().eval()


STRIDES = {"s1": 1, "s2": 2, "s4": 4}


def windowed_images(n: int, seed: int = 1) -> torch.Tensor:
    """Smooth random images on a zero background (content well inside the canvas)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, SIZE, SIZE, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(SIZE) - (SIZE - 1) / 2,
                            torch.arange(SIZE) - (SIZE - 1) / 2, indexing="ij")
    return x * (torch.hypot(yy, xx) < SIZE / 4).double()


def forward_phase(net: nn.Module, images: torch.Tensor, phase: tuple[int, int]) -> dict:
    """The feature stage's forward for one phase: pad, run, crop to the canvas lattice."""
    with torch.no_grad():
        out = net(F.pad(images, phase_padding(PAD, *phase)))
    crops = {}
    for layer, s in STRIDES.items():
        k0, n = PAD // s, SIZE // s
        crops[layer] = out[layer][..., k0 : k0 + n, k0 : k0 + n].numpy()
    return crops


def dense_maps(net: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    return shift_and_stitch(lambda p: forward_phase(net, images, p), STRIDES)


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content by (dy, dx) pixels (zeros come in; the content is windowed)."""
    return torch.roll(images, shifts=(dy, dx), dims=(-2, -1))


def test_phases_cover_the_largest_stride() -> None:
    assert dense_phases(STRIDES) == [(dy, dx) for dy in range(4) for dx in range(4)]
    assert dense_phases({"a": 1, "b": 1}) == []


def test_phase_zero_is_the_as_built_map() -> None:
    net, x = strided_net(), windowed_images(3)
    built = forward_phase(net, x, (0, 0))
    dense = dense_maps(net, x)
    assert set(dense) == {"s2", "s4"}  # stride 1 is dense already
    for layer in dense:
        s = STRIDES[layer]
        assert dense[layer].shape == (3, 4, SIZE, SIZE)
        np.testing.assert_array_equal(dense[layer][..., ::s, ::s], built[layer])


@pytest.mark.parametrize("dy, dx", [(1, 0), (0, 1), (1, 3), (-2, 1)])
def test_dense_maps_commute_with_every_one_pixel_shift(dy: int, dx: int) -> None:
    """The premise of the theorem: dense maps are covariant to every integer shift;
    the as-built strided maps are not (aliasing), which is what dense evaluation removes."""
    net, x = strided_net(), windowed_images(2)
    dense, moved = dense_maps(net, x), dense_maps(net, shift(x, dy, dx))
    for layer in ("s2", "s4"):
        want = np.roll(dense[layer], (dy, dx), axis=(-2, -1))
        np.testing.assert_allclose(moved[layer], want, rtol=0, atol=1e-12)
    # the as-built stride-4 map of the shifted image is not a shift of the map
    built, built_moved = forward_phase(net, x, (0, 0)), forward_phase(net, shift(x, dy, dx), (0, 0))
    diff = np.abs(built_moved["s4"] - built["s4"]).max()
    assert diff > 1e-3 * np.abs(built["s4"]).max()


def strided_chain(seed: int = 0) -> list[tuple[str, nn.Module]]:
    """The same layers as :func:`strided_net`, as a chain of stages (featalign.nets.Tapped)."""
    torch.manual_seed(seed)
    return [
        ("s1", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()).double()),
        ("s2", nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).double()),
        ("s4", nn.AvgPool2d(2)),
    ]


class _Chain(nn.Module):
    def __init__(self, chain: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.chain = nn.ModuleList(m for _, m in chain)
        self.names = [n for n, _ in chain]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, stage in zip(self.names, self.chain):
            x = out[name] = stage(x)
        return out


def _crops() -> dict[str, tuple[int, int, int]]:
    return {layer: (PAD // s, SIZE // s, SIZE // s) for layer, s in STRIDES.items()}


def test_stage_by_stage_equals_plain_shift_and_stitch() -> None:
    """Known answer: each stage run once per phase of its own stride gives the plain
    method's dense maps (s² passes of the whole network) to rounding."""
    chain, x = strided_chain(), windowed_images(3)
    plain = dense_maps(_Chain(chain), x)
    with torch.no_grad():
        staged = stitch_stages(chain, x, STRIDES, _crops(), pad=PAD)
    assert set(staged) == {"s2", "s4"}
    for layer in staged:
        assert staged[layer].shape == plain[layer].shape
        np.testing.assert_allclose(staged[layer].numpy(), plain[layer], rtol=0, atol=1e-12)
    assert stages_agree({k: v.numpy() for k, v in staged.items()}, plain)[0]


def test_stage_by_stage_refuses_a_wrong_stride() -> None:
    with pytest.raises(ValueError, match="stage 's4' has stride 4 by its output size, not 8"):
        stitch_stages(strided_chain(), windowed_images(1), {**STRIDES, "s4": 8}, _crops(),
                      pad=PAD)


class _Centred(nn.Module):
    """Subtracts the map's global mean: not a sliding window (depends on the whole map)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=(-2, -1), keepdim=True) * torch.linspace(0, 1, x.shape[-1],
                                                                        dtype=x.dtype)


def test_a_stage_that_is_no_sliding_window_is_caught() -> None:
    """The stage-by-stage method assumes sliding-window stages; the check that guards it
    (stages_agree) sees the difference where a stage is position-dependent."""
    chain = strided_chain()
    chain[1] = ("s2", nn.Sequential(chain[1][1], _Centred()))
    x = windowed_images(2)
    plain = dense_maps(_Chain(chain), x)
    with torch.no_grad():
        staged = stitch_stages(chain, x, STRIDES, _crops(), pad=PAD)
    ok, worst = stages_agree({k: v.numpy() for k, v in staged.items()}, plain)
    assert not ok and worst > 1e-3


def test_stage_reach_adds_the_measured_windows() -> None:
    """Known answer: conv 3×3 reaches 1 px; avg-pool 2 → conv 3×3 reaches 2 cells of the
    pool before and 3 pixels after an output's first input pixel; avg-pool 2 at stride 2,
    1 cell = 2 px; plus the largest stride (4)."""
    reach = stage_reach(strided_chain(), windowed_images(1).double(), STRIDES, pad=PAD)
    assert reach == [4 + 1 + 3 + 2, 4 + 3 + 2, 4 + 2]


class _Recorded(nn.Module):
    """A stage that records the size of every input it is given."""

    def __init__(self, stage: nn.Module, sizes: list) -> None:
        super().__init__()
        self.stage, self.sizes = stage, sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.stage(x)


def test_cropped_stages_give_the_same_maps_on_fewer_pixels() -> None:
    """With a wide padding (the receptive field of a deeper network), each stage runs
    only where the strided layers' fields reach: the same dense maps bit for bit, equal
    to plain shift-and-stitch's, from fewer pixels; a non-square canvas crops per axis."""
    pad = 24
    x = torch.rand(2, 1, 32, 40, generator=torch.Generator().manual_seed(5)).double()
    crops = {layer: (pad // s, 32 // s, 40 // s) for layer, s in STRIDES.items()}
    whole_sizes: list = []
    cropped_sizes: list = []
    chain = strided_chain()
    whole_chain = [(n, _Recorded(m, whole_sizes)) for n, m in chain]
    cropped_chain = [(n, _Recorded(m, cropped_sizes)) for n, m in chain]
    reach = stage_reach(chain, x, STRIDES, pad=pad)
    with torch.no_grad():
        whole = stitch_stages(whole_chain, x, STRIDES, crops, pad=pad)
        cropped = stitch_stages(cropped_chain, x, STRIDES, crops, pad=pad, reach=reach)

        def forward(phase: tuple[int, int]) -> dict:
            out, h = {}, F.pad(x, phase_padding(pad, *phase))
            for name, stage in chain:
                h = out[name] = stage(h)
            return {k: v[..., c[0] : c[0] + c[1], c[0] : c[0] + c[2]].numpy()
                    for k, v in out.items() for c in [crops[k]]}

        plain = shift_and_stitch(forward, STRIDES)
    for layer in ("s2", "s4"):
        assert torch.equal(cropped[layer], whole[layer])
        np.testing.assert_allclose(cropped[layer].numpy(), plain[layer], rtol=0, atol=1e-12)
    pixels = [sum(h * w for h, w in sizes) for sizes in (whole_sizes, cropped_sizes)]
    assert pixels[1] < 0.6 * pixels[0]
    assert cropped_sizes[0][0] < cropped_sizes[0][1]  # 32 rows, 40 columns: cut per axis


def test_stage_maps_give_the_as_built_maps_of_every_layer() -> None:
    """The same pass gives the as-built maps (phase (0, 0) cropped to the canvas), the
    stride-1 layer's included, equal to one forward pass of the whole chain; the dense
    maps hold them as their phase (0, 0)."""
    pad = 24
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6)).double()
    crops = {layer: (pad // s, 32 // s, 32 // s) for layer, s in STRIDES.items()}
    chain = strided_chain()
    with torch.no_grad():
        built, dense = stage_maps(chain, x, STRIDES, crops, pad=pad,
                                  reach=stage_reach(chain, x, STRIDES, pad=pad))
        h, whole = F.pad(x, (pad,) * 4), {}
        for name, stage in chain:
            h = whole[name] = stage(h)
    assert set(built) == set(STRIDES) and set(dense) == {"s2", "s4"}
    for layer, (k0, hl, wl) in crops.items():
        want = whole[layer][..., k0 : k0 + hl, k0 : k0 + wl]
        np.testing.assert_allclose(built[layer].numpy(), want.numpy(), rtol=0, atol=1e-12)
        if layer in dense:
            s = STRIDES[layer]
            assert torch.equal(dense[layer][..., ::s, ::s], built[layer])
