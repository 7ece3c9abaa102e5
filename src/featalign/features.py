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

Feature maps are float32, zlib-compressed; each layer is its own netCDF group,
so one layer reads without the rest.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm import tqdm

from featalign import __version__
from featalign.extractor import build_extractor
from featalign.geometry import Grid
from featalign.io import file_sha256, make_attrs
from featalign.lattice import probe_grid
from featalign.plugins import NetworkSpec, PluginError
from featalign.runtime import BatchSizer, is_out_of_memory
from featalign.stitch import dense_phases, phase_padding, shift_and_stitch

__all__ = ["FeatureError", "convert_channels", "extract_features", "layer_grid", "padding_for"]

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


def _forward_all(
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
    out: dict[str, np.ndarray] = {}
    n = images.shape[0]
    sizer = BatchSizer(device, batch_size, limit=n)
    own_bar = bar is None
    if bar is None:
        bar = tqdm(total=n, desc=label, unit="img", disable=not progress, mininterval=1.0)
    start = 0
    with torch.inference_mode():
        while start < n:
            size = sizer.size
            batch = images[start : start + size].to(device)
            if any(widths):
                batch = torch.nn.functional.pad(batch, widths)
            try:
                with sizer.measure(batch.shape[0]):
                    feats = extractor(batch)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                del batch
                sizer.shrink(exc)
                continue
            for layer, (k0, hl, wl) in crops.items():
                f = feats[layer][..., k0 : k0 + hl, k0 : k0 + wl].float().cpu().numpy()
                if layer not in out:
                    out[layer] = np.empty((n, *f.shape[1:]), dtype=np.float32)
                out[layer][start : start + f.shape[0]] = f
            del feats
            start += batch.shape[0]
            bar.update(batch.shape[0])
    if own_bar:
        bar.close()
    return out


def _feature_variables(
    layer: str,
    f: np.ndarray,
    samples: int,
    transforms: int,
    spatial: tuple[str, str],
    prefix: str = "",
) -> dict[str, tuple]:
    """``original``, ``transformed`` and ``realigned`` (with ``prefix``) from the stacked maps.

    ``f`` is (S + 2·S·T, C, h, w): the originals, then the transformed and the
    realigned images, sample-major (the order of the stack that was run).
    """
    s, t = samples, transforms
    c, hl, wl = f.shape[1:]
    dense = " (dense, shift-and-stitch)" if prefix else ""
    return {
        f"{prefix}original": (("sample", "channel", *spatial), f[:s],
                              {"long_name": f"{layer} features of f{dense}", "units": "1"}),
        f"{prefix}transformed": (("sample", "transform", "channel", *spatial),
                                 f[s : s + s * t].reshape(s, t, c, hl, wl),
                                 {"long_name": f"{layer} features of T_g f{dense}", "units": "1"}),
        f"{prefix}realigned": (("sample", "transform", "channel", *spatial),
                               f[s + s * t :].reshape(s, t, c, hl, wl),
                               {"long_name": f"{layer} features of T_g^-1 T_g f{dense}",
                                "units": "1"}),
    }


def _dense_features(
    extractor: torch.nn.Module,
    images: torch.Tensor,
    crops: Mapping[str, tuple[int, int, int]],
    strides: Mapping[str, int],
    as_built: Mapping[str, np.ndarray],
    *,
    pad: int,
    device: torch.device,
    batch_size: int,
    bar: tqdm,
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
        return _forward_all(extractor, images, needed, pad=phase_padding(pad, *phase),
                            device=device, batch_size=batch_size, bar=bar)

    return shift_and_stitch(forward, strided)


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
    """Feature maps of a dataset's originals, transformed and realigned images.

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
        return _extract(dataset, spec, options, device=device, batch_size=batch_size,
                        max_pad=max_pad, dense=dense, progress=progress, config=config,
                        rule=rule)


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


def _extract(
    dataset: xr.Dataset,
    spec: NetworkSpec,
    options: Mapping[str, Any] | None,
    *,
    device: torch.device | str,
    batch_size: int,
    max_pad: int,
    dense: bool,
    progress: bool,
    config: Any,
    rule: str,
) -> xr.DataTree:
    started = time.perf_counter()
    device = torch.device(device)
    options = dict(options or {})
    images = torch.from_numpy(dataset.image.values)
    s, _, h, w = images.shape
    t = dataset.sizes["transform"]
    stack = torch.cat(
        [
            images,
            torch.from_numpy(dataset.transformed.values).reshape(s * t, -1, h, w),
            torch.from_numpy(dataset.realigned.values).reshape(s * t, -1, h, w),
        ]
    )
    stack = convert_channels(stack, spec.in_channels).contiguous()

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
    name = dataset.attrs.get("dataset", "dataset")
    log.info("%s on %s: %d images of %dx%d on %s", spec.name, name, stack.shape[0], h, w, device)
    pad = padding_for(probes, max_pad)
    crops = {
        layer: (pad // int(p.stride), p.height, p.width) for layer, p in probes.items()
    }
    strides = {layer: int(p.stride) for layer, p in probes.items()}
    phases = dense_phases(strides) if dense else []
    n_images = stack.shape[0]
    bar = tqdm(total=n_images * max(1, len(phases)), desc=f"{spec.name} on {name}",
               unit="img", disable=not progress, mininterval=1.0)
    try:
        feats = _forward_all(extractor, stack, crops, pad=pad, device=device,
                             batch_size=batch_size, bar=bar)
        dense_feats: dict[str, np.ndarray] = {}
        if phases:
            extra = sum(f.size * (strides[k] ** 2 - 1) for k, f in feats.items())
            log.info(
                "dense evaluation (shift-and-stitch) of %s: %d phases, %d more forward passes "
                "of %d images, %d more feature values (%.0f MiB as float32)",
                ", ".join(f"{k} (stride {v})" for k, v in strides.items() if v > 1),
                len(phases), len(phases) - 1, n_images, extra, extra * 4 / 2**20,
            )
            dense_feats = _dense_features(extractor, stack, crops, strides, feats, pad=pad,
                                          device=device, batch_size=batch_size, bar=bar)
    finally:
        bar.close()
    if dense and not phases:
        log.info("every layer has stride 1: the as-built maps are dense already")

    transform_coords = {k: dataset.coords[k] for k in ("family", "magnitude", "matrix", "row", "col")}
    groups: dict[str, xr.Dataset] = {}
    for depth, layer in enumerate(spec.layers):
        f = feats[layer]
        for what, values in (("", f), (" (dense)", dense_feats.get(layer))):
            if values is not None and not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                raise PluginError(
                    f"{spec.display_source}: layer '{layer}' of network '{spec.name}' produced "
                    f"{bad} non-finite values{what} on dataset '{name}'; make the network's "
                    "outputs finite"
                )
        p = probes[layer]
        c, hl, wl = f.shape[1:]
        ys = p.offset_y + p.stride * np.arange(hl) - (h - 1) / 2
        xs = p.offset_x + p.stride * np.arange(wl) - (w - 1) / 2
        variables = _feature_variables(layer, f, s, t, ("y", "x"))
        coords = {
            "sample": dataset.sample.values,
            "transform": dataset.transform.values,
            "channel": np.arange(c),
            "y": ("y", ys, {"long_name": "y (down), centred", "units": "pixel"}),
            "x": ("x", xs, {"long_name": "x (right), centred", "units": "pixel"}),
            **transform_coords,
        }
        extra_attrs: dict[str, Any] = {}
        if layer in dense_feats:
            d = dense_feats[layer]
            variables.update(_feature_variables(layer, d, s, t, ("dense_y", "dense_x"),
                                                prefix="dense_"))
            dy = p.offset_y + np.arange(d.shape[-2]) - (h - 1) / 2
            dx = p.offset_x + np.arange(d.shape[-1]) - (w - 1) / 2
            coords["dense_y"] = ("dense_y", dy, {"long_name": "y (down), centred, dense lattice",
                                                 "units": "pixel"})
            coords["dense_x"] = ("dense_x", dx, {"long_name": "x (right), centred, dense lattice",
                                                 "units": "pixel"})
            extra_attrs = {"dense_stride": 1, "dense_phases": int(p.stride) ** 2}
        groups[f"/{layer}"] = xr.Dataset(
            variables,
            coords=coords,
            attrs={
                "source": f"featalign {__version__}",
                "layer": layer,
                "depth": depth,
                "stride": p.stride,
                "offset_y": p.offset_y,
                "offset_x": p.offset_x,
                "channels": c,
                "image_height": h,
                "image_width": w,
                "receptive_field_radius": p.radius,
                "padding": pad,
                "layer_node": (spec.nodes or {}).get(layer, layer),
                **extra_attrs,
            },
        )
    root = xr.Dataset(
        attrs=make_attrs(
            f"featalign features of {name} through {spec.name}",
            config=config,
            seed=int(options.get("seed", -1)) if isinstance(options.get("seed"), int) else None,
            rule=rule,
            dataset=str(name),
            network=spec.name,
            layers=",".join(spec.layers),
            invariant_to=",".join(spec.invariant_to),
            in_channels=spec.in_channels,
            plugin_file=spec.display_source,
            plugin_sha256=spec.sha256(),
            dataset_config_sha256=str(dataset.attrs.get("config_sha256", "")),
            weights=str(options.get("weights", "")),
            weights_sha256=file_sha256(options["weights"]) if options.get("weights") else "",
            dense_evaluation=int(bool(phases)),
            compute_seconds=time.perf_counter() - started,
        )
    )
    return xr.DataTree.from_dict({"/": root, **groups})
