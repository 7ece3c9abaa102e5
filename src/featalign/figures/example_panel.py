"""Figure: one example, one row per network: image, its transform, and five feature maps.

The maps and errors come from :func:`featalign.figures.example_maps.example_panels`;
this module reads the files and draws.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from featalign.figures.example_maps import ExamplePanels, default_transform, example_panels
from featalign.figures.style import save, style, units_label

__all__ = ["plot_example_panel"]

log = logging.getLogger(__name__)

#: Title of each measured feature panel's error.
_PANEL_ERROR = {
    "none": "unaligned error",
    "oracle": "oracle error",
    "affine": "affine error",
    "input": "input error",
}


def plot_example_panel(
    dataset_path: str | Path,
    features_paths: Mapping[str, str | Path],
    alignment_paths: Mapping[str, str | Path],
    layer: Mapping[str, str],
    png: str | Path,
    pdf: str | Path,
    *,
    sample: int = 0,
    transform: int | None = None,
    channel: int | None = None,
    region_radius: float | None = None,
) -> Figure:
    """One example, one row per network: image, its transform, and five feature maps.

    Columns: f, T_g f, then one channel of Γ(f), Γ(T_g f), the oracle warp
    T_g⁻¹ Γ(T_g f), the fitted affine warp (from the alignment file's
    ``affine_matrix``, its ``as_built`` evaluation: the panel shows the maps the
    network really produces) and the input-aligned Γ(T_g⁻¹ T_g f); each feature panel's
    title gives its relative error against Γ(f) (:func:`example_panels`). The five
    feature maps of a row share one colour scale.

    Args:
        dataset_path: the dataset file.
        features_paths: network -> its features file.
        alignment_paths: network -> its alignment file for the shown layer (a network
            missing here gets an empty affine panel).
        layer: network -> the layer to show.
        png: output PNG path.
        pdf: output PDF path.
        sample: position of the sample.
        transform: position of the transform; default :func:`default_transform`.
        channel: the channel to show (every row); default: per row, the channel of
            Γ(f) with the most energy about its mean over R.
        region_radius: radius of R in image pixels for the errors; default: the
            alignment file's ``region_radius`` attribute if it has one, else the disk
            inscribed in the canvas. R is outlined (dashed) on the feature panels.

    Returns:
        The (closed) figure.

    Raises:
        ValueError: if no networks are given or a network has no layer.
    """
    networks = list(features_paths)
    if not networks:
        raise ValueError("plot_example_panel needs at least one network in features_paths")
    missing = [n for n in networks if n not in layer]
    if missing:
        raise ValueError(f"no layer given for networks {missing}")
    with xr.open_dataset(dataset_path) as dsf:
        fams = [str(f) for f in dsf["family"].values]
        mags = [float(m) for m in dsf["magnitude"].values]
        t = default_transform(fams, mags) if transform is None else int(transform)
        image = dsf["image"].isel(sample=sample).values
        moved = dsf["transformed"].isel(sample=sample, transform=t).values
        matrix = dsf["matrix"].isel(transform=t).values
        dataset_name = str(dsf.attrs.get("dataset", Path(dataset_path).stem))
    log.info(
        "example panel: %s, sample %d, transform %d (%s)",
        dataset_name,
        sample,
        t,
        _transform_label(fams[t], mags[t]),
    )

    rows: list[tuple[str, ExamplePanels, str]] = []
    for net in networks:
        affine_matrix = None
        radius = region_radius
        if net in alignment_paths:
            with xr.open_dataset(alignment_paths[net]) as al:
                fitted = al["affine_matrix"]
                if "evaluation" in fitted.dims:  # the panel shows the real (as-built) maps
                    fitted = fitted.sel(evaluation="as_built")
                affine_matrix = fitted.isel(sample=sample, transform=t).values
                if radius is None and "region_radius" in al.attrs:
                    radius = float(al.attrs["region_radius"])
        tree = xr.open_datatree(features_paths[net])
        try:  # the as-built maps only: the dense ones (s² times larger) are not shown
            node = tree[layer[net]].to_dataset()
            node = node.drop_dims(["dense_y", "dense_x"], errors="ignore").load()
        finally:
            tree.close()
        panels = example_panels(
            node,
            matrix,
            sample=sample,
            transform=t,
            affine_matrix=affine_matrix,
            channel=channel,
            region_radius=radius,
        )
        rows.append((net, panels, units_label("feature value", node["original"].attrs)))

    titles = {
        "original": ("$\\Gamma(f)$", None),
        "transformed": ("$\\Gamma(T_g f)$", "none"),
        "oracle": ("$T_g^{-1}\\Gamma(T_g f)$", "oracle"),
        "affine": ("affine warp of $\\Gamma(T_g f)$", "affine"),
        "input": ("$\\Gamma(T_g^{-1}T_g f)$", "input"),
    }
    n = len(rows)
    with style():
        fig, axes = plt.subplots(
            n,
            8,
            figsize=(11.0, 0.7 + 1.75 * n),
            squeeze=False,
            layout="constrained",
            gridspec_kw={"width_ratios": [1] * 7 + [0.08]},
        )
        for i, (net, panels, cbar_label) in enumerate(rows):
            ax_img, ax_moved = axes[i, 0], axes[i, 1]
            grey = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if image.shape[0] == 1 else {}
            ax_img.imshow(_image_rgb(image), **grey)
            ax_moved.imshow(_image_rgb(moved), **grey)
            ax_img.set_title("image $f$")
            ax_moved.set_title("$T_g f$")
            scale = _colour_scale(panels)
            im = None
            for k, key in enumerate(("original", "transformed", "oracle", "affine", "input")):
                ax = axes[i, 2 + k]
                title, measure = titles[key]
                if key in panels.maps:
                    im = ax.imshow(panels.maps[key], interpolation="nearest", **scale)
                    if panels.region is not None and not panels.region.all():
                        ax.contour(
                            panels.region.astype(float),
                            levels=[0.5],
                            colors="white",
                            linewidths=0.7,
                            linestyles="--",
                        )
                    if measure is not None:
                        title += f"\n{_PANEL_ERROR[measure]} {panels.errors[measure]:.3g}"
                else:
                    ax.text(
                        0.5,
                        0.5,
                        "no alignment\nfile",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                    )
                ax.set_title(title if key != "original" else title + "\n ")
            for ax in axes[i, :7]:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
            axes[i, 0].set_ylabel(f"{net}\n{layer[net]}, channel {panels.channel}")
            if im is not None:
                fig.colorbar(im, cax=axes[i, 7], label=cbar_label, extend="both")
        fig.suptitle(
            f"{dataset_name}, sample {sample}: {_transform_label(fams[t], mags[t])} "
            "(titles: relative error against Γ(f) over R, dashed)"
        )
    return save(fig, png, pdf)


def _colour_scale(panels: ExamplePanels) -> dict[str, Any]:
    """One colour scale for a row: the 1st–99th percentile of its feature values inside R.

    Diverging and symmetric about 0 when the values change sign, sequential otherwise;
    values outside (zero padding, say) saturate.
    """
    region = panels.region if panels.region is not None else Ellipsis
    values = np.concatenate([m[region].ravel() for m in panels.maps.values()])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"cmap": "viridis"}
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    if lo < 0 < hi:
        vmax = max(-lo, hi)
        return {"cmap": "RdBu_r", "vmin": -vmax, "vmax": vmax}
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return {"cmap": "viridis", "vmin": lo, "vmax": hi}


def _image_rgb(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) for imshow."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def _transform_label(family: str, magnitude: float) -> str:
    units = {"rotation": "°", "reflection": "° axis", "translation": " px"}
    return f"{family.replace('_', ' ')} {magnitude:g}{units.get(family, '')}"
