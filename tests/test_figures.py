"""Figures: files written, sizes, axis labels, verdict marks, example panels, claims.csv's numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from featalign import geometry
from featalign.figures.affine_vs_oracle import plot_affine_vs_oracle
from featalign.figures.error_vs_magnitude import plot_error_vs_magnitude
from featalign.figures.example_maps import default_transform, example_panels
from featalign.figures.example_panel import plot_example_panel
from featalign.figures.excess_vs_depth import excess_by_depth, plot_excess_vs_depth
from featalign.figures.separation import plot_separation, separation_points
from featalign.figures.style import (
    DISAGREEMENT_MARK,
    MAGNITUDE_LABELS,
    UNRESOLVED_MARK,
    VERDICT_COLOURS,
    family_label,
)
from featalign.figures.training_curve import plot_training_curve
from featalign.figures.verdict_grid import plot_verdict_grid
from featalign.summary import (
    CLAIMS_COLUMNS,
    ERRORS_COLUMNS,
    claim_family,
    claims_table,
    separation_table,
)

NETWORKS = ("generic", "invariant")
LAYERS = (("conv1", 0, 1, 4), ("conv2", 1, 2, 6))  # name, depth, stride, channels
SWEEP = {"translation": (1.0, 2.0, 4.0), "rotation": (15.0, 30.0, 90.0), "shear": (0.1, 0.2, 0.3)}
MEASURES = ("none", "oracle", "affine", "dense", "mixing", "input", "constant")
SAMPLES = 4
TAU = 0.001


# --------------------------------------------------------------------------- synthetic inputs


@pytest.fixture(scope="module")
def errors() -> pd.DataFrame:
    """2 networks × 2 layers × 2 evaluations × 3 families × 3 magnitudes × 4 samples × 7
    measures; dense evaluation (stride 1) aligns every shift, the maps as built of the
    strided layer carry some aliasing on top."""
    rng = np.random.default_rng(0)
    rows = []
    for net in NETWORKS:
        for layer, depth, layer_stride, channels in LAYERS:
            for evaluation in ("as_built", "dense"):
                stride = layer_stride if evaluation == "as_built" else 1
                t = 0
                for fam, mags in SWEEP.items():
                    for mag in mags:
                        cf = claim_family(fam, mag, stride)
                        for s in range(SAMPLES):
                            floor = 1e-3 * (1 + rng.random())
                            aligned = cf == "translation" or (
                                net == "invariant" and fam == "rotation"
                            )
                            growth = 1 + SWEEP[fam].index(mag)  # rises with the magnitude
                            excess = 0.0 if aligned else 0.01 * growth * (depth + 1)
                            excess *= 1 + rng.random()
                            if stride > 1:
                                excess += 0.01  # aliasing
                            affine = floor + excess
                            values = {
                                "none": 0.5 + 0.3 * rng.random(),
                                "oracle": 1.3 * affine,
                                "affine": affine,
                                "dense": 0.95 * affine + 0.05 * floor,
                                "mixing": 0.05,
                                "input": floor,
                                "constant": 1.0,
                            }
                            for m in MEASURES:
                                rows.append(
                                    {
                                        "dataset": "toy",
                                        "network": net,
                                        "layer": layer,
                                        "evaluation": evaluation,
                                        "depth": depth,
                                        "stride": stride,
                                        "layer_stride": layer_stride,
                                        "channels": channels,
                                        "sample": s,
                                        "transform": t,
                                        "family": fam,
                                        "claim_family": cf,
                                        "magnitude": mag,
                                        "measure": m,
                                        "error": values[m],
                                    }
                                )
                        t += 1
    return pd.DataFrame(rows)[list(ERRORS_COLUMNS)]


@pytest.fixture(scope="module")
def claims(errors) -> pd.DataFrame:
    # "invariant" declares rotation: its rotation claims are predicted aligned; declaring
    # shear for "generic" makes its (unaligned) shear claims disagree.
    table = claims_table(
        errors, {"generic": ["shear"], "invariant": ["rotation"]}, margin=TAU, resamples=200
    )
    return table


def _png_size(path: Path) -> tuple[int, int]:
    h, w = mpimg.imread(path).shape[:2]
    return w, h


def _check_files(png: Path, pdf: Path, min_px: int = 300, max_px: int = 8000) -> None:
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert pdf.read_bytes()[:4] == b"%PDF"
    w, h = _png_size(png)
    assert min_px <= w <= max_px and min_px <= h <= max_px, (w, h)


def _labels(fig) -> tuple[set[str], set[str]]:
    axes = [ax for ax in fig.axes if ax.get_visible()]
    return {ax.get_xlabel() for ax in axes}, {ax.get_ylabel() for ax in axes}


# --------------------------------------------------------------------------- 1. error vs magnitude


class TestErrorVsMagnitude:
    def test_smoke(self, errors, tmp_path):
        png, pdf = tmp_path / "e.png", tmp_path / "e.pdf"
        fig = plot_error_vs_magnitude(errors, "toy", "generic", png, pdf, resamples=100)
        _check_files(png, pdf)
        grid = [ax for ax in fig.axes if ax.get_subplotspec() is not None]
        # conv1 (stride 1: its maps as built are the dense maps) one row, conv2 two
        assert len(grid) == 3 * len(SWEEP)
        xlabels, ylabels = _labels(fig)
        assert {MAGNITUDE_LABELS[f] for f in SWEEP} <= xlabels
        assert {
            "conv1\nrelative error",
            "conv2, dense\nrelative error",
            "conv2, as built (stride 2)\nrelative error",
        } == ylabels - {""}
        assert all(ax.get_yscale() == "log" for ax in grid)
        # one line per measure in each facet
        assert len(grid[0].get_lines()) >= len(MEASURES)

    def test_rows_without_evaluation(self, errors, tmp_path):
        # a table from before dense evaluation: one row per layer, as built
        built = errors[errors["evaluation"] == "as_built"].drop(columns=["evaluation"])
        fig = plot_error_vs_magnitude(
            built, "toy", "generic", tmp_path / "e.png", tmp_path / "e.pdf", resamples=50
        )
        assert _labels(fig)[1] - {""} == {"conv1\nrelative error", "conv2\nrelative error"}

    def test_exception(self, errors, tmp_path):
        with pytest.raises(ValueError, match="no errors for dataset 'toy', network 'nope'"):
            plot_error_vs_magnitude(errors, "toy", "nope", tmp_path / "a.png", tmp_path / "a.pdf")


# --------------------------------------------------------------------------- 2. excess vs depth


class TestExcessVsDepth:
    def test_smoke(self, errors, tmp_path):
        png, pdf = tmp_path / "x.png", tmp_path / "x.pdf"
        fig = plot_excess_vs_depth(errors, "toy", png, pdf, margin=TAU, resamples=100)
        _check_files(png, pdf)
        xlabels, _ylabels = _labels(fig)
        assert "layer depth (0 = first layer)" in xlabels
        assert fig.get_supylabel() == "excess error: min(affine, dense) − input"
        visible = [ax for ax in fig.axes if ax.get_visible()]
        families = set(errors["claim_family"])
        assert len(visible) == len(families)
        # τ is drawn as a dashed horizontal line in each facet
        for ax in visible:
            dashed = [
                ln
                for ln in ax.get_lines()
                if ln.get_linestyle() == "--" and np.allclose(ln.get_ydata(), TAU)
            ]
            assert len(dashed) == 1
            # dense solid, as built dotted (sub-stride shifts exist as built only)
            styles = {ln.get_gid(): ln.get_linestyle() for ln in ax.get_lines() if ln.get_gid()}
            want = {"as_built": ":"} if "sub-stride" in ax.get_title() else {}
            assert styles == (want or {"dense": "-", "as_built": ":"})

    def test_exception(self, errors, tmp_path):
        with pytest.raises(ValueError, match="no errors for dataset 'other'"):
            plot_excess_vs_depth(errors, "other", tmp_path / "a.png", tmp_path / "a.pdf")


@pytest.fixture(scope="module")
def mixed(errors) -> pd.DataFrame:
    """The errors, a second dataset, and the rows in another order: none may move a number."""
    other = errors.assign(dataset="toy2", error=errors["error"] * 1.5)
    both = pd.concat([errors, other], ignore_index=True)
    return both.sample(frac=1.0, random_state=0).reset_index(drop=True)


class TestSameNumbersAsClaims:
    """The excess figure shows claims.csv's numbers, given the same claims config and seed."""

    # what the summarize rule and the figure rule both receive (config claims, seed)
    CLAIMS = {"margin": TAU, "confidence": 0.9, "bootstrap": 300}
    SEED = 3
    INVARIANCES = {"generic": ["shear"], "invariant": ["rotation"]}

    def _claims(self, errors: pd.DataFrame) -> pd.DataFrame:
        c = self.CLAIMS
        return claims_table(
            errors,
            self.INVARIANCES,
            margin=c["margin"],
            confidence=c["confidence"],
            resamples=c["bootstrap"],
            seed=self.SEED,
        )

    @pytest.mark.parametrize("dataset", ["toy", "toy2"])
    def test_excess_by_depth_equals_claims(self, mixed, dataset):
        claims = self._claims(mixed)
        shown = excess_by_depth(
            mixed,
            dataset,
            confidence=self.CLAIMS["confidence"],
            resamples=self.CLAIMS["bootstrap"],
            seed=self.SEED,
        )
        keys = ["family", "network", "evaluation", "depth"]
        cols = ["excess_mean", "ci_low", "ci_high", "problems"]
        want = claims[claims["dataset"] == dataset].set_index(keys)[cols].sort_index()
        got = shown.rename(
            columns={
                "claim_family": "family",
                "mean": "excess_mean",
                "low": "ci_low",
                "high": "ci_high",
                "rows": "problems",
            }
        )
        got = got.set_index(keys)[cols].sort_index()
        assert len(want) == len(got) > 20
        assert set(want.index.get_level_values("evaluation")) == {"dense", "as_built"}
        assert (want["ci_low"] < want["ci_high"]).any()  # real intervals, not constants
        pd.testing.assert_frame_equal(got, want, check_exact=True)

    def test_drawn_lines_and_bands_are_the_claims(self, mixed, tmp_path):
        claims = self._claims(mixed)
        claims = claims[claims["dataset"] == "toy"]
        fig = plot_excess_vs_depth(
            mixed,
            "toy",
            tmp_path / "x.png",
            tmp_path / "x.pdf",
            margin=self.CLAIMS["margin"],
            confidence=self.CLAIMS["confidence"],
            resamples=self.CLAIMS["bootstrap"],
            seed=self.SEED,
        )
        assert "90 % bootstrap interval" in fig.get_suptitle()
        family_of = {family_label(f): f for f in claims["family"].unique()}
        checked = 0
        for ax in (ax for ax in fig.axes if ax.get_visible()):
            fam = family_of[ax.get_title()]
            lines = [ln for ln in ax.get_lines() if ln.get_label() in NETWORKS]
            assert len(lines) == len(ax.patches)  # one band (a polygon) per line, in line order
            for line, band in zip(lines, ax.patches):
                rows = claims[
                    (claims["network"] == line.get_label())
                    & (claims["evaluation"] == line.get_gid())
                    & (claims["family"] == fam)
                ]
                rows = rows.sort_values("depth")
                assert np.array_equal(line.get_xdata(), rows["depth"].to_numpy())
                assert np.array_equal(line.get_ydata(), rows["excess_mean"].to_numpy())
                band_y = set(band.get_xy()[:, 1].tolist())
                assert set(rows["ci_low"]) | set(rows["ci_high"]) <= band_y
                checked += 1
        assert checked == len(claims.groupby(["network", "evaluation", "family"]))


# --------------------------------------------------------------------------- 3. verdict grid


class TestVerdictGrid:
    def test_marks_exactly_the_disagreements(self, claims, tmp_path):
        assert (claims["agreement"] == "no").sum() > 0  # the fixture must have some
        png, pdf = tmp_path / "v.png", tmp_path / "v.pdf"
        fig = plot_verdict_grid(claims, png, pdf)
        _check_files(png, pdf)
        assert [ax.get_gid() for ax in fig.axes] == ["dense", "as_built"]  # dense first
        first = fig.axes[0]
        labels = [lab.get_text() for lab in first.get_yticklabels()]
        for ax in fig.axes:
            ev = ax.get_gid()
            marks = [t for t in ax.texts if t.get_gid() == "disagreement"]
            assert all(t.get_text() == DISAGREEMENT_MARK for t in marks)
            rows = labels  # every grid has the same rows, labelled on the first
            cols = [lab.get_text() for lab in ax.get_xticklabels()]
            got = {
                (rows[round(t.get_position()[1])], cols[round(t.get_position()[0])]) for t in marks
            }
            want = {
                (f"{r.dataset} / {r.network} / {r.layer}", family_label(r.family))
                for r in claims.itertuples()
                if r.agreement == "no" and r.evaluation == ev
            }
            assert got == want and len(marks) == len(want)
            n_pred = int(((claims["evaluation"] == ev) & (claims["agreement"] != "n/a")).sum())
            assert f"of {n_pred} predictions confirmed" in ax.get_title(loc="left")
        assert first.get_ylabel() == "dataset / network / layer"

    def test_unresolved_has_its_colour_and_mark(self, tmp_path):
        table = _claims_rows(2, verdicts=("unresolved", "aligned", "inconclusive"))
        table.loc[0, "agreement"] = "no"  # unresolved with a prediction: a disagreement
        table.loc[1, ["prediction", "agreement"]] = ["none", "n/a"]  # unresolved, no prediction
        fig = plot_verdict_grid(table, tmp_path / "u.png", tmp_path / "u.pdf")
        ax = fig.axes[0]
        unresolved = [t for t in ax.texts if t.get_gid() == "unresolved"]
        assert [t.get_text() for t in unresolved] == [UNRESOLVED_MARK] * 2
        # both marks in a cell that is unresolved and disagrees, side by side
        cross = [t for t in ax.texts if t.get_gid() == "disagreement"]
        assert len(cross) == 1 and cross[0].get_position()[0] > unresolved[0].get_position()[0]
        image = ax.get_images()[0]
        rgba = image.cmap(image.norm(image.get_array()))
        assert matplotlib.colors.to_hex(rgba[0, 0]) == VERDICT_COLOURS["unresolved"].lower()
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"unresolved ({UNRESOLVED_MARK})" in legend
        assert VERDICT_COLOURS["unresolved"] not in {
            VERDICT_COLOURS[v] for v in VERDICT_COLOURS if v != "unresolved"
        }

    def test_size_grows_with_rows(self, tmp_path):
        small = plot_verdict_grid(_claims_rows(4), tmp_path / "s.png", tmp_path / "s.pdf")
        big = plot_verdict_grid(_claims_rows(40), tmp_path / "b.png", tmp_path / "b.pdf")
        assert big.get_size_inches()[1] > 2 * small.get_size_inches()[1]
        # ≥ 8 pt labels at 0.24 in per row: the rows have room for their labels
        assert big.get_size_inches()[1] / 40 >= 8 / 72
        assert not [t for t in big.axes[0].texts if t.get_gid() == "disagreement"]

    def test_exception(self, tmp_path):
        with pytest.raises(ValueError, match="empty"):
            plot_verdict_grid(
                pd.DataFrame(columns=list(CLAIMS_COLUMNS)), tmp_path / "a.png", tmp_path / "a.pdf"
            )


def _claims_rows(
    n_rows: int, verdicts: tuple[str, ...] = ("aligned", "aligned", "aligned")
) -> pd.DataFrame:
    """A claims table of ``n_rows`` dense layers × 3 families, all agreeing."""
    rows = []
    for i in range(n_rows):
        for fam, v in zip(("translation", "rotation", "shear"), verdicts):
            rows.append(
                {
                    "dataset": "d",
                    "network": f"net{i // 4}",
                    "layer": f"l{i % 4}",
                    "evaluation": "dense",
                    "depth": i % 4,
                    "stride": 1,
                    "family": fam,
                    "problems": 4,
                    "magnitudes": 2,
                    "largest_magnitude": 1.0,
                    "prediction": "aligned",
                    "verdict": v,
                    "effect": 0.0,
                    "effect_low": 0.0,
                    "effect_high": 0.0,
                    "floor": 0.001,
                    "resolution": 0.002,
                    "excess_mean": 0.0,
                    "ci_low": 0.0,
                    "ci_high": 0.0,
                    "margin": TAU,
                    "agreement": "yes",
                }
            )
    return pd.DataFrame(rows, columns=list(CLAIMS_COLUMNS))


# --------------------------------------------------------------------------- 3b. separation


class TestSeparation:
    KW = dict(margin=TAU, resamples=200)

    def test_points_are_the_claims(self, errors, claims):
        points = separation_points(errors, claims, **self.KW)
        assert set(points["prediction"]) == {"aligned", "not aligned"}
        top = points[points["largest"]].rename(columns={"claim_family": "family"})
        keys = ["dataset", "network", "layer", "evaluation", "family"]
        want = claims[claims["prediction"] != "none"].set_index(keys).sort_index()
        got = top.set_index(keys).sort_index()
        assert len(got) == len(want) > 20
        # the largest level's point is claims.csv's effect − resolution, to the bit
        stat = (want["effect"] - want["resolution"]).rename("statistic")
        pd.testing.assert_series_equal(got["statistic"], stat, check_exact=True)
        # one point per level of each claim's sweep
        levels = points.groupby(keys[:-1] + ["claim_family"])["level"].nunique()
        assert levels.sort_index().tolist() == want["magnitudes"].tolist()
        assert set(levels) == {1, 2, 3}

    def test_smoke(self, errors, claims, tmp_path):
        png, pdf = tmp_path / "s.png", tmp_path / "s.pdf"
        fig = plot_separation(errors, claims, png, pdf, **self.KW)
        _check_files(png, pdf)
        panels = {ax.get_gid(): ax for ax in fig.axes if ax.get_visible()}
        families = ["translation", "rotation90", "rotation", "shear"]  # those with a prediction
        assert list(panels) == [f"{f}|{e}" for f in families for e in ("dense", "as_built")]
        sep = separation_table(claims)
        for r in sep[sep["family"].isin(families)].itertuples():
            ax = panels[f"{r.family}|{r.evaluation}"]
            auc = "n/a" if np.isnan(r.auc) else f"{r.auc:.2f}"
            assert f"AUC {auc} ({r.not_aligned} / {r.aligned})" in ax.get_title()
            assert ax.get_yscale() == "symlog"
            # the filled points are the claims' effect − resolution, by population
            sub = claims[(claims["family"] == r.family) & (claims["evaluation"] == r.evaluation)]
            for pred in ("aligned", "not aligned"):
                drawn = [c for c in ax.collections if c.get_gid() == f"{pred}|largest"]
                want = sub[sub["prediction"] == pred]
                ys = np.concatenate([c.get_offsets()[:, 1] for c in drawn]) if drawn else []
                np.testing.assert_allclose(
                    np.sort(ys), np.sort((want["effect"] - want["resolution"]).to_numpy())
                )
        shear = panels["shear|dense"]
        assert [t.get_text() for t in shear.get_xticklabels()] == ["0.1", "0.2", "0.3"]
        assert shear.get_xlabel() == MAGNITUDE_LABELS["shear"]
        # generic shear is predicted aligned (declared), invariant shear not: both drawn
        assert {c.get_gid() for c in shear.collections} >= {
            "aligned|largest",
            "not aligned|largest",
        }

    def test_exception(self, errors, claims, tmp_path):
        none = claims.assign(prediction="none")
        with pytest.raises(ValueError, match="nothing to separate"):
            plot_separation(errors, none, tmp_path / "a.png", tmp_path / "a.pdf", **self.KW)


# --------------------------------------------------------------------------- 4. example panel

IMAGE = 16


def _transforms() -> tuple[list[str], list[float], np.ndarray]:
    fams = ["translation", "rotation", "rotation", "shear"]
    mags = [2.0, 90.0, 30.0, 0.2]
    mats = np.stack([geometry.from_family(f, m).numpy() for f, m in zip(fams, mags)])
    return fams, mags, mats


def _coords(fams, mags, mats) -> dict:
    return {
        "family": ("transform", np.array(fams, dtype=object)),
        "magnitude": ("transform", np.array(mags)),
        "matrix": (("transform", "row", "col"), mats),
        "row": ("row", ["x", "y"]),
        "col": ("col", ["x", "y", "1"]),
    }


def _layer(rng, stride: int, channels: int, depth: int) -> xr.Dataset:
    fams, mags, mats = _transforms()
    n = IMAGE // stride
    s, t = 2, len(fams)
    shape4, shape5 = (s, channels, n, n), (s, t, channels, n, n)
    orig = rng.standard_normal(shape4).astype(np.float32)
    orig[:, 1] *= 3  # channel 1 has the most energy
    attrs = {"long_name": "features", "units": "1"}
    return xr.Dataset(
        {
            "original": (("sample", "channel", "y", "x"), orig, attrs),
            "transformed": (
                ("sample", "transform", "channel", "y", "x"),
                rng.standard_normal(shape5).astype(np.float32),
                attrs,
            ),
            "realigned": (
                ("sample", "transform", "channel", "y", "x"),
                rng.standard_normal(shape5).astype(np.float32),
                attrs,
            ),
        },
        coords=_coords(fams, mags, mats),
        attrs={
            "stride": stride,
            "offset_y": (stride - 1) / 2,
            "offset_x": (stride - 1) / 2,
            "image_height": IMAGE,
            "image_width": IMAGE,
            "depth": depth,
            "channels": channels,
        },
    )


@pytest.fixture(scope="module")
def example_files(tmp_path_factory) -> dict:
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("example")
    fams, mags, mats = _transforms()
    s, t = 2, len(fams)
    img = rng.random((s, 1, IMAGE, IMAGE)).astype(np.float32)
    dims5 = ("sample", "transform", "channel", "y", "x")
    ds = xr.Dataset(
        {
            "image": (
                ("sample", "channel", "y", "x"),
                img,
                {"long_name": "original image f", "units": "1"},
            ),
            "transformed": (dims5, rng.random((s, t, 1, IMAGE, IMAGE)).astype(np.float32)),
            "realigned": (dims5, rng.random((s, t, 1, IMAGE, IMAGE)).astype(np.float32)),
        },
        coords=_coords(fams, mags, mats),
        attrs={"dataset": "toy"},
    )
    dataset_path = root / "toy.nc"
    ds.to_netcdf(dataset_path)
    features, alignment = {}, {}
    for k, net in enumerate(NETWORKS):
        tree = xr.DataTree.from_dict(
            {
                "/": xr.Dataset(attrs={"network": net}),
                "/conv1": _layer(rng, 1, 3, 0),
                "/conv2": _layer(rng, 2, 4, 1),
            }
        )
        features[net] = root / f"{net}.nc"
        tree.to_netcdf(features[net])
        aff = np.broadcast_to(geometry.invert(torch.from_numpy(mats)).numpy(), (s, t, 2, 3))
        al = xr.Dataset(
            {
                "error": (("sample", "transform", "measure"), rng.random((s, t, 7))),
                "affine_matrix": (("sample", "transform", "row", "col"), aff.copy()),
            },
            coords={**_coords(fams, mags, mats), "measure": list(MEASURES)},
            attrs={"dataset": "toy", "network": net, "layer": "conv2", "depth": 1, "stride": 2},
        )
        if k == 0:
            al.attrs["region_radius"] = 6.0
        alignment[net] = root / f"{net}_conv2.nc"
        al.to_netcdf(alignment[net])
    return {"dataset": dataset_path, "features": features, "alignment": alignment}


class TestExamplePanels:
    @pytest.mark.parametrize("stride", [1, 2])
    def test_oracle_is_the_inverse_warp(self, stride):
        rng = np.random.default_rng(2)
        layer = _layer(rng, stride, 3, 0)
        _, _, mats = _transforms()
        p = example_panels(layer, mats[2], sample=1, transform=2)
        grid = geometry.Grid.centred(IMAGE, IMAGE, stride)
        moving = torch.from_numpy(layer["transformed"].values[1, 2])[None]
        want = geometry.warp(moving, geometry.invert(torch.from_numpy(mats[2])), grid=grid)[0]
        assert p.channel == 1  # the channel with the most energy
        np.testing.assert_allclose(p.maps["oracle"], want[1].numpy(), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(p.maps["original"], layer["original"].values[1, 1])
        np.testing.assert_array_equal(p.maps["input"], layer["realigned"].values[1, 2, 1])
        assert "affine" not in p.maps and set(p.errors) == {"none", "oracle", "input"}

    def test_errors_and_affine(self):
        rng = np.random.default_rng(3)
        layer = _layer(rng, 2, 3, 0)
        target = torch.from_numpy(layer["original"].values[0])
        # transformed features = the original warped by g, so the oracle (nearly) undoes it
        _, _, mats = _transforms()
        g = torch.from_numpy(mats[1])  # 90° rotation: exact on the centred grid
        grid = geometry.Grid.centred(IMAGE, IMAGE, 2)
        moved = geometry.warp(target[None], g, grid=grid)[0]
        layer["transformed"].values[0, 1] = moved.numpy()
        layer["realigned"].values[0, 1] = target.numpy()
        p = example_panels(
            layer,
            g.numpy(),
            sample=0,
            transform=1,
            channel=2,
            affine_matrix=geometry.invert(g).numpy(),
        )
        assert p.channel == 2
        assert p.errors["oracle"] < 1e-10 and p.errors["affine"] < 1e-10
        assert p.errors["input"] == 0.0 and p.errors["none"] > 0.1
        np.testing.assert_allclose(p.maps["affine"], p.maps["oracle"])

    def test_region_radius(self):
        layer = _layer(np.random.default_rng(4), 1, 3, 0)
        _, _, mats = _transforms()
        full = example_panels(layer, mats[3], transform=3)
        small = example_panels(layer, mats[3], transform=3, region_radius=3.0)
        assert full.errors["none"] != small.errors["none"]

    def test_exception(self):
        layer = _layer(np.random.default_rng(5), 1, 3, 0)
        with pytest.raises(ValueError, match="channel 7 is out of range for 3 channels"):
            example_panels(layer, np.eye(2, 3), channel=7)


class TestDefaultTransform:
    def test_prefers_rotation_near_30(self):
        fams, mags, _ = _transforms()
        assert default_transform(fams, mags) == 2

    def test_fallbacks(self):
        assert default_transform(["translation", "reflection", "shear"], [1, 0, 0.3]) == 2
        assert default_transform(["translation", "rotation"], [1, 180]) == 0


class TestExamplePanel:
    def test_smoke(self, example_files, tmp_path):
        png, pdf = tmp_path / "p.png", tmp_path / "p.pdf"
        fig = plot_example_panel(
            example_files["dataset"],
            example_files["features"],
            example_files["alignment"],
            {net: "conv2" for net in NETWORKS},
            png,
            pdf,
        )
        _check_files(png, pdf)
        axes = fig.axes
        assert len(axes) == 2 * 8
        titles = [ax.get_title() for ax in axes]
        assert sum("oracle error" in t for t in titles) == 2
        assert sum("affine error" in t for t in titles) == 2
        assert axes[0].get_ylabel() == "generic\nconv2, channel 1"
        assert "rotation 30°" in fig.get_suptitle()

    def test_missing_alignment(self, example_files, tmp_path):
        fig = plot_example_panel(
            example_files["dataset"],
            {"generic": example_files["features"]["generic"]},
            {},
            {"generic": "conv1"},
            tmp_path / "p.png",
            tmp_path / "p.pdf",
            transform=3,
            channel=0,
        )
        assert "shear 0.2" in fig.get_suptitle()
        assert not any("affine error" in ax.get_title() for ax in fig.axes)

    def test_exception(self, example_files, tmp_path):
        with pytest.raises(ValueError, match="no layer given for networks"):
            plot_example_panel(
                example_files["dataset"],
                example_files["features"],
                {},
                {},
                tmp_path / "p.png",
                tmp_path / "p.pdf",
            )


# --------------------------------------------------------------------------- 5. affine vs oracle


class TestAffineVsOracle:
    def test_smoke(self, errors, tmp_path):
        png, pdf = tmp_path / "a.png", tmp_path / "a.pdf"
        fig = plot_affine_vs_oracle(errors, png, pdf)
        _check_files(png, pdf)
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in visible] == sorted(NETWORKS)
        assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in visible)
        xlabels, ylabels = _labels(fig)
        assert "oracle error, $T_g^{-1}\\Gamma(T_g f)$" in xlabels
        assert "best affine warp error" in ylabels
        points = sum(len(c.get_offsets()) for c in visible[0].collections)
        # conv1 once (stride 1: as built is dense), conv2 dense and as built
        assert points == 3 * 9 * SAMPLES

    def test_exception(self, errors, tmp_path):
        with pytest.raises(ValueError, match="'affine' and 'oracle'"):
            plot_affine_vs_oracle(
                errors[errors["measure"] != "oracle"], tmp_path / "a.png", tmp_path / "a.pdf"
            )


# --------------------------------------------------------------------------- 6. training curve


class TestTrainingCurve:
    def test_smoke(self, tmp_path):
        history = [
            {"epoch": e, "loss": 2.0 / e, "heldout_accuracy": 0.8 + 0.05 * e} for e in range(1, 4)
        ]
        weights = tmp_path / "mnist.pt"
        torch.save(
            {
                "state_dict": {"w": torch.zeros(2)},
                "meta": {
                    "heldout_accuracy": 0.95,
                    "epochs": 3,
                    "history": history,
                    "n_heldout": 500,
                },
            },
            weights,
        )
        png, pdf = tmp_path / "t.png", tmp_path / "t.pdf"
        fig = plot_training_curve(weights, png, pdf)
        _check_files(png, pdf)
        ax_loss, ax_acc = fig.axes
        assert ax_loss.get_xlabel() == ax_acc.get_xlabel() == "epoch"
        assert ax_loss.get_ylabel() == "training loss (cross-entropy)"
        assert ax_acc.get_ylabel() == "held-out accuracy (%)"
        assert "95.0 %" in fig.get_suptitle()
        np.testing.assert_allclose(ax_acc.get_lines()[0].get_ydata(), [85, 90, 95])

    def test_exception(self, tmp_path):
        weights = tmp_path / "bad.pt"
        torch.save({"state_dict": {}, "meta": {"heldout_accuracy": 0.9}}, weights)
        with pytest.raises(ValueError, match="has no training history"):
            plot_training_curve(weights, tmp_path / "t.png", tmp_path / "t.pdf")


def test_save_keeps_text_wider_than_the_figure(tmp_path: Path) -> None:
    """A title or legend wider than the figure (the recognition figures' suptitle and
    legend on two narrow columns) is saved whole: the image grows to hold it instead
    of cutting it at the figure's edge (a constrained layout alone cannot widen it)."""
    import matplotlib.pyplot as plt

    from featalign.figures.style import RC, save

    fig, ax = plt.subplots(figsize=(2.0, 2.0), layout="constrained")
    ax.plot([0, 1], [0, 1])
    fig.suptitle("a title far wider than this two-inch figure, which must not be cut off")
    save(fig, tmp_path / "f.png", tmp_path / "f.pdf")
    width = mpimg.imread(tmp_path / "f.png").shape[1]
    assert width > 1.5 * 2.0 * RC["savefig.dpi"]
