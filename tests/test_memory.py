"""Bounded memory: the dataset, features and align stages, chunk by chunk, equal the in-memory path.

The workflow's jobs write (datasets, features) and read (align) a chunk at a time
(``features.chunk`` images; the align stage as many samples as fit
``alignment.max_batch_elements``), so that a job's memory does not grow with
samples x transforms. These tests hold the chunked files equal to the files of
the in-memory functions on data of config/test.yaml's size, and the chunked
writers' memory flat in the number of samples.

Tolerances, measured:

* dataset files: bit-identical for every chunk size;
* features files: bit-identical from ``chunk = 2`` up; ``chunk = 1`` runs the
  originals one image per forward pass, where oneDNN's convolution rounds
  differently: up to 3e-8 absolute, 1.4e-7 of the variable's largest value
  (:data:`ONE_IMAGE_BATCHES`);
* alignment files: see tests/test_memory_align.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml

from featalign.datasets import DatasetSpec, build_dataset, write_dataset
from featalign.features import extract_features, write_features
from featalign.io import RUN_ATTRS, FileError, open_dataset, read_finite, write_netcdf
from featalign.plugins import get_network

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())

#: features with chunk = 1, relative to the variable's largest absolute value.
ONE_IMAGE_BATCHES = 1e-6


#: Attributes that differ between two writes: the run's time and the repository's HEAD.
VARYING = (*RUN_ATTRS, "git_commit")


def _spec(name: str) -> DatasetSpec:
    return DatasetSpec.from_config(name, TEST_CONFIG["datasets"][name])


def _nodes(path: Path) -> dict[str, xr.Dataset]:
    with xr.open_datatree(path) as tree:
        return {node.path: node.to_dataset(inherit=False).load() for node in tree.subtree}


def assert_same_file(mem: Path, chunked: Path, *, rel: float = 0.0) -> None:
    """Same groups, variables, values (to ``rel`` of each variable's largest value),
    attributes (but :data:`VARYING`) and netCDF encoding (dims, dtype, filters, every
    variable attribute); the HDF5 chunk shapes and the variables' order may differ."""
    a, b = _nodes(mem), _nodes(chunked)
    assert a.keys() == b.keys()
    for path in a:
        x, y = a[path], b[path]
        assert set(x.variables) == set(y.variables), path
        for name in x.variables:
            if rel and x[name].dtype.kind == "f":
                scale = float(np.abs(x[name].values).max()) or 1.0
                np.testing.assert_allclose(y[name].values, x[name].values, rtol=0,
                                           atol=rel * scale, err_msg=f"{path} {name}")
            else:
                xr.testing.assert_identical(x[name].drop_attrs(), y[name].drop_attrs())
            assert x[name].attrs == y[name].attrs, (path, name)
        drop = {k: v for k, v in x.attrs.items() if k not in VARYING}
        assert drop.keys() == {k for k in y.attrs if k not in VARYING}, path
        for k, v in drop.items():
            assert np.array_equal(v, y.attrs[k]), (path, k)
    with netCDF4.Dataset(mem) as fa, netCDF4.Dataset(chunked) as fb:
        for ga in (fa, *fa.groups.values()):
            gb = fb if ga is fa else fb[ga.name]
            assert ga.ncattrs() == gb.ncattrs(), ga.path
            assert set(ga.variables) == set(gb.variables), ga.path
            for name, va in ga.variables.items():
                vb = gb.variables[name]
                assert (va.dimensions, va.dtype, va.filters()) == (
                    vb.dimensions, vb.dtype, vb.filters()), (ga.path, name)
                assert {k: str(va.getncattr(k)) for k in va.ncattrs()} == {
                    k: str(vb.getncattr(k)) for k in vb.ncattrs()}, (ga.path, name)


class TestWriteDataset:
    @pytest.mark.parametrize("name", ["tiny_photos", "tiny_digits"])
    def test_equals_in_memory(self, name, tmp_path):
        spec, sweep = _spec(name), TEST_CONFIG["transforms"]
        mem = write_netcdf(build_dataset(spec, sweep, affine_draws=2), tmp_path / "mem.nc")
        for chunk in (1, 5, 1000):
            out = write_dataset(spec, sweep, tmp_path / f"c{chunk}.nc", affine_draws=2,
                                chunk=chunk)
            assert_same_file(mem, out)
            with netCDF4.Dataset(out) as nc:  # one image per HDF5 chunk
                c, n = nc["image"].shape[1], nc["image"].shape[2]
                assert nc["transformed"].chunking() == [1, 1, c, n, n]

    def test_exception(self, tmp_path):
        with pytest.raises(ValueError, match=r"features.chunk is 0; give at least 1"):
            write_dataset(_spec("tiny_photos"), {"rotation": [30]}, tmp_path / "d.nc", chunk=0)
        assert not list(tmp_path.iterdir())

    def test_a_leak_writes_nothing(self, tmp_path):
        spec = DatasetSpec(name="big", source="textures", samples=2, size=32,
                           window_radius=0.95, window_taper=0.1)
        with pytest.raises(ValueError, match=r"datasets.big: transform scaling 1.6 carries"):
            write_dataset(spec, {"scaling": [1.6]}, tmp_path / "d.nc")
        assert not list(tmp_path.iterdir())


def make_photos(folder: Path) -> Path:
    """config/test.yaml's tiny_photos dataset file (4 samples x 7 transforms, 32 px)."""
    return write_dataset(_spec("tiny_photos"), TEST_CONFIG["transforms"], folder / "d.nc")


def lazy_dataset(path: Path) -> xr.Dataset:
    """A dataset file opened as the features job opens it."""
    return open_dataset(path, kind="dataset", rebuild="snakemake d", lazy=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("memory"))


@pytest.fixture(scope="module")
def features_in_memory(photos) -> dict[bool, Path]:
    """config/test.yaml's vgg_random on tiny_photos, in memory, with and without dense maps."""
    net, dataset = get_network("vgg_random"), open_dataset(photos, kind="dataset", rebuild="x")
    return {
        dense: write_netcdf(
            extract_features(dataset, net, TEST_CONFIG["networks"]["vgg_random"], dense=dense,
                             progress=False),
            photos.with_name(f"mem_{dense}.nc"),
        )
        for dense in (True, False)
    }


class TestWriteFeatures:
    @pytest.mark.parametrize("chunk", [2, 7, 1000])
    def test_equals_in_memory(self, photos, features_in_memory, chunk, tmp_path):
        with lazy_dataset(photos) as dataset:
            out = write_features(dataset, get_network("vgg_random"), tmp_path / "f.nc",
                                 TEST_CONFIG["networks"]["vgg_random"], chunk=chunk,
                                 progress=False)
        assert_same_file(features_in_memory[True], out)
        with netCDF4.Dataset(out) as nc:
            assert nc["block3"]["dense_transformed"].chunking()[:2] == [1, 1]

    def test_one_image_batches(self, photos, features_in_memory, tmp_path):
        with lazy_dataset(photos) as dataset:
            out = write_features(dataset, get_network("vgg_random"), tmp_path / "f.nc",
                                 TEST_CONFIG["networks"]["vgg_random"], chunk=1, dense=False,
                                 progress=False)
        assert_same_file(features_in_memory[False], out, rel=ONE_IMAGE_BATCHES)

    def test_exception(self, photos, tmp_path):
        with lazy_dataset(photos) as dataset, pytest.raises(ValueError, match="features.chunk is 0"):
            write_features(dataset, get_network("pointwise"), tmp_path / "f.nc", chunk=0)

    def test_damaged_dataset_refused_and_nothing_written(self, photos, tmp_path):
        broken = tmp_path / "d.nc"
        broken.write_bytes(photos.read_bytes())
        with netCDF4.Dataset(broken, "a") as nc:
            nc["realigned"][3, 2] = np.nan  # what a broken chunk index reads back as
        with lazy_dataset(broken) as dataset, pytest.raises(
            FileError, match=r"d.nc cannot be read \(realigned has non-finite values"
        ):
            write_features(dataset, get_network("pointwise"), tmp_path / "f.nc",
                           progress=False)
        assert not (tmp_path / "f.nc").exists()
        assert [p.name for p in tmp_path.iterdir()] == ["d.nc"]

    def test_nothing_read_when_opened_lazily(self, photos):
        with lazy_dataset(photos) as dataset:
            assert not dataset.transformed.variable._in_memory
            part = read_finite(dataset, "transformed", sample=1, transform=slice(2, 4))
            assert part.shape == (2, *dataset.transformed.shape[2:])
            assert not dataset.transformed.variable._in_memory


def _peak_mb(code: str, tmp_path: Path) -> float:
    """Peak RSS (MB) of a fresh interpreter while it runs ``code``, after its imports (names
    of this module's imports available; ``folder`` is ``tmp_path``): the imports' own peak,
    which varies with the environment, would hide what ``code`` allocates."""
    script = textwrap.dedent(f"""
        import resource
        from pathlib import Path
        import numpy as np
        from featalign.datasets import DatasetSpec, build_dataset, write_dataset
        from featalign.features import extract_features, write_features
        from featalign.io import open_dataset
        from featalign.plugins import get_network
        folder = Path({str(tmp_path)!r})
        spec = lambda s: DatasetSpec(name="m", source="textures", samples=s, size=96)
        sweep = lambda t: {{"rotation": list(np.linspace(5, 175, t))}}
        lazy = lambda p: open_dataset(p, kind="dataset", rebuild="x", lazy=True)
        # the peak from here on, not the imports' (Linux: "5" resets VmHWM to the current RSS)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    """) + textwrap.dedent(code) + textwrap.dedent("""
        peak = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
        print(int(peak.split()[1]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1]) / 1024


class TestMemoryIsBoundedByTheChunk:
    """More data: the chunked writers' peak RSS stays put, the in-memory path's grows.

    Each case runs in a fresh interpreter (about 300 MB of it is the imports); the
    chunked writers may grow by at most :data:`FLAT_MB` where the in-memory functions
    grow by several times that.
    """

    FLAT_MB = 12

    def test_dataset(self, tmp_path):
        # 16 times the transforms (the job holds the originals, S x C x n x n, whole); the
        # in-memory path's growth must clear the imports' own peak (about 900 MB), so the
        # larger sweep holds some 140 MB of transformed and realigned images
        chunked = {t: _peak_mb(f"write_dataset(spec(4), sweep({t}), folder / 'd.nc', chunk=4)",
                               tmp_path) for t in (10, 160)}
        whole = {t: _peak_mb(f"build_dataset(spec(4), sweep({t}))", tmp_path) for t in (10, 160)}
        assert whole[160] - whole[10] > 5 * self.FLAT_MB, whole
        assert chunked[160] - chunked[10] < self.FLAT_MB, chunked

    def test_features(self, tmp_path):
        # 20 times the samples, as-built maps (the dense maps are chunked the same way); the
        # in-memory growth must clear the interpreter's import peak (5 times gave 33 MB)
        for s in (2, 40):
            write_dataset(DatasetSpec(name="m", source="textures", samples=s, size=96),
                          {"rotation": [10, 20, 30, 40, 50, 60]}, tmp_path / f"d{s}.nc")
        net, opts = "get_network('vgg_random')", "{'width': 8}, dense=False, progress=False"
        chunked = {s: _peak_mb(f"with lazy(folder / 'd{s}.nc') as d:\n"
                               f"    write_features(d, {net}, folder / 'f.nc', {opts}, chunk=4)",
                               tmp_path) for s in (2, 40)}
        whole = {s: _peak_mb(f"extract_features(lazy(folder / 'd{s}.nc'), {net}, {opts})",
                             tmp_path) for s in (2, 40)}
        assert whole[40] - whole[2] > 3 * self.FLAT_MB, whole
        assert chunked[40] - chunked[2] < self.FLAT_MB, chunked
