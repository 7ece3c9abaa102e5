"""The feature stage: feature maps of a dataset through one network, one group per layer.

A features file (``results/features/{dataset}/{network}.nc``) is an
``xarray.DataTree`` whose root holds the provenance and whose group ``/{layer}``
holds, for that layer:

* ``original(sample, channel, y, x)``: Γ(f);
* ``transformed(sample, transform, channel, y, x)``: Γ(T_g f);
* ``realigned(sample, transform, channel, y, x)``: Γ(T_g⁻¹ T_g f);
* the dataset's transform coordinates (``family``, ``magnitude``, ``matrix``);
* ``y`` and ``x`` as the *physical* centred image coordinates of the feature
  pixels (offset + stride·k − (n − 1)/2), and attributes ``stride``,
  ``offset_y``, ``offset_x`` (measured, not assumed: :func:`featalign.lattice.probe_grid`),
  ``channels``, ``depth`` (position of the layer in the network) and the
  receptive field's extent.

**Padding.** Images are windowed onto a zero background, so the canvas is a
window onto an infinite zero plane. A network's own zero padding at the canvas
border would break translation covariance wherever a receptive field reaches
the border; the images are therefore padded with zeros by a margin that covers
the largest receptive field (a multiple of every stride, at most ``max_pad``)
and the feature maps are cropped back to the canvas's lattice. Translations by
stride multiples then commute with the network exactly, as the theory assumes.

**Dense evaluation.** A layer of stride s > 1 is covariant only to shifts by
multiples of s, while the theorem is about translation-covariant extractors.
Unless ``dense`` is off (the config's ``features.dense``), every strided layer is
also evaluated densely by shift-and-stitch (:mod:`featalign.stitch`): one more
forward pass per phase (dy, dx) ∈ {0, …, s − 1}² (the union over the layers is
{0, …, max s − 1}²; phase (0, 0) is the as-built pass, reused), the content
moved through the padding (:func:`featalign.stitch.phase_padding`), the same
crops, the outputs interleaved. Its group then also holds

* ``dense_original(sample, channel, dense_y, dense_x)``,
  ``dense_transformed(sample, transform, channel, dense_y, dense_x)`` and
  ``dense_realigned(sample, transform, channel, dense_y, dense_x)``: the same
  three maps on the stride-1 lattice, ``dense[..., ::s, ::s]`` the as-built map
  bit for bit;
* ``dense_y``/``dense_x`` = offset + j − (n − 1)/2 (the layer's measured offset,
  stride 1) and the attribute ``dense_stride = 1``.

Layers of stride 1 get no dense variables: they are dense already. The as-built
variables do not depend on ``dense``. Cost: s² forward passes of the largest
stride, and s² times the pixels of each strided layer (one stride-1 map each).
A plugin that is a chain of stages (:class:`featalign.nets.Tapped`, as every
built-in random network) is evaluated stage by stage instead
(:func:`featalign.stitch.stitch_stages`: each stage once per phase of its own
stride, each on the region the later stages' windows reach: 3–4× fewer operations
for the invariant networks before the crop), after a check
on the job's first images that it reproduces the plain method (it falls back
otherwise); that pass gives the as-built maps too. How a network is run, as built and
densely, is :mod:`featalign.forward`'s.

Feature maps are float32, zlib-compressed; each layer is its own netCDF group,
so one layer reads without the rest.

**Memory.** The workflow's features job (:func:`write_features`) reads the
dataset, runs the network and writes the maps ``features.chunk`` images at a time,
so that it holds one chunk's maps (and their dense maps), whatever the number of
samples and transforms; each image's map is its own HDF5 chunk, which the align
stage reads a sample at a time. :func:`extract_features` builds the same content in
memory (tests, small data).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from featalign import __version__
from featalign.extractor import build_extractor
from featalign.forward import (
    Network,
    chain_of_stages,
    network_maps,
    padding_for,
)
from featalign.geometry import Grid
from featalign.io import Pending, file_sha256, incremental_netcdf, make_attrs, read_finite
from featalign.lattice import probe_grid
from featalign.plugins import NetworkSpec, PluginError
from featalign.stitch import dense_phases

__all__ = [
    "CHUNK",
    "MAX_CHUNK_BYTES",
    "FeatureError",
    "convert_channels",
    "extract_features",
    "layer_grid",
    "write_features",
]

log = logging.getLogger(__name__)

#: ITU-R BT.601 luma weights, for colour datasets fed to single-channel networks.
LUMA = (0.299, 0.587, 0.114)


class FeatureError(ValueError):
    """A dataset and a network that cannot be combined; the message says why and what to do."""


def convert_channels(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Convert images to a network's input channels (grey → replicate, colour → luma).

    Args:
        images: shape (N, C, H, W), C 1 or 3.
        in_channels: 1 or 3.

    Returns:
        Shape (N, in_channels, H, W).

    Example:
        >>> convert_channels(torch.ones(2, 1, 4, 4), 3).shape
        torch.Size([2, 3, 4, 4])
    """
    c = images.shape[1]
    if c == in_channels:
        return images
    if c == 1 and in_channels == 3:
        return images.expand(-1, 3, -1, -1)
    if c == 3 and in_channels == 1:
        w = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True)
    raise FeatureError(f"cannot convert {c}-channel images to a {in_channels}-channel network")


def layer_grid(ds: xr.Dataset) -> Grid:
    """The geometry lattice of one layer group of a features file."""
    return Grid(
        height=ds.sizes["y"],
        width=ds.sizes["x"],
        stride=float(ds.attrs["stride"]),
        offset_y=float(ds.attrs["offset_y"]),
        offset_x=float(ds.attrs["offset_x"]),
        image_height=int(ds.attrs["image_height"]),
        image_width=int(ds.attrs["image_width"]),
    )


_SPATIAL = {"": ("y", "x"), "dense_": ("dense_y", "dense_x")}


def _variable_frames(layer: str, prefix: str = "") -> dict[str, tuple[tuple[str, ...], dict]]:
    """Dimensions and attributes of ``original``, ``transformed`` and ``realigned`` (with
    ``prefix``: ``""`` as built, ``"dense_"`` shift-and-stitch)."""
    spatial = _SPATIAL[prefix]
    dense = " (dense, shift-and-stitch)" if prefix else ""
    return {
        f"{prefix}original": (("sample", "channel", *spatial),
                              {"long_name": f"{layer} features of f{dense}", "units": "1"}),
        f"{prefix}transformed": (("sample", "transform", "channel", *spatial),
                                 {"long_name": f"{layer} features of T_g f{dense}", "units": "1"}),
        f"{prefix}realigned": (("sample", "transform", "channel", *spatial),
                               {"long_name": f"{layer} features of T_g^-1 T_g f{dense}",
                                "units": "1"}),
    }


def _feature_variables(
    layer: str, f: np.ndarray, samples: int, transforms: int, prefix: str = ""
) -> dict[str, tuple]:
    """``original``, ``transformed`` and ``realigned`` (with ``prefix``) from the stacked maps.

    ``f`` is (S + 2·S·T, C, h, w): the originals, then the transformed and the
    realigned images, sample-major (the order of the stack that was run).
    """
    s, t = samples, transforms
    c, hl, wl = f.shape[1:]
    parts = (f[:s], f[s : s + s * t].reshape(s, t, c, hl, wl),
             f[s + s * t :].reshape(s, t, c, hl, wl))
    return {name: (dims, part, attrs)
            for (name, (dims, attrs)), part in zip(_variable_frames(layer, prefix).items(), parts)}


@contextlib.contextmanager
def _time_limit(seconds: float, spec: NetworkSpec, dataset: str) -> Iterator[None]:
    """Raise PluginError in the main thread when the block runs longer than ``seconds``."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise PluginError(
            f"{spec.display_source}: network '{spec.name}' took longer than features.timeout "
            f"= {seconds:g} s on dataset '{dataset}'; make it faster, give it fewer or smaller "
            "images, or raise features.timeout"
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _prepare(
    dataset: xr.Dataset,
    spec: NetworkSpec,
    options: Mapping[str, Any] | None,
    *,
    device: torch.device | str,
    batch_size: int,
    max_pad: int,
    dense: bool,
) -> Network:
    """Build and probe the network for the dataset's canvas; refuse a canvas it cannot tile."""
    device = torch.device(device)
    options = dict(options or {})
    h, w = dataset.sizes["y"], dataset.sizes["x"]
    try:
        extractor = build_extractor(spec, options).to(device)
        probes = probe_grid(extractor, spec.in_channels, size=h)
    except PluginError:
        raise
    except Exception as exc:  # a user's plugin can raise anything: name the file
        raise PluginError(
            f"{spec.display_source}: network '{spec.name}' failed while being built and "
            f"probed on a {h}x{w} input ({type(exc).__name__}: {exc}); fix the plugin and "
            f"check it with `featalign plugins check {spec.name}`"
        ) from exc
    for layer, p in probes.items():
        if h % p.stride or w % p.stride:
            raise FeatureError(
                f"network '{spec.name}' layer '{layer}' has stride {p.stride}, but dataset "
                f"'{dataset.attrs.get('dataset', '?')}' has a {h}x{w} canvas; make "
                f"datasets.<name>.size a multiple of {p.stride} (e.g. "
                f"{p.stride * max(1, round(h / p.stride))})"
            )
    pad = padding_for(probes, max_pad)
    strides = {layer: int(p.stride) for layer, p in probes.items()}
    return Network(
        spec=spec, options=options, extractor=extractor, probes=probes, pad=pad,
        crops={layer: (pad // int(p.stride), p.height, p.width) for layer, p in probes.items()},
        strides=strides, phases=dense_phases(strides) if dense else [], device=device,
        batch_size=batch_size, name=str(dataset.attrs.get("dataset", "dataset")),
        height=h, width=w, stages=chain_of_stages(extractor),
    )


def _maps(
    net: Network, images: np.ndarray, bar: tqdm, where: str = ""
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """As-built and dense (strided layers, if ``net.phases``) maps of images (N, C, H, W).

    Raises:
        PluginError: a layer produced a non-finite value (``where`` names the images).
    """
    stack = convert_channels(torch.from_numpy(np.ascontiguousarray(images)),
                             net.spec.in_channels).contiguous()
    feats, dense_feats = network_maps(net, stack, bar)
    for layer in net.spec.layers:
        for what, values in (("", feats[layer]), (" (dense)", dense_feats.get(layer))):
            if values is not None and not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise PluginError(
                    f"{net.spec.display_source}: layer '{layer}' of network '{net.spec.name}' "
                    f"produced {bad} non-finite values{what} on dataset '{net.name}'{where}; "
                    "make the network's outputs finite"
                )
    return feats, dense_feats


def _log_plan(net: Network, n_images: int) -> None:
    log.info("%s on %s: %d images of %dx%d on %s", net.spec.name, net.name, n_images,
             net.height, net.width, net.device)
    if net.phases:
        log.info(
            "dense evaluation (shift-and-stitch) of %s: %d phases, %d more forward passes "
            "of %d images",
            ", ".join(f"{k} (stride {v})" for k, v in net.strides.items() if v > 1),
            len(net.phases), len(net.phases) - 1, n_images,
        )
    elif any(v > 1 for v in net.strides.values()):
        log.info("dense evaluation off: only the as-built maps")
    else:
        log.info("every layer has stride 1: the as-built maps are dense already")


def _group_frame(
    net: Network, dataset: xr.Dataset, layer: str, depth: int, channels: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Coordinates and attributes of a layer's group (everything but its maps)."""
    p = net.probes[layer]
    h, w, s = net.height, net.width, int(p.stride)
    coords: dict[str, Any] = {
        "sample": dataset.sample.values,
        "transform": dataset.transform.values,
        "channel": np.arange(channels),
        "y": ("y", p.offset_y + s * np.arange(p.height) - (h - 1) / 2,
              {"long_name": "y (down), centred", "units": "pixel"}),
        "x": ("x", p.offset_x + s * np.arange(p.width) - (w - 1) / 2,
              {"long_name": "x (right), centred", "units": "pixel"}),
        **{k: dataset.coords[k] for k in ("family", "magnitude", "matrix", "row", "col")},
    }
    extra: dict[str, Any] = {}
    if net.phases and s > 1:
        coords["dense_y"] = ("dense_y", p.offset_y + np.arange(s * p.height) - (h - 1) / 2,
                             {"long_name": "y (down), centred, dense lattice", "units": "pixel"})
        coords["dense_x"] = ("dense_x", p.offset_x + np.arange(s * p.width) - (w - 1) / 2,
                             {"long_name": "x (right), centred, dense lattice", "units": "pixel"})
        extra = {"dense_stride": 1, "dense_phases": s**2}
    attrs = {
        "source": f"featalign {__version__}",
        "layer": layer,
        "depth": depth,
        "stride": p.stride,
        "offset_y": p.offset_y,
        "offset_x": p.offset_x,
        "channels": channels,
        "image_height": h,
        "image_width": w,
        "receptive_field_radius": p.radius,
        "padding": net.pad,
        "layer_node": (net.spec.nodes or {}).get(layer, layer),
        **extra,
    }
    return coords, attrs


def _root(net: Network, dataset: xr.Dataset, config: Any, rule: str, seconds: float) -> xr.Dataset:
    """The root group: provenance."""
    spec, options = net.spec, net.options
    return xr.Dataset(
        attrs=make_attrs(
            f"featalign features of {net.name} through {spec.name}",
            config=config,
            seed=int(options.get("seed", -1)) if isinstance(options.get("seed"), int) else None,
            rule=rule,
            dataset=net.name,
            network=spec.name,
            layers=",".join(spec.layers),
            invariant_to=",".join(spec.invariant_to),
            in_channels=spec.in_channels,
            plugin_file=spec.display_source,
            plugin_sha256=spec.sha256(),
            dataset_config_sha256=str(dataset.attrs.get("config_sha256", "")),
            weights=str(options.get("weights", "")),
            weights_sha256=file_sha256(options["weights"]) if options.get("weights") else "",
            dense_evaluation=int(bool(net.phases)),
            compute_seconds=seconds,
        )
    )


def _progress(net: Network, n_images: int, progress: bool) -> tqdm:
    return tqdm(total=n_images * max(1, len(net.phases)), desc=f"{net.spec.name} on {net.name}",
                unit="img", disable=not progress, mininterval=1.0)


def extract_features(
    dataset: xr.Dataset,
    spec: NetworkSpec,
    options: Mapping[str, Any] | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    max_pad: int = 96,
    dense: bool = True,
    timeout: float = 0.0,
    progress: bool = True,
    config: Any = None,
    rule: str = "",
) -> xr.DataTree:
    """Feature maps of a dataset's originals, transformed and realigned images, in memory.

    Holds every map of every layer at once (samples x transforms); the workflow's
    features job writes the same file chunk by chunk instead (:func:`write_features`).

    Args:
        dataset: a dataset file's content (:mod:`featalign.datasets`).
        spec: the network.
        options: keyword options of the network's ``build``.
        device: where to run the network.
        batch_size: images per forward pass (on CUDA the first batch's size: the
            next ones are sized to the GPU's free memory, see
            :class:`featalign.runtime.BatchSizer`; halved on out-of-memory).
        max_pad: the largest zero padding (pixels per side) against border effects.
        dense: also evaluate every layer of stride > 1 densely (shift-and-stitch, the
            ``dense_*`` variables of the module docstring); off, only the as-built maps.
        timeout: seconds the network may take to build and run (0: no limit); a
            network that takes longer fails its own job with a PluginError.
        progress: show a progress bar (on stderr, i.e. the job's log).
        config: recorded as provenance.
        rule: the Snakemake rule, recorded as provenance.

    Returns:
        The DataTree described in the module docstring.

    Raises:
        FeatureError: the canvas is not divisible by a layer's stride.
        PluginError: the network breaks its contract (non-finite outputs …).
    """
    with _time_limit(timeout, spec, str(dataset.attrs.get("dataset", "dataset"))):
        started = time.perf_counter()
        net = _prepare(dataset, spec, options, device=device, batch_size=batch_size,
                       max_pad=max_pad, dense=dense)
        s, t = dataset.sizes["sample"], dataset.sizes["transform"]
        c_in = dataset.sizes["channel"]
        h, w = net.height, net.width
        stack = np.concatenate([
            read_finite(dataset, "image"),
            read_finite(dataset, "transformed").reshape(s * t, c_in, h, w),
            read_finite(dataset, "realigned").reshape(s * t, c_in, h, w),
        ])
        _log_plan(net, len(stack))
        with _progress(net, len(stack), progress) as bar:
            feats, dense_feats = _maps(net, stack, bar)
        del stack
        groups: dict[str, xr.Dataset] = {}
        for depth, layer in enumerate(spec.layers):
            coords, attrs = _group_frame(net, dataset, layer, depth, feats[layer].shape[1])
            variables = _feature_variables(layer, feats[layer], s, t)
            if layer in dense_feats:
                variables.update(_feature_variables(layer, dense_feats[layer], s, t, "dense_"))
            groups[f"/{layer}"] = xr.Dataset(variables, coords=coords, attrs=attrs)
        root = _root(net, dataset, config, rule, time.perf_counter() - started)
    return xr.DataTree.from_dict({"/": root, **groups})


#: Default of ``features.chunk``: images whose maps the features job holds at once.
CHUNK = 32

#: The most bytes of maps (as built and dense, every layer) of one chunk: a network whose
#: maps of ``features.chunk`` images would exceed it gets fewer images per chunk. A chunk
#: costs about twice its maps at its peak (the finiteness check and the netCDF writes copy
#: a layer at a time): resnet18's paper-sized job (128 px, 17.4 MiB of maps an image)
#: peaked at 2393 MiB with 512 MiB (29 images a chunk); ``write_features`` on one of its
#: samples peaked at 2327 MiB with 29 and 1913 MiB with 14 (2026-12-01;
#: ``benchmarks/one_sample.py``), so 256 MiB (14).
MAX_CHUNK_BYTES = 256 << 20


def _bytes_per_image(net: Network) -> int:
    """Bytes of one image's maps, as built and dense (float32), from a forward pass of zeros."""
    zeros = torch.zeros(1, net.spec.in_channels, net.height + 2 * net.pad,
                        net.width + 2 * net.pad, device=net.device)
    with torch.inference_mode():
        out = net.extractor(zeros)
    total = 0
    for layer, (_, hl, wl) in net.crops.items():
        s = net.strides[layer]
        total += 4 * out[layer].shape[1] * hl * wl * (1 + (s * s if net.phases and s > 1 else 0))
    return total


def _chunks(samples: int, transforms: int, chunk: int) -> Iterator[tuple[str, int, slice]]:
    """The chunks of :func:`write_features`, in order: ("original", first sample, samples)
    for the originals, then ("pair", sample, transforms) for the transformed and realigned
    images of one sample (2 images per transform).

    Example:
        >>> list(_chunks(3, 5, 4))  # doctest: +NORMALIZE_WHITESPACE
        [('original', 0, slice(0, 3, None)), ('pair', 0, slice(0, 2, None)),
         ('pair', 0, slice(2, 4, None)), ('pair', 0, slice(4, 5, None)),
         ('pair', 1, slice(0, 2, None)), ('pair', 1, slice(2, 4, None)),
         ('pair', 1, slice(4, 5, None)), ('pair', 2, slice(0, 2, None)),
         ('pair', 2, slice(2, 4, None)), ('pair', 2, slice(4, 5, None))]
    """
    for s0 in range(0, samples, chunk):
        yield "original", s0, slice(s0, min(s0 + chunk, samples))
    per = max(1, chunk // 2)
    for s in range(samples):
        for t0 in range(0, transforms, per):
            yield "pair", s, slice(t0, min(t0 + per, transforms))


def write_features(
    dataset: xr.Dataset,
    spec: NetworkSpec,
    path: str | Path,
    options: Mapping[str, Any] | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    max_pad: int = 96,
    dense: bool = True,
    chunk: int = CHUNK,
    timeout: float = 0.0,
    progress: bool = True,
    config: Any = None,
    rule: str = "",
    keep_previous: bool = False,
) -> Path:
    """The file of :func:`extract_features`, computed and written ``chunk`` images at a time.

    The job's memory is the maps of one chunk (``chunk`` originals, or ``chunk // 2``
    transforms of one sample, each transformed and realigned), their dense maps and
    the network, whatever the number of samples and transforms; a chunk's maps take
    at most :data:`MAX_CHUNK_BYTES` (fewer images per chunk where one image's maps are
    large, as the dense maps of a deep layer of stride 16 or 32). ``dataset`` may be
    opened lazily (``featalign.io.open_dataset(..., lazy=True)``): its images are
    read a chunk at a time too, checked as they come (:func:`featalign.io.read_finite`).
    The file holds the same variables, values and attributes as
    ``write_netcdf(extract_features(...))``, each map stored as its own HDF5 chunk,
    and appears at ``path`` only once complete (:func:`featalign.io.incremental_netcdf`).

    Args:
        dataset: a dataset file (:mod:`featalign.datasets`), loaded or lazy.
        spec: the network.
        path: the features file to write.
        options, device, batch_size, max_pad, dense, timeout, progress, config, rule:
            as :func:`extract_features`.
        chunk: images per chunk (>= 1; see above; ``features.chunk``), at most: fewer
            where their maps would exceed :data:`MAX_CHUNK_BYTES`.
        keep_previous: also :func:`featalign.io.keep_as_previous` (the workflow's jobs do).

    Returns:
        ``path``.

    Raises:
        ValueError: ``chunk`` < 1.
        FeatureError, PluginError: as :func:`extract_features`.
        FileError: the dataset holds non-finite images (it is damaged).
    """
    if int(chunk) < 1:
        raise ValueError(f"features.chunk is {chunk}; give at least 1 image per chunk")
    chunk = int(chunk)
    with _time_limit(timeout, spec, str(dataset.attrs.get("dataset", "dataset"))):
        started = time.perf_counter()
        net = _prepare(dataset, spec, options, device=device, batch_size=batch_size,
                       max_pad=max_pad, dense=dense)
        s, t = dataset.sizes["sample"], dataset.sizes["transform"]
        n_images = s * (1 + 2 * t)
        _log_plan(net, n_images)
        per_image = _bytes_per_image(net)
        fits = max(1, MAX_CHUNK_BYTES // per_image)
        if fits < chunk:
            log.info("one image's maps take %.1f MiB: %d images per chunk instead of "
                     "features.chunk = %d", per_image / 2**20, fits, chunk)
            chunk = fits
        log.info("written in chunks of %d images (%.0f MiB of maps)", chunk,
                 chunk * per_image / 2**20)
        computing = time.perf_counter() - started
        with contextlib.ExitStack() as stack, _progress(net, n_images, progress) as bar:
            nc = None
            for what, first, part in _chunks(s, t, chunk):
                tic = time.perf_counter()
                if what == "original":
                    images = read_finite(dataset, "image", sample=part)
                    where = f" (samples {part.start}-{part.stop - 1})"
                else:
                    images = np.concatenate([
                        read_finite(dataset, name, sample=first, transform=part)
                        for name in ("transformed", "realigned")
                    ])
                    where = f" (sample {first}, transforms {part.start}-{part.stop - 1})"
                feats, dense_feats = _maps(net, images, bar, where)
                computing += time.perf_counter() - tic
                if nc is None:  # the first chunk tells the channels: create the file
                    nc = stack.enter_context(_open_features(
                        net, dataset, feats, path, config, rule, keep_previous))
                for layer in spec.layers:
                    g = nc[layer]
                    for prefix, maps in (("", feats), ("dense_", dense_feats)):
                        if layer not in maps:
                            continue
                        f = maps[layer]
                        if what == "original":
                            g[f"{prefix}original"][part] = f
                        else:
                            n = part.stop - part.start
                            g[f"{prefix}transformed"][first, part] = f[:n]
                            g[f"{prefix}realigned"][first, part] = f[n:]
                del feats, dense_feats, images
            nc.setncattr("compute_seconds", computing)
    return Path(path)


def _open_features(
    net: Network,
    dataset: xr.Dataset,
    feats: Mapping[str, np.ndarray],
    path: str | Path,
    config: Any,
    rule: str,
    keep_previous: bool,
) -> contextlib.AbstractContextManager:
    """The features file, every group's coordinates and attributes written, its maps empty."""
    groups: dict[str, xr.Dataset] = {}
    pending: dict[str, dict[str, Pending]] = {}
    for depth, layer in enumerate(net.spec.layers):
        c = feats[layer].shape[1]
        coords, attrs = _group_frame(net, dataset, layer, depth, c)
        groups[f"/{layer}"] = xr.Dataset(coords=coords, attrs=attrs)
        pending[f"/{layer}"] = {}
        for prefix in ("", "dense_") if "dense_stride" in attrs else ("",):
            for name, (dims, var_attrs) in _variable_frames(layer, prefix).items():
                lead = len(dims) - 3
                shape = [groups[f"/{layer}"].sizes[d] for d in dims[lead:]]
                pending[f"/{layer}"][name] = Pending(dims, var_attrs,
                                                     chunks=(1,) * lead + tuple(shape))
    tree = xr.DataTree.from_dict({"/": _root(net, dataset, config, rule, 0.0), **groups})
    return incremental_netcdf(tree, path, pending, keep_previous=keep_previous)
