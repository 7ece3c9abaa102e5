"""The dataset stage: sources, window, transforms, determinism, file format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from featalign import geometry
from featalign.datasets import (
    LEAK_TOLERANCE,
    DatasetSpec,
    build_dataset,
    load_source,
    offline_photographs,
    soft_window,
    transform_table,
)
from featalign.io import TIME_ATTRS, open_dataset, write_netcdf

SWEEP = {
    "translation": [2, 4],
    "rotation": [30, 90],
    "reflection": [0, 90],
    "scaling": [0.8, 1.25],
    "anisotropic_scaling": [1.25],
    "shear": [0.3],
    "affine": [0.3],
}


def spec(source: str, **kw) -> DatasetSpec:
    base = dict(name=f"t_{source}", source=source, samples=3, size=48)
    base.update(kw)
    return DatasetSpec(**base)


class TestSoftWindow:
    def test_known_values(self):
        w = soft_window(64, 0.5, 0.25)
        assert w.shape == (64, 64)
        assert w.max() == 1.0 and w.min() == 0.0
        c = np.arange(64) - 31.5
        r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
        assert (w[r <= 0.25 * 32] == 1).all()
        assert (w[r >= 0.5 * 32] == 0).all()

    def test_radially_symmetric(self):
        w = soft_window(40, 0.7, 0.3)
        np.testing.assert_array_equal(w, w.T)
        np.testing.assert_array_equal(w, w[::-1])


class TestSources:
    @pytest.mark.parametrize("source,channels", [("photographs", 3), ("mnist", 1), ("textures", 3)])
    def test_cardinality(self, source, channels):
        images, described = load_source(spec(source))
        assert images.shape == (3, channels, 48, 48)
        assert len(described) == 3
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert images.std() > 0.01

    def test_photographs_grey_and_colour(self):
        images, described = load_source(spec("photographs", images=("camera", "coffee"), samples=2))
        grey, colour = images
        assert np.allclose(grey[0], grey[1]) and np.allclose(grey[0], grey[2])
        assert not np.allclose(colour[0], colour[1])
        assert described[0].startswith("camera[") and described[1].startswith("coffee[")

    def test_offline_list(self):
        names = offline_photographs()
        assert {"camera", "astronaut", "coffee", "chelsea"} <= names
        assert "eagle" not in names  # needs a download (pooch)

    def test_mnist_digit_centred(self):
        images, described = load_source(spec("mnist", size=48, digit_size=28))
        assert images[:, :, :10].sum() == 0 and images[:, :, -10:].sum() == 0
        assert all("digit" in d for d in described)

    def test_unknown_source(self):
        with pytest.raises(ValueError, match="unknown source 'jpeg'; write photographs, mnist or"):
            load_source(spec("jpeg"))


class TestTransformTable:
    def test_order_and_count(self):
        fams, mags, mats = transform_table(SWEEP, affine_draws=3)
        assert fams[:2] == ["translation", "translation"]
        assert fams.count("affine") == 3
        assert mats.shape == (len(fams), 2, 3)
        torch.testing.assert_close(mats[fams.index("rotation") + 1], geometry.rotation(90.0).double()[0])

    def test_unknown_family(self):
        with pytest.raises(ValueError, match="unknown families"):
            transform_table({"spin": [1]})

    def test_seeded(self):
        a = transform_table({"affine": [0.3]}, affine_draws=2, seed=1)[2]
        b = transform_table({"affine": [0.3]}, affine_draws=2, seed=1)[2]
        c = transform_table({"affine": [0.3]}, affine_draws=2, seed=2)[2]
        assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return build_dataset(spec("photographs", samples=2), SWEEP)


class TestBuildDataset:
    def test_layout(self, ds):
        t = sum(len(v) for v in SWEEP.values())
        assert ds.image.dims == ("sample", "channel", "y", "x")
        assert ds.transformed.dims == ("sample", "transform", "channel", "y", "x")
        assert ds.realigned.shape == (2, t, 3, 48, 48)
        assert ds.matrix.dims == ("transform", "row", "col")
        assert set(ds.family.values) == set(SWEEP)
        assert ds.image.dtype == np.float32
        for name in ("image", "transformed", "realigned", "matrix"):
            assert "long_name" in ds[name].attrs

    def test_transformed_is_the_warp(self, ds):
        t = int(np.flatnonzero(ds.family.values == "rotation")[0])
        img = torch.from_numpy(ds.image.values).double()
        want = geometry.warp(img, torch.from_numpy(ds.matrix.values[t]))
        np.testing.assert_allclose(ds.transformed.values[:, t], want.float().numpy(), atol=1e-6)

    def test_exact_rotation90(self, ds):
        t = int(np.flatnonzero((ds.family.values == "rotation") & (ds.magnitude.values == 90))[0])
        np.testing.assert_allclose(
            ds.transformed.values[:, t], np.rot90(ds.image.values, -1, axes=(-2, -1)), atol=1e-6
        )

    def test_content_stays_inside(self, ds):
        assert float(ds.leaked_energy.max()) < LEAK_TOLERANCE

    def test_realigned_close_to_image(self, ds):
        err = ds.realigned - ds.image
        rel = float((err**2).sum() / (ds.image**2).sum() / ds.sizes["transform"])
        assert rel < 0.01  # smoothing keeps the there-and-back interpolation loss small

    def test_deterministic(self, ds):
        again = build_dataset(spec("photographs", samples=2), SWEEP)
        xr.testing.assert_identical(
            ds.drop_attrs(deep=False), again.drop_attrs(deep=False)
        )

    def test_round_trip_file(self, ds, tmp_path):
        path = write_netcdf(ds, tmp_path / "d.nc")
        back = open_dataset(path, kind="dataset", rebuild="snakemake ...", variables=("image",))
        for k in TIME_ATTRS:
            assert k in back.attrs
        xr.testing.assert_equal(back, ds)
        assert not list(tmp_path.glob(".*tmp"))

    def test_leak_is_refused(self):
        small = spec("textures", size=32, window_radius=0.9, window_taper=0.1)
        with pytest.raises(ValueError, match="outside the canvas .* raise size or lower window.radius"):
            build_dataset(small, {"scaling": [1.5]})

    @pytest.mark.parametrize("source", ["mnist", "textures"])
    def test_other_sources(self, source):
        ds = build_dataset(spec(source, samples=2), {"rotation": [45]})
        assert float(ds.leaked_energy.max()) < LEAK_TOLERANCE
        assert np.isfinite(ds.transformed.values).all()


class TestOpenDataset:
    def test_missing(self, tmp_path):
        from featalign.io import FileError

        with pytest.raises(FileError, match="does not exist; build it with: snakemake x"):
            open_dataset(tmp_path / "no.nc", kind="dataset", rebuild="snakemake x")

    def test_truncated(self, tmp_path):
        from featalign.io import FileError

        ds = build_dataset(spec("textures", samples=1, size=16, window_radius=0.5),
                           {"rotation": [10]})
        path = write_netcdf(ds, tmp_path / "d.nc")
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(FileError, match="damaged or incomplete: delete it and rebuild"):
            open_dataset(path, kind="dataset", rebuild="snakemake d")

    def test_foreign_file(self, tmp_path):
        from featalign.io import FileError

        xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "f.nc")
        with pytest.raises(FileError, match="not written by featalign"):
            open_dataset(tmp_path / "f.nc", kind="dataset", rebuild="snakemake f")
