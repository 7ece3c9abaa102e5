"""The ``align`` stage's file in and file out: one layer of a features file -> an alignment Dataset.

Every layer is measured in two **evaluations** (dimension ``evaluation`` =
``as_built``, ``dense``): *as built*, the maps the network really produces, on
the layer's own lattice of stride s; *dense*, the layer evaluated by
shift-and-stitch (the features file's ``dense_*`` variables, :mod:`featalign.stitch`)
on the stride-1 lattice with the same offset. Dense maps are covariant to every
one-pixel shift, the premise of the theorem; as-built maps show what a spatial
transformer on the real network faces, aliasing included. Where the features
file has no dense maps (a layer of stride 1, which is dense already, or
``features.dense`` off) the dense evaluation *is* the as-built one: its results
are the as-built results, reused, not recomputed.

An alignment file (``results/alignment/{dataset}/{network}/{layer}.nc``) holds,
per (evaluation, sample, transform):

* ``error(evaluation, sample, transform, measure)``: the error of each measure
  (:data:`featalign.align.measures.MEASURES`, normalised as
  :data:`featalign.align.measures.NORMALISATION`);
* ``affine_matrix(evaluation, sample, transform, row, col)``: the best affine
  warp found (``tgt_from_src`` in centred image pixels, applied to Γ(T_g f));
* ``affine_iterations``, ``affine_converged``, ``affine_start`` (the name of the
  start that won: ``oracle``, a grid symmetry of
  :data:`featalign.align.starts.SYMMETRY_NAMES`, or ``family<k>``);
* ``dense_displacement_rms``: size of the dense warp's extra displacement;
* ``dense_control(evaluation, sample, transform, component, control_y, control_x)``:
  the dense warp itself, its control displacements (``component`` x, y) in image
  pixels on top of ``affine_matrix``
  (:func:`featalign.align.dense.warp_with_field` applies it to whole maps);
* the coordinates ``evaluation_stride(evaluation)`` (the stride of the maps
  measured: s as built, 1 dense when computed), ``evaluation_computed(evaluation)``
  (1: measured on its own maps; 0: the as-built results reused) and
  ``evaluation_region_pixels(evaluation)`` (feature pixels in R);
* the dataset's transform coordinates (``family``, ``magnitude``, ``matrix``),

with the layer's (as-built) ``stride``, ``depth``, ``channels``,
``dense_evaluation`` (how the dense evaluation was obtained) and provenance as
attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from featalign.align.layer import (
    ALIGNMENT_DEFAULTS,
    LayerAlignment,
    align_layer,
    oracle_points,
    values_in_region,
)
from featalign.align.measures import MEASURES, NORMALISATION, EmptyRegionError
from featalign.align.mixing import mixing_in_chunks
from featalign.features import layer_grid
from featalign.geometry import Grid
from featalign.io import FileError, make_attrs, open_dataset, read_finite
from featalign.names import EVALUATIONS
from featalign.runtime import retry_on_out_of_memory, working_elements

__all__ = ["EVALUATIONS", "alignment_dataset", "layer_names", "samples_per_chunk"]

log = logging.getLogger(__name__)


#: The features file's variables of each evaluation: Γ(f), Γ(T_g f), Γ(T_g⁻¹ T_g f).
_AS_BUILT = ("original", "transformed", "realigned")
_DENSE = ("dense_original", "dense_transformed", "dense_realigned")


def layer_names(path: str | Path) -> list[str]:
    """The layer groups of a features file, without reading any data."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return list(nc.groups)


def _check_maps(
    ds: xr.Dataset,
    names: tuple[str, str, str],
    path: Path,
    layer: str,
    rebuild: str,
) -> None:
    """Refuse shapes that disagree (original, transformed, realigned), reading no data.

    Finiteness is checked as the maps are read (:func:`featalign.io.read_finite`).
    """
    original, transformed, realigned = (ds[name] for name in names)
    s, c, h, w = original.shape
    if transformed.shape != (s, ds.sizes["transform"], c, h, w) or (
        realigned.shape != transformed.shape
    ):
        raise FileError(
            f"features file {path}, layer {layer!r}: shapes disagree ({names[0]} "
            f"{original.shape}, {names[1]} {transformed.shape}, {names[2]} "
            f"{realigned.shape}); delete it and rebuild with: {rebuild}"
        )


def samples_per_chunk(ds: xr.Dataset, names: tuple[str, str, str], elements: int) -> int:
    """Samples whose maps (Γ(f), and Γ(T_g f), Γ(T_g⁻¹ T_g f) of every transform) the align
    stage reads at once: as many as fit ``elements`` float32 values, at least one.

    Example:
        >>> ds = xr.Dataset({"o": (("sample", "c"), np.zeros((8, 10))),
        ...                  "t": (("sample", "transform", "c"), np.zeros((8, 2, 10)))})
        >>> samples_per_chunk(ds, ("o", "t", "t"), 120), samples_per_chunk(ds, ("o", "t", "t"), 1)
        (2, 1)
    """
    per_sample = sum(int(np.prod(ds[name].shape[1:])) for name in names)
    return max(1, min(ds.sizes["sample"], int(elements) // max(1, per_sample)))


def _concat(parts: list[LayerAlignment]) -> LayerAlignment:
    """One :class:`LayerAlignment` from those of consecutive chunks of samples."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def cat(field: str) -> torch.Tensor:
        return torch.cat([getattr(p, field) for p in parts])

    return replace(
        first,
        **{
            field: cat(field)
            for field in ("errors", "affine_matrix", "affine_iterations", "affine_converged",
                          "affine_start", "start_error", "dense_displacement_rms",
                          "dense_control")
        },
        seconds={k: sum(p.seconds.get(k, 0.0) for p in parts) for k in first.seconds},
    )


def _dense_maps(ds: xr.Dataset, path: Path, layer: str, rebuild: str) -> bool:
    """Whether the layer group holds dense maps (checked like the as-built ones)."""
    present = [name for name in _DENSE if name in ds]
    if not present:
        return False
    stride = int(ds.attrs["stride"])
    want = (ds.sizes["y"] * stride, ds.sizes["x"] * stride)
    if (
        len(present) < len(_DENSE)
        or int(ds.attrs.get("dense_stride", 0)) != 1
        or (ds.sizes.get("dense_y"), ds.sizes.get("dense_x")) != want
    ):
        raise FileError(
            f"features file {path}, layer {layer!r}: its dense maps are incomplete (variables "
            f"{present}, dense_stride {ds.attrs.get('dense_stride')}, "
            f"{ds.sizes.get('dense_y')}x{ds.sizes.get('dense_x')} where {want[0]}x{want[1]} "
            f"belongs to stride {stride}); delete it and rebuild with: {rebuild}"
        )
    _check_maps(ds, _DENSE, path, layer, rebuild)
    return True


def alignment_dataset(
    features_path: str | Path,
    layer: str,
    *,
    region_fraction: float,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    config: Any = None,
    rule: str = "",
) -> xr.Dataset:
    """The alignment dataset of one layer of a features file: every measure, every warp.

    Args:
        features_path: ``results/features/{dataset}/{network}.nc``.
        layer: the layer (group) to align.
        region_fraction: radius of the region R as a fraction of the half-canvas.
        options: the config's ``alignment`` section (defaults:
            :data:`featalign.align.layer.ALIGNMENT_DEFAULTS`).
        seed: seeds the optimiser's family starts.
        device: where to compute.
        progress: show progress bars.
        config: recorded as provenance.
        rule: the Snakemake rule, recorded as provenance.

    Returns:
        The alignment dataset described in the module docstring.

    Raises:
        FileError: the file lacks the layer, holds non-finite values, its shapes
            disagree, or the region R holds no feature pixel of the layer; the message
            names the file, the layer and the fix.
    """
    opts = {**ALIGNMENT_DEFAULTS, **dict(options or {})}
    path = Path(features_path)
    rebuild = f"snakemake {path}"
    if not path.exists():
        raise FileError(f"features file {path} does not exist; build it with: {rebuild}")
    try:
        layers = layer_names(path)
    except OSError as exc:
        raise FileError(
            f"features file {path} cannot be read ({exc}); it is damaged or incomplete: "
            f"delete it and rebuild with: {rebuild}"
        ) from exc
    if layer not in layers:
        raise FileError(
            f"features file {path} has no layer {layer!r} (it has {', '.join(layers) or 'none'}); "
            f"delete it and rebuild with: {rebuild}"
        )
    root = xr.open_datatree(path)
    attrs = dict(root.attrs)
    root.close()
    with open_dataset(
        path,
        kind="features",
        rebuild=rebuild,
        group=layer,
        variables=("original", "transformed", "realigned"),
        attrs=(
            "stride",
            "offset_y",
            "offset_x",
            "image_height",
            "image_width",
            "depth",
            "channels",
        ),
        lazy=True,
    ) as ds:
        return _align(ds, path, layer, attrs, rebuild, region_fraction=region_fraction,
                      opts=opts, seed=seed, device=torch.device(device), progress=progress,
                      config=config, rule=rule)


def _align(
    ds: xr.Dataset,
    path: Path,
    layer: str,
    attrs: Mapping[str, Any],
    rebuild: str,
    *,
    region_fraction: float,
    opts: Mapping[str, Any],
    seed: int,
    device: torch.device,
    progress: bool,
    config: Any,
    rule: str,
) -> xr.Dataset:
    """:func:`alignment_dataset` on the opened (lazy) layer group ``ds``."""
    _check_maps(ds, _AS_BUILT, path, layer, rebuild)
    s, c, h, w = ds.original.shape
    stride = int(ds.attrs["stride"])
    grid = layer_grid(ds)
    radius = region_fraction * min(grid.image_height or h, grid.image_width or w) / 2
    dense_maps = _dense_maps(ds, path, layer, rebuild)
    matrix = torch.from_numpy(ds.matrix.values)
    families = [str(f) for f in ds.family.values]

    def measure(names: tuple[str, str, str], on: Grid, evaluation: str) -> LayerAlignment:
        elements = working_elements(device, int(opts["max_batch_elements"]))
        per = samples_per_chunk(ds, names, elements)
        if per < s:
            log.info("%s: reading %d of %d samples at a time", evaluation, per, s)
        chunked = per < s

        def read(s0: int, which: tuple[str, ...] = names) -> list[torch.Tensor]:
            return [torch.from_numpy(read_finite(ds, name, sample=slice(s0, s0 + per)))
                    for name in which]

        def read_in_region(s0: int, name: str) -> torch.Tensor:
            """Γ(T_g⁻¹ T_g f) only at R (the ``input`` measure reads no more), read a few
            transforms at a time: a chunk never holds these maps whole."""
            t_count = ds.sizes["transform"]
            per_transform = per * int(np.prod(ds[name].shape[2:]))
            step = max(1, min(t_count, elements // max(1, per_transform)))
            return torch.cat([
                values_in_region(torch.from_numpy(read_finite(
                    ds, name, sample=slice(s0, s0 + per), transform=slice(t0, t0 + step)
                )), on, radius)
                for t0 in range(0, t_count, step)
            ], dim=1)

        parts = []
        for s0 in range(0, s, per):
            maps = [*read(s0, names[:2]), read_in_region(s0, names[2])]

            def run(elements: int, maps: list[torch.Tensor] = maps) -> LayerAlignment:
                return align_layer(
                    *maps,
                    matrix,
                    on,
                    region_radius=radius,
                    families=families,
                    starts_per_family=int(opts["starts_per_family"]),
                    method=str(opts["method"]),
                    dense_grid=int(opts["dense_grid"]),
                    dense_smoothness=float(opts["dense_smoothness"]),
                    dense_method=str(opts["dense_method"]),
                    dense_steps=opts["dense_steps"],  # None: the method's own
                    ridge=float(opts["ridge"]),
                    seed=seed,
                    device=device,
                    progress=progress,
                    max_batch_elements=elements,
                    mixing=not chunked,
                )

            try:
                parts.append(retry_on_out_of_memory(
                    run, elements, what=f"{path} layer {layer} ({evaluation})"
                ))
            except EmptyRegionError as err:
                raise FileError(
                    f"features file {path}, layer {layer!r} ({on.height}x{on.width} at stride "
                    f"{on.stride:g}, {evaluation}): {err}"
                ) from None
            del maps
        result = _concat(parts)
        if chunked:  # the mixing fit pools every sample: a second pass, a chunk at a time
            def chunks() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
                for s0 in range(0, s, per):
                    yield oracle_points(*read(s0, names[:2]), matrix, on, radius, device)

            result.errors[..., MEASURES.index("mixing")] = mixing_in_chunks(
                chunks, s, float(opts["ridge"])
            )
        return result

    built = measure(_AS_BUILT, grid, "as built")
    if dense_maps:
        hd, wd = ds.sizes["dense_y"], ds.sizes["dense_x"]
        dense_on = Grid(
            hd, wd, 1.0, grid.offset_y, grid.offset_x, grid.image_height, grid.image_width
        )
        log.info(
            "dense evaluation: %dx%d maps at stride 1 (as built: %dx%d at stride %d)",
            hd,
            wd,
            h,
            w,
            stride,
        )
        dense = measure(_DENSE, dense_on, "dense")
        how = (
            f"computed: shift-and-stitch over {stride}x{stride} phases, a {hd}x{wd} map of stride 1"
        )
    else:
        dense = built
        how = (
            "reused: the layer has stride 1, its maps are dense already"
            if stride == 1
            else "reused: the features file has no dense maps (features.dense is off), "
            f"so the dense evaluation is the as-built one at stride {stride}"
        )
        log.info("dense evaluation %s", how)
    results = (built, dense)
    starts = np.array(built.start_names, dtype=object)
    if dense.start_names != built.start_names:  # same seed, same families: same starts
        raise AssertionError("the dense evaluation drew other starts than the as-built one")

    def both(field: str) -> np.ndarray:
        return np.stack([getattr(r, field).numpy() for r in results])

    dims2 = ("evaluation", "sample", "transform")
    return xr.Dataset(
        {
            "error": (
                (*dims2, "measure"),
                both("errors"),
                {"long_name": "relative error", "units": "1", "normalisation": NORMALISATION},
            ),
            "affine_matrix": (
                (*dims2, "row", "col"),
                both("affine_matrix"),
                {
                    "long_name": "best affine warp of the transformed image's features",
                    "units": "pixel",
                    "transform_direction": "tgt_from_src (x -> A x + b), applied to Gamma(T_g f)",
                    "coordinate_frame": "centred image pixel coordinates (x right, y down)",
                },
            ),
            "affine_iterations": (
                dims2,
                both("affine_iterations").astype(np.int32),
                {"long_name": "optimiser iterations", "units": "1"},
            ),
            "affine_converged": (
                dims2,
                both("affine_converged").astype(np.int8),
                {"long_name": "optimiser converged (1) or not (0)", "units": "1"},
            ),
            "affine_start": (
                dims2,
                starts[both("affine_start")],
                {"long_name": "start of the winning optimisation"},
            ),
            "dense_displacement_rms": (
                dims2,
                both("dense_displacement_rms"),
                {
                    "long_name": "rms displacement of the dense warp beyond the affine",
                    "units": "pixel",
                },
            ),
            "dense_control": (
                (*dims2, "component", "control_y", "control_x"),
                both("dense_control"),
                {
                    "long_name": "control displacements of the dense warp beyond the affine "
                    "(bicubic over the canvas, outer points on its border)",
                    "units": "pixel",
                    "coordinate_frame": "image pixels of the source (transformed) frame, "
                    "added where affine_matrix reads",
                },
            ),
        },
        coords={
            "evaluation": (
                "evaluation",
                list(EVALUATIONS),
                {
                    "long_name": "as_built: the layer's own strided maps; dense: shift-and-stitch "
                    "maps of stride 1 (the theorem's premise)",
                },
            ),
            "evaluation_stride": (
                "evaluation",
                np.array([stride, 1 if dense_maps else stride], dtype=np.int32),
                {
                    "long_name": "stride of the maps measured",
                    "units": "pixel",
                },
            ),
            "evaluation_computed": (
                "evaluation",
                np.array([1, 1 if dense_maps else 0], dtype=np.int8),
                {
                    "long_name": "measured on its own maps (1) or the as-built results reused (0)",
                },
            ),
            "evaluation_region_pixels": (
                "evaluation",
                np.array([r.region_pixels for r in results], dtype=np.int64),
                {
                    "long_name": "feature pixels in the region R",
                    "units": "1",
                },
            ),
            "sample": ds.sample.values,
            "transform": ds.transform.values,
            "measure": list(built.measures),
            "component": ("component", ["x", "y"]),
            **{k: ds.coords[k] for k in ("family", "magnitude", "matrix", "row", "col")},
        },
        attrs=make_attrs(
            f"featalign alignment of {attrs.get('network')} layer {layer} on "
            f"{attrs.get('dataset')}",
            config=config,
            seed=seed,
            rule=rule,
            dataset=str(attrs.get("dataset", "")),
            network=str(attrs.get("network", "")),
            invariant_to=str(attrs.get("invariant_to", "")),
            layer=layer,
            depth=int(ds.attrs["depth"]),
            stride=stride,
            dense_evaluation=how,
            channels=int(ds.attrs["channels"]),
            offset_y=float(ds.attrs["offset_y"]),
            offset_x=float(ds.attrs["offset_x"]),
            image_height=int(ds.attrs["image_height"]),
            image_width=int(ds.attrs["image_width"]),
            region_radius=float(radius),
            region_pixels=int(built.region_pixels),
            features_sha256_of_config=str(attrs.get("config_sha256", "")),
            compute_seconds=float(sum(built.seconds.values()))
            + (float(sum(dense.seconds.values())) if dense_maps else 0.0),
        ),
    )
