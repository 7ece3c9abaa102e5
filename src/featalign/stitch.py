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

**Stage by stage** (:func:`stitch_stages`). For a network that is a chain of
stages (:class:`featalign.nets.Tapped`), most of the s² passes repeat work: the
first stage, at stride 1, gives the same map for every phase up to an integer
shift. Stage k's phase d = s_{k−1}·q + r (per axis; s_{k−1} the stride of its
input) is stage k applied to the phase-r output of stage k − 1 with its first q
cells dropped: a chain of sliding-window stages moves its output by q cells when
its input moves by q·s_{k−1} pixels. So stage k runs once per phase of *its own*
stride, at its own resolution (s_k² maps of (H/s_k)² cells: one full-resolution
map's worth), instead of once per phase of the largest stride. For the built-in
invariant networks that is 3–4× fewer operations. It assumes sliding-window
stages (no global pooling, no position-dependent operation before the last
strided layer), which the plain method does not: the feature stage therefore
checks it on the first images of every job against plain shift-and-stitch and
falls back to the plain method where they differ (:func:`stages_agree`).

**Cropped stages.** The padding must cover the deepest layer's receptive field, so
on a 64 px canvas most of a padded 128 px input is margin. A stage's output is
needed only as far beyond the canvas as the later stages' windows reach:
:func:`stage_reach` measures each stage's window (from the support of an input
gradient) and sums them from the back, and :func:`stitch_stages` then runs each
stage on that region only, cut at multiples of the largest stride so that every
phase keeps its lattice. The maps are the same bit for bit (tests);
``benchmarks/bench_features.py`` times the cropped stages against plain
shift-and-stitch. The job-level check against plain
shift-and-stitch covers the crop too. Phase (0, 0) of every stage is the as-built
network on the cropped input, so the same pass gives the as-built maps of every layer
(:func:`stage_maps`) and no separate as-built pass is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "STAGE_RTOL",
    "dense_phases",
    "phase_padding",
    "shift_and_stitch",
    "stage_maps",
    "stage_reach",
    "stages_agree",
    "stitch_stages",
]


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


def stitch_stages(
    stages: Sequence[tuple[str, torch.nn.Module]],
    images: torch.Tensor,
    strides: Mapping[str, int],
    crops: Mapping[str, tuple[int, int, int]],
    *,
    pad: int,
    reach: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Dense maps of the strided layers of a chain of stages, each stage run once per phase
    of its own stride (module docstring, "Stage by stage"): :func:`stage_maps`'s dense maps.
    """
    return stage_maps(stages, images, strides, crops, pad=pad, reach=reach)[1]


def stage_maps(
    stages: Sequence[tuple[str, torch.nn.Module]],
    images: torch.Tensor,
    strides: Mapping[str, int],
    crops: Mapping[str, tuple[int, int, int]],
    *,
    pad: int,
    reach: Sequence[int] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The as-built and the dense maps of a chain of stages, each stage run once per phase
    of its own stride (module docstring, "Stage by stage").

    Equal to :func:`shift_and_stitch` over ``forward`` passes that pad ``images`` by
    :func:`phase_padding` and crop ``crops``, for chains of sliding-window stages
    whose padding ``pad`` covers the receptive fields (up to floating-point rounding).

    Args:
        stages: (name, module) pairs; each module maps the previous output to the next.
        images: (N, C, H, W) on the stages' device, not yet padded.
        strides: layer -> stride, for the stages whose dense maps are wanted and the
            others of known stride; a stage missing here gets the stride its output
            size implies.
        crops: layer -> (first cell, height, width) of the canvas's lattice in the map
            of the padded image (as the as-built pass crops it).
        pad: the zero padding per side (a multiple of every stride).
        reach: per stage of the chain, how far (image pixels) beyond the canvas its input
            must reach for the wanted layers (:func:`stage_reach`). With it, each stage
            runs only there (module docstring, "Cropped stages") instead of on the whole
            padded canvas; without it (None), everywhere.

    Returns:
        (as built, dense): layer -> the as-built map (N, C_l, h, w), phase (0, 0) cropped
        to the canvas's lattice, for every layer of ``crops`` up to the last strided
        one; layer -> dense map (N, C_l, s·h, s·w) for the layers of ``strides`` with
        s > 1 (its phase (0, 0) the as-built map).

    Raises:
        ValueError: a stage's output size does not fit its declared stride.

    Example:
        >>> import torch.nn as nn
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> d = stitch_stages([("a", nn.AvgPool2d(2))], x, {"a": 2}, {"a": (1, 2, 2)}, pad=2)
        >>> d["a"][0, 0, :2].tolist()  # 2×2 means of x starting at every pixel
        [[2.5, 3.5, 4.5, 2.5], [6.5, 7.5, 8.5, 4.5]]
    """
    wanted, chain = _chain(stages, strides)
    if not wanted:
        return {}, {}
    top = max(wanted.values())
    ratios = _stage_ratios(chain, F.pad(images[:1], (pad,) * 4))
    # a trailing margin: each strided stage drops up to 2·top pixels' worth of cells there
    margin = 2 * top * sum(r > 1 for r in ratios)
    x = F.pad(images, (pad, pad + margin, pad, pad + margin))
    maps: dict[tuple[int, int], torch.Tensor] = {(0, 0): x}
    reach = list(reach) if reach is not None else [None] * len(chain)
    canvas = images.shape[-2:]
    s_in = 1
    first = [0, 0]  # cells (at the current stride) cropped away before the maps' first, (y, x)
    built: dict[str, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for (name, stage), ratio, need in zip(chain, ratios, reach):
        s_out = s_in * ratio
        if name in strides and int(strides[name]) != s_out:
            raise ValueError(
                f"stage '{name}' has stride {s_out} by its output size, not {strides[name]}"
            )
        # phase d = s_in·q + r: the phase-r input with its first q cells dropped, all cut to
        # one length that every later stride divides. One call per phase, each the size of
        # an as-built pass: one call on all phases at once measured 2-3x slower per pixel
        # on the CPU (the maps leave the cache), and grouping small maps gained nothing
        unit = max(1, top // s_in)
        lengths = maps[(0, 0)].shape[-2:]
        start = [0, 0]  # a multiple of unit: every later stride still divides the crop
        keep = [(n - (ratio - 1)) // unit * unit for n in lengths]
        if need is not None:  # only the cells that the wanted layers' fields reach
            for axis, (n, size) in enumerate(zip(lengths, canvas)):
                lo = (pad - need) // s_in - 1 - first[axis]
                hi = -(-(pad + size + need) // s_in) + 1 - first[axis]
                start[axis] = max(0, lo // unit * unit)
                room = (n - (ratio - 1) - start[axis]) // unit * unit
                keep[axis] = min(room, -(-(hi - start[axis]) // unit) * unit)
        new: dict[tuple[int, int], torch.Tensor] = {}
        for dy in range(s_out):
            for dx in range(s_out):
                (qy, ry), (qx, rx) = divmod(dy, s_in), divmod(dx, s_in)
                qy, qx = qy + start[0], qx + start[1]
                new[(dy, dx)] = stage(maps[(ry, rx)][..., qy : qy + keep[0], qx : qx + keep[1]])
        maps = new
        first = [(f + st) // ratio for f, st in zip(first, start)]
        s_in = s_out
        if name in crops:
            k0, h, w = crops[name]
            ky, kx = k0 - first[0], k0 - first[1]
            sample = maps[(0, 0)]
            if min(ky, kx) < 0 or sample.shape[-2] < ky + h or sample.shape[-1] < kx + w:
                raise ValueError(f"stage '{name}': its maps are too small to crop")
            built[name] = sample[..., ky : ky + h, kx : kx + w]
            if name in wanted:
                d = sample.new_empty((*sample.shape[:-2], s_out * h, s_out * w))
                for (dy, dx), m in maps.items():
                    d[..., dy::s_out, dx::s_out] = m[..., ky : ky + h, kx : kx + w]
                dense[name] = d
    return built, dense


def stage_reach(
    stages: Sequence[tuple[str, torch.nn.Module]],
    images: torch.Tensor,
    strides: Mapping[str, int],
    *,
    pad: int,
    seed: int = 0,
) -> list[int]:
    """For each stage of the chain up to the last strided layer of ``strides``, how far
    (image pixels) beyond the canvas its input must reach for the strided layers' maps:
    the sum of its own and the later stages' measured half-extents, plus one largest
    stride.

    A stage's half-extent is measured, in its input's cells, from the support of the
    input gradient of one central output cell c (random input and channel weights, as
    the lattice probe does): the farther of the support's ends from input cell
    ratio·c. Extents add along a chain of sliding-window stages. For
    :func:`stitch_stages`'s ``reach``.

    Args:
        stages, strides, pad: as :func:`stitch_stages`.
        images: (N, C, H, W), for the size, dtype and device (not the values).
        seed: seed of the random input.

    Returns:
        One reach per stage of the chain that :func:`stitch_stages` runs.
    """
    wanted, chain = _chain(stages, strides)
    if not wanted:
        return []
    gen = torch.Generator().manual_seed(seed)
    shape = (1, images.shape[1], images.shape[-2] + 2 * pad, images.shape[-1] + 2 * pad)
    x = torch.randn(shape, generator=gen).to(images.device, images.dtype)
    cost: list[float] = []  # image pixels each stage's window adds beyond its output
    s_in = 1
    for name, stage in chain:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = stage(x.clone())  # a stage may work in place (ReLU6(inplace=True))
            ratio = _ratio(x.shape[-2:], y.shape[-2:], name)
            cy, cx = y.shape[-2] // 2, y.shape[-1] // 2
            weights = torch.rand(y.shape[1], generator=gen).to(y.device, y.dtype) + 0.5
            objective = (y[0, :, cy, cx] * weights).sum()
            grad = (torch.autograd.grad(objective, x, allow_unused=True)[0]
                    if objective.requires_grad else None)
        support = None if grad is None else grad[0].abs().sum(0) != 0
        if support is None or not bool(support.any()):
            half = max(x.shape[-2:])  # no measurable window: never crop before it
        else:
            rows = torch.nonzero(support.any(1)).flatten()
            cols = torch.nonzero(support.any(0)).flatten()
            half = max(ratio * cy - int(rows[0]), int(rows[-1]) - ratio * cy,
                       ratio * cx - int(cols[0]), int(cols[-1]) - ratio * cx, 0)
        cost.append(half * s_in)
        s_in *= ratio
        x = y.detach()
    top = max(wanted.values())
    return [top + int(sum(cost[j:])) for j in range(len(chain))]


def _chain(
    stages: Sequence[tuple[str, torch.nn.Module]], strides: Mapping[str, int]
) -> tuple[dict[str, int], Sequence[tuple[str, torch.nn.Module]]]:
    """The strided layers (name -> stride > 1) and the stages up to the last of them."""
    wanted = {name: int(s) for name, s in strides.items() if int(s) > 1}
    if not wanted:
        return wanted, []
    names = [name for name, _ in stages]
    return wanted, stages[: max(names.index(name) for name in wanted) + 1]


def _stage_ratios(chain: Sequence[tuple[str, torch.nn.Module]], x: torch.Tensor) -> list[int]:
    """Each stage's stride relative to its input, from one pass of ``x`` through the chain."""
    ratios = []
    for name, stage in chain:
        y = stage(x)
        ratios.append(_ratio(x.shape[-2:], y.shape[-2:], name))
        x = y
    return ratios


def _ratio(size_in: Sequence[int], size_out: Sequence[int], name: str) -> int:
    """The stride of one stage from its input and output sizes (equal along both axes)."""
    ratios = {round(a / b) for a, b in zip(size_in, size_out)}
    if len(ratios) != 1 or min(ratios) < 1:
        raise ValueError(f"stage '{name}' maps {tuple(size_in)} to {tuple(size_out)}: not one "
                         "integer stride")
    return ratios.pop()


#: Largest difference (relative to a layer's largest value) at which stage-by-stage dense
#: maps count as equal to plain shift-and-stitch's: float32 rounding is ~1e-7.
STAGE_RTOL = 1e-4


def stages_agree(
    staged: Mapping[str, np.ndarray], plain: Mapping[str, np.ndarray], rtol: float = STAGE_RTOL
) -> tuple[bool, float]:
    """Whether stage-by-stage dense maps equal plain shift-and-stitch's (each layer's largest
    difference at most ``rtol`` × its largest magnitude); also the largest relative difference.

    Example:
        >>> a = {"l": np.ones((1, 2, 2))}
        >>> stages_agree(a, {"l": a["l"] + 1e-6})[0], stages_agree(a, {"l": 2 * a["l"]})[0]
        (True, False)
    """
    worst = 0.0
    for layer, ref in plain.items():
        scale = float(np.abs(ref).max()) or 1.0
        worst = max(worst, float(np.abs(np.asarray(staged[layer]) - ref).max()) / scale)
    return worst <= rtol, worst
