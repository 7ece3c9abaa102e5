"""The ``align`` stage's file in and file out: one layer of a features file -> an alignment Dataset.

An alignment file (``results/alignment/{dataset}/{network}/{layer}.nc``) holds,
per (sample, transform):

* ``error(sample, transform, measure)``: the error of each measure
  (:data:`featalign.align.measures.MEASURES`, normalised as
  :data:`featalign.align.measures.NORMALISATION`);
* ``affine_matrix(sample, transform, row, col)``: the best affine warp found
  (``tgt_from_src`` in centred image pixels, applied to Γ(T_g f));
* ``affine_iterations``, ``affine_converged``, ``affine_start`` (the name of the
  start that won: ``oracle``, a grid symmetry of
  :data:`featalign.align.starts.SYMMETRY_NAMES`, or ``family<k>``);
* ``dense_displacement_rms``: size of the dense warp's extra displacement;
* the dataset's transform coordinates (``family``, ``magnitude``, ``matrix``),

with the layer's ``stride``, ``depth`` and ``channels`` and provenance as
attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from featalign.align.layer import ALIGNMENT_DEFAULTS, LayerAlignment, align_layer
from featalign.align.measures import NORMALISATION, EmptyRegionError
from featalign.features import layer_grid
from featalign.io import FileError, make_attrs, open_dataset
from featalign.runtime import retry_on_out_of_memory, working_elements

__all__ = ["alignment_dataset", "layer_names"]

log = logging.getLogger(__name__)


def layer_names(path: str | Path) -> list[str]:
    """The layer groups of a features file, without reading any data."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return list(nc.groups)


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
    ds = open_dataset(
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
    )
    for name in ("original", "transformed", "realigned"):
        if not np.isfinite(ds[name].values).all():
            raise FileError(
                f"features file {path}, layer {layer!r}: {name} holds NaN or Inf; "
                f"check the network with `featalign plugins check {attrs.get('network', '')}` "
                f"and rebuild with: {rebuild}"
            )
    s, c, h, w = ds.original.shape
    if ds.transformed.shape != (s, ds.sizes["transform"], c, h, w) or (
        ds.realigned.shape != ds.transformed.shape
    ):
        raise FileError(
            f"features file {path}, layer {layer!r}: shapes disagree (original "
            f"{ds.original.shape}, transformed {ds.transformed.shape}, realigned "
            f"{ds.realigned.shape}); delete it and rebuild with: {rebuild}"
        )
    grid = layer_grid(ds)
    radius = region_fraction * min(grid.image_height or h, grid.image_width or w) / 2
    device = torch.device(device)

    def run(elements: int) -> LayerAlignment:
        return align_layer(
            torch.from_numpy(ds.original.values),
            torch.from_numpy(ds.transformed.values),
            torch.from_numpy(ds.realigned.values),
            torch.from_numpy(ds.matrix.values),
            grid,
            region_radius=radius,
            families=[str(f) for f in ds.family.values],
            starts_per_family=int(opts["starts_per_family"]),
            method=str(opts["method"]),
            dense_grid=int(opts["dense_grid"]),
            dense_smoothness=float(opts["dense_smoothness"]),
            dense_steps=int(opts["dense_steps"]),
            ridge=float(opts["ridge"]),
            seed=seed,
            device=device,
            progress=progress,
            max_batch_elements=elements,
        )

    try:
        result = retry_on_out_of_memory(
            run,
            working_elements(device, int(opts["max_batch_elements"])),
            what=f"{path} layer {layer}",
        )
    except EmptyRegionError as err:
        raise FileError(
            f"features file {path}, layer {layer!r} ({h}x{w} at stride {grid.stride}): {err}"
        ) from None
    starts = np.array(result.start_names, dtype=object)
    dims2 = ("sample", "transform")
    return xr.Dataset(
        {
            "error": (
                (*dims2, "measure"),
                result.errors.numpy(),
                {"long_name": "relative error", "units": "1", "normalisation": NORMALISATION},
            ),
            "affine_matrix": (
                (*dims2, "row", "col"),
                result.affine_matrix.numpy(),
                {
                    "long_name": "best affine warp of the transformed image's features",
                    "units": "pixel",
                    "transform_direction": "tgt_from_src (x -> A x + b), applied to Gamma(T_g f)",
                    "coordinate_frame": "centred image pixel coordinates (x right, y down)",
                },
            ),
            "affine_iterations": (
                dims2,
                result.affine_iterations.numpy().astype(np.int32),
                {"long_name": "optimiser iterations", "units": "1"},
            ),
            "affine_converged": (
                dims2,
                result.affine_converged.numpy().astype(np.int8),
                {"long_name": "optimiser converged (1) or not (0)", "units": "1"},
            ),
            "affine_start": (
                dims2,
                starts[result.affine_start.numpy()],
                {"long_name": "start of the winning optimisation"},
            ),
            "dense_displacement_rms": (
                dims2,
                result.dense_displacement_rms.numpy(),
                {
                    "long_name": "rms displacement of the dense warp beyond the affine",
                    "units": "pixel",
                },
            ),
        },
        coords={
            "sample": ds.sample.values,
            "transform": ds.transform.values,
            "measure": list(result.measures),
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
            stride=int(ds.attrs["stride"]),
            channels=int(ds.attrs["channels"]),
            offset_y=float(ds.attrs["offset_y"]),
            offset_x=float(ds.attrs["offset_x"]),
            image_height=int(ds.attrs["image_height"]),
            image_width=int(ds.attrs["image_width"]),
            region_radius=float(radius),
            region_pixels=int(result.region_pixels),
            features_sha256_of_config=str(attrs.get("config_sha256", "")),
            compute_seconds=float(sum(result.seconds.values())),
        ),
    )
