"""Running a probed network over images: zero padding, batches, dense evaluation.

The feature stage (:mod:`featalign.features`) and ``featalign plugins check`` run a
network the same way:

* **as built** (:func:`forward_all`): images zero-padded by :func:`padding_for` (the
  largest receptive field, a multiple of every stride), in batches sized to the
  device (:func:`batched`), each layer cropped back to the canvas's lattice;
* **densely**, for the layers of stride > 1: plain shift-and-stitch
  (:func:`dense_plain`, :func:`featalign.stitch.shift_and_stitch`: one pass of the
  whole network per phase) or, for a network that is a chain of stages
  (:func:`chain_of_stages`), stage by stage (:func:`maps_by_stages`,
  :func:`featalign.stitch.stitch_stages`), once :func:`staged_ok` has found it equal
  to the plain method on a job's first images.

:class:`Network` holds what every batch needs: the built extractor, its probes, the
padding and crops, the phases and the chain of stages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from featalign.lattice import probe_grid
from featalign.nets import Tapped
from featalign.plugins import NetworkSpec
from featalign.runtime import BatchSizer, is_out_of_memory
from featalign.stitch import (
    STAGE_RTOL,
    dense_phases,
    phase_padding,
    shift_and_stitch,
    stage_maps,
    stage_reach,
    stages_agree,
)

__all__ = [
    "STAGE_CHECK_IMAGES",
    "Network",
    "batched",
    "chain_of_stages",
    "dense_plain",
    "forward_all",
    "maps_by_stages",
    "network_maps",
    "padding_for",
    "plain_maps",
    "staged_difference",
    "staged_ok",
]

log = logging.getLogger(__name__)


def padding_for(probes: Mapping[str, Any], max_pad: int) -> int:
    """Zero padding (pixels per side) that covers every layer's receptive field.

    A multiple of every layer's stride (so the lattices stay put), at most
    ``max_pad`` rounded down to such a multiple.

    Example:
        >>> from types import SimpleNamespace as P
        >>> padding_for({"a": P(stride=2, radius=5.0), "b": P(stride=4, radius=9.0)}, 64)
        12
    """
    step = math.lcm(*(int(p.stride) for p in probes.values()))
    need = max(float(p.radius) for p in probes.values())
    pad = step * math.ceil(need / step)
    cap = step * (max_pad // step)
    if pad > cap:
        log.warning(
            "receptive fields reach %.0f px but padding is capped at %d px: features near "
            "the canvas border feel the network's own zero padding (raise features.max_pad)",
            need, cap,
        )
    return min(pad, cap)


def forward_all(
    extractor: torch.nn.Module,
    images: torch.Tensor,
    crops: Mapping[str, tuple[int, int, int]],
    *,
    pad: int | Sequence[int],
    device: torch.device,
    batch_size: int,
    progress: bool = True,
    label: str = "",
    bar: tqdm | None = None,
) -> dict[str, np.ndarray]:
    """Run ``images`` (N, C, H, W), zero-padded by ``pad``, through the extractor in batches.

    ``pad`` is one width for every side or the (left, right, top, bottom) widths of
    ``torch.nn.functional.pad`` (:func:`featalign.stitch.phase_padding` moves the
    content this way). ``crops[layer] = (first, height, width)`` crops each padded
    layer back to the canvas's lattice. Returns float32 numpy arrays per layer.
    ``bar``, if given, is advanced by the images done (one bar over several calls);
    otherwise a bar of its own is shown if ``progress``.
    """
    widths = (pad,) * 4 if isinstance(pad, int) else tuple(int(p) for p in pad)

    def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        if any(widths):
            batch = torch.nn.functional.pad(batch, widths)
        feats = extractor(batch)
        return {layer: feats[layer][..., k0 : k0 + hl, k0 : k0 + wl]
                for layer, (k0, hl, wl) in crops.items()}

    return batched(run, images, device=device, batch_size=batch_size, progress=progress,
                    label=label, bar=bar)


def batched(
    run: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    images: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int,
    progress: bool = True,
    label: str = "",
    bar: tqdm | None = None,
    passes: int = 1,
) -> dict[str, np.ndarray]:
    """``run`` over ``images`` in batches sized to the device (halved on out-of-memory),
    its maps gathered as float32 numpy arrays; the bar advances ``passes`` per image."""
    out: dict[str, np.ndarray] = {}
    n = images.shape[0]
    sizer = BatchSizer(device, batch_size, limit=n)
    own_bar = bar is None
    if bar is None:
        bar = tqdm(total=n * passes, desc=label, unit="img", disable=not progress,
                   mininterval=1.0)
    start = 0
    with torch.inference_mode():
        while start < n:
            size = sizer.size
            batch = images[start : start + size].to(device)
            try:
                with sizer.measure(batch.shape[0]):
                    feats = run(batch)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                del batch
                sizer.shrink(exc)
                continue
            for layer, maps in feats.items():
                f = maps.float().cpu().numpy()
                if layer not in out:
                    out[layer] = np.empty((n, *f.shape[1:]), dtype=np.float32)
                out[layer][start : start + f.shape[0]] = f
            del feats
            start += batch.shape[0]
            bar.update(batch.shape[0] * passes)
    if own_bar:
        bar.close()
    return out


def dense_plain(
    extractor: torch.nn.Module,
    images: torch.Tensor,
    crops: Mapping[str, tuple[int, int, int]],
    strides: Mapping[str, int],
    as_built: Mapping[str, np.ndarray],
    *,
    pad: int,
    device: torch.device,
    batch_size: int,
    bar: tqdm | None,
) -> dict[str, np.ndarray]:
    """Shift-and-stitch maps of the layers of stride > 1 (:func:`featalign.stitch.shift_and_stitch`).

    Phase (0, 0) is the as-built pass (``as_built``, not run again); every other
    phase runs ``images`` padded by :func:`featalign.stitch.phase_padding` and
    keeps the layers whose stride exceeds it.
    """
    strided = {layer: int(s) for layer, s in strides.items() if int(s) > 1}

    def forward(phase: tuple[int, int]) -> dict[str, np.ndarray]:
        if phase == (0, 0):
            return {layer: as_built[layer] for layer in strided}
        needed = {k: v for k, v in crops.items() if k in strided and max(phase) < strided[k]}
        return forward_all(extractor, images, needed, pad=phase_padding(pad, *phase),
                            device=device, batch_size=batch_size, bar=bar,
                            progress=bar is not None)

    return shift_and_stitch(forward, strided)


@dataclass(frozen=True)
class Network:
    """A network built and probed for one dataset: what every chunk of images needs."""

    spec: NetworkSpec
    options: dict[str, Any]
    extractor: torch.nn.Module
    probes: dict[str, Any]
    pad: int
    crops: dict[str, tuple[int, int, int]]
    strides: dict[str, int]
    phases: list[tuple[int, int]]
    device: torch.device
    batch_size: int
    name: str
    height: int
    width: int
    #: the chain of stages (:func:`chain_of_stages`), for the stage-by-stage dense evaluation;
    #: None: plain shift-and-stitch
    stages: tuple[tuple[str, torch.nn.Module], ...] | None = None
    #: "staged": whether the first images confirmed the stage-by-stage evaluation
    state: dict[str, Any] = field(default_factory=dict)


def chain_of_stages(extractor: torch.nn.Module) -> tuple[tuple[str, torch.nn.Module], ...] | None:
    """The plugin's chain of stages (its ``stages=``, or a :class:`featalign.nets.Tapped`
    module's stages) when it includes every declared layer, nested ``nn.Sequential``
    opened into their modules (so that what precedes a stride runs once per phase of the
    stride before it); None otherwise (plain shift-and-stitch)."""
    inner = getattr(extractor, "inner", None)
    declared = getattr(extractor, "chain", None)
    if declared is not None:  # the plugin's stages=
        stages = [(str(name), module) for name, module in declared]
    elif getattr(extractor, "nodes", None) is None and isinstance(inner, Tapped):
        stages = list(inner.stages.items())
    else:
        return None
    if not set(extractor.layers) <= {name for name, _ in stages}:
        return None
    chain: list[tuple[str, torch.nn.Module]] = []

    def add(name: str, module: torch.nn.Module) -> None:
        children = list(module.children()) if isinstance(module, torch.nn.Sequential) else []
        if not children:
            chain.append((name, module))
            return
        for i, child in enumerate(children):  # only the last step's output is the tap
            add(name if i == len(children) - 1 else f"{name}#{len(chain)}", child)

    for name, stage in stages:
        add(name, stage)
    return tuple(chain)


def maps_by_stages(
    net: Network, images: torch.Tensor, bar: tqdm | None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The as-built maps (every layer the chain reaches) and the dense maps of the strided
    layers, stage by stage on cropped stages (:func:`featalign.stitch.stage_maps`): one
    pass for both, the dense maps' phase (0, 0) the as-built maps bit for bit.

    Returns:
        (as built, dense), layer -> float32 maps.
    """
    strided = {layer: s for layer, s in net.strides.items() if s > 1}
    if "reach" not in net.state:  # measured once per job: which cells each stage needs
        net.state["reach"] = stage_reach(net.stages, images, strided, pad=net.pad)

    def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        built, dense = stage_maps(net.stages, batch, strided, net.crops, pad=net.pad,
                                  reach=net.state["reach"])
        return _keyed(built, dense)

    maps = batched(run, images, device=net.device, batch_size=net.batch_size, progress=False,
                   bar=bar, passes=max(1, len(net.phases)))
    parts: dict[str, dict[str, np.ndarray]] = {"built": {}, "dense": {}}
    for key, value in maps.items():
        which, layer = key.split("/", 1)
        parts[which][layer] = value
    return parts["built"], parts["dense"]


def _keyed(built: Mapping[str, Any], dense: Mapping[str, Any]) -> dict[str, Any]:
    """As-built and dense maps in one mapping, keys ``built/<layer>`` and ``dense/<layer>``."""
    return {**{f"built/{k}": v for k, v in built.items()},
            **{f"dense/{k}": v for k, v in dense.items()}}


def plain_maps(
    net: Network, images: torch.Tensor, bar: tqdm | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The as-built maps of one forward pass and, if ``net.phases``, plain shift-and-stitch's
    dense maps of ``images``."""
    built = forward_all(net.extractor, images, net.crops, pad=net.pad, device=net.device,
                        batch_size=net.batch_size, progress=False, bar=bar)
    dense = (dense_plain(net.extractor, images, net.crops, net.strides, built, pad=net.pad,
                         device=net.device, batch_size=net.batch_size, bar=bar)
             if net.phases else {})
    return built, dense


def network_maps(
    net: Network, images: torch.Tensor, bar: tqdm | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The as-built and dense maps of ``images``: stage by stage where the network is a
    chain that :func:`staged_ok` confirmed (layers after its last strided one by a plain
    pass), else :func:`plain_maps`."""
    if not (net.phases and net.stages is not None and staged_ok(net, images)):
        return plain_maps(net, images, bar)
    built, dense = maps_by_stages(net, images, bar)
    rest = {k: v for k, v in net.crops.items() if k not in built}
    if rest:
        built |= forward_all(net.extractor, images, rest, pad=net.pad, device=net.device,
                             batch_size=net.batch_size, bar=bar)
    return built, dense


def _difference(net: Network, images: torch.Tensor) -> float:
    """Largest difference (relative to each map's largest value) between the stage-by-stage
    maps, as built and dense, and the plain ones (raises ValueError where the stages
    cannot run)."""
    built, dense = maps_by_stages(net, images, None)
    plain_built, plain_dense = plain_maps(net, images)
    reference = _keyed({k: plain_built[k] for k in built}, plain_dense)
    return stages_agree(_keyed(built, dense), reference)[1]


def staged_difference(
    extractor: torch.nn.Module, images: torch.Tensor, *, max_pad: int = 96
) -> float | None:
    """How far the stage-by-stage maps of ``images`` (N, C, H, W), as built and dense, are
    from the plain ones (one forward pass, shift-and-stitch; largest difference relative
    to the largest value, over the layers); None where the network has no chain of stages or no strided layer.
    ``featalign plugins check`` reports it for a plugin that declares ``stages=``."""
    stages = chain_of_stages(extractor)
    probes = probe_grid(extractor, extractor.spec.in_channels, size=images.shape[-1])
    strides = {layer: int(p.stride) for layer, p in probes.items()}
    if stages is None or max(strides.values()) <= 1:
        return None
    pad = padding_for(probes, max_pad)
    crops = {layer: (pad // int(p.stride), p.height, p.width) for layer, p in probes.items()}
    device = next((p.device for p in extractor.parameters()), torch.device("cpu"))
    net = Network(
        spec=extractor.spec, options={}, extractor=extractor, probes=probes, pad=pad,
        crops=crops, strides=strides, phases=dense_phases(strides), device=device,
        batch_size=len(images), name="check", height=images.shape[-2], width=images.shape[-1],
        stages=stages,
    )
    return _difference(net, images)


#: Images of each job on which the stage-by-stage dense maps are checked against plain
#: shift-and-stitch before they are used.
STAGE_CHECK_IMAGES = 2


def staged_ok(net: Network, images: torch.Tensor) -> bool:
    """Whether stage-by-stage evaluation reproduces the plain one (as built: one forward
    pass; dense: shift-and-stitch) on the job's first images (decided once per job,
    logged): a plugin whose stages are not sliding windows (a global pooling or a
    position-dependent operation before its last strided layer) falls back to the plain
    method."""
    if "staged" not in net.state:
        few = images[:STAGE_CHECK_IMAGES]
        try:
            worst = _difference(net, few)
        except ValueError as exc:  # a stage whose stride or reach is not what it seemed
            log.warning("dense evaluation stage by stage failed (%s): plain shift-and-stitch "
                        "instead", exc)
            net.state["staged"] = False
            return False
        ok = worst <= STAGE_RTOL
        net.state["staged"] = ok
        if ok:
            log.info("dense evaluation stage by stage: equals plain shift-and-stitch on %d "
                     "images (largest difference %.1e of the largest value)", len(few), worst)
        else:
            log.warning("dense evaluation stage by stage differs from plain shift-and-stitch "
                        "by %.1e of the largest value on %d images (stages that are not "
                        "sliding windows?): plain shift-and-stitch instead", worst, len(few))
    return net.state["staged"]
