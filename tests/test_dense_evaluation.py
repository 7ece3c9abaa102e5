"""Dense evaluation through the align stage: both evaluations in one alignment file.

A features file of vgg_random (layers of stride 1, 2 and 4, with their dense
maps) is aligned layer by layer (:func:`featalign.align.files.alignment_dataset`);
the errors table then holds one row set per evaluation
(:func:`featalign.summary.tables.errors_table`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from featalign.align.files import EVALUATIONS, alignment_dataset
from featalign.datasets import DatasetSpec, build_dataset
from featalign.features import extract_features
from featalign.io import FileError, write_netcdf
from featalign.plugins import get_network
from featalign.summary.tables import ERRORS_COLUMNS, errors_table

#: Fast optimiser settings: the oracle start and the 8 grid symmetries, no dense warp.
FAST = {"starts_per_family": 0, "dense_steps": 0}


@pytest.fixture(scope="module")
def dataset() -> xr.Dataset:
    # 2 px is a sub-stride shift at stride 4, 4 px a stride multiple
    spec = DatasetSpec(name="dense", source="textures", samples=2, size=48, channels=3,
                       window_radius=0.5)
    return build_dataset(spec, {"translation": [2, 4], "rotation": [30]})


@pytest.fixture(scope="module")
def features(dataset, tmp_path_factory) -> dict[str, Path]:
    net = get_network("vgg_random")
    folder = tmp_path_factory.mktemp("dense")
    return {
        dense: write_netcdf(extract_features(dataset, net, {"width": 8}, dense=dense,
                                             progress=False), folder / f"{dense}.nc")
        for dense in (True, False)
    }


@pytest.fixture(scope="module")
def aligned(features) -> dict[str, xr.Dataset]:
    return {layer: alignment_dataset(features[True], layer, region_fraction=0.5, options=FAST,
                                     progress=False)
            for layer in ("block1", "block3")}


def excess(al: xr.Dataset) -> xr.DataArray:
    """min(affine, dense) − input per (evaluation, sample, transform)."""
    e = al.error
    return e.sel(measure=["affine", "dense"]).min("measure") - e.sel(measure="input")


def test_every_problem_has_both_evaluations(aligned):
    al = aligned["block3"]
    assert tuple(al.evaluation.values) == EVALUATIONS == ("as_built", "dense")
    for name in ("error", "affine_matrix", "affine_iterations", "affine_converged",
                 "affine_start", "dense_displacement_rms"):
        assert al[name].dims[:3] == ("evaluation", "sample", "transform"), name
    assert al.attrs["stride"] == 4
    assert al.evaluation_stride.values.tolist() == [4, 1]
    assert al.evaluation_computed.values.tolist() == [1, 1]
    assert al.attrs["dense_evaluation"].startswith("computed")
    # the dense lattice holds s² times the pixels of R
    built, dense = al.evaluation_region_pixels.values.tolist()
    assert built == al.attrs["region_pixels"] and 12 * built < dense < 20 * built


def test_stride_one_reuses_the_as_built_evaluation(aligned):
    al = aligned["block1"]
    assert al.evaluation_stride.values.tolist() == [1, 1]
    assert al.evaluation_computed.values.tolist() == [1, 0]
    assert al.attrs["dense_evaluation"].startswith("reused: the layer has stride 1")
    for name in ("error", "affine_matrix", "affine_start"):
        a, d = (al[name].sel(evaluation=e).values for e in EVALUATIONS)
        assert (a == d)[np.isfinite(a) if a.dtype.kind == "f" else ...].all(), name


def test_dense_off_reuses_the_strided_maps(features, aligned):
    al = alignment_dataset(features[False], "block3", region_fraction=0.5, options=FAST,
                           progress=False)
    assert al.evaluation_stride.values.tolist() == [4, 4]
    assert al.evaluation_computed.values.tolist() == [1, 0]
    assert "features.dense is off" in al.attrs["dense_evaluation"]
    np.testing.assert_array_equal(al.error.sel(evaluation="dense").values,
                                  al.error.sel(evaluation="as_built").values)
    # the as-built evaluation does not depend on whether dense maps were stored
    np.testing.assert_array_equal(al.error.sel(evaluation="as_built").values,
                                  aligned["block3"].error.sel(evaluation="as_built").values)


def test_sub_stride_shift_aligns_densely_not_as_built(dataset, aligned):
    """Known answer at stride 4: a 2 px shift aliases as built; dense it aligns to the floor."""
    ex = excess(aligned["block3"])
    two = int(np.flatnonzero((dataset.family.values == "translation")
                             & (dataset.magnitude.values == 2))[0])
    four = int(np.flatnonzero((dataset.family.values == "translation")
                              & (dataset.magnitude.values == 4))[0])
    built, dense = (ex.sel(evaluation=e).isel(transform=two).values for e in EVALUATIONS)
    assert (built > 0.01).all(), built
    assert (np.abs(dense) < 1e-4).all(), dense
    assert (built > dense + 0.01).all()
    # a shift by the stride aligns in both evaluations
    assert (np.abs(ex.isel(transform=four).values) < 1e-4).all()


def test_errors_table_has_one_row_set_per_evaluation(aligned, tmp_path):
    paths = [write_netcdf(al, tmp_path / f"{layer}.nc") for layer, al in aligned.items()]
    df = errors_table(paths)
    assert tuple(df.columns) == ERRORS_COLUMNS
    assert list(df.columns[:4]) == ["dataset", "network", "layer", "evaluation"]
    assert set(df.evaluation) == {"as_built", "dense"}
    block3 = df[df.layer == "block3"]
    assert set(block3.layer_stride) == {4}
    assert set(block3[block3.evaluation == "dense"].stride) == {1}
    assert set(block3[block3.evaluation == "as_built"].stride) == {4}
    two = block3[(block3.family == "translation") & (block3.magnitude == 2)]
    # a 2 px shift is a translation the theory predicts aligned, at dense evaluation only
    assert set(two[two.evaluation == "dense"].claim_family) == {"translation"}
    assert set(two[two.evaluation == "as_built"].claim_family) == {"translation_substride"}
    per_eval = df.groupby(["layer", "evaluation"]).size()
    assert per_eval.nunique() == 1  # the same problems and measures in every evaluation


def test_errors_table_refuses_a_file_without_evaluations(aligned, tmp_path):
    old = aligned["block1"].sel(evaluation="as_built", drop=True)
    old = old.drop_vars(["evaluation_stride", "evaluation_computed", "evaluation_region_pixels"],
                        errors="ignore")
    assert old.error.dims == ("sample", "transform", "measure")  # as written before
    path = write_netcdf(old, tmp_path / "old.nc")
    with pytest.raises(FileError, match=r"old.nc lacks evaluation_stride .*rebuild with: "
                                        r"snakemake .*old.nc"):
        errors_table([path])


def test_example_panel_shows_the_as_built_warp(dataset, features, aligned, tmp_path):
    from featalign.figures.example_panel import plot_example_panel

    data = write_netcdf(dataset, tmp_path / "dataset.nc")
    al = write_netcdf(aligned["block3"], tmp_path / "block3.nc")
    fig = plot_example_panel(data, {"vgg_random": features[True]}, {"vgg_random": al},
                             {"vgg_random": "block3"}, tmp_path / "p.png", tmp_path / "p.pdf")
    titles = [ax.get_title() for ax in fig.axes]
    want = float(aligned["block3"].error.sel(evaluation="as_built", measure="affine")
                 .isel(sample=0, transform=2))
    shown = next(t for t in titles if "affine error" in t)
    assert f"affine error {want:.3g}" in shown
