"""The align stage reads a layer a chunk of samples at a time: equal to one chunk of all.

The align job reads as many samples as fit ``alignment.max_batch_elements``
(:func:`featalign.align.files.samples_per_chunk`, at least one) and aligns them; the
``mixing`` measure, whose fit pools every sample but the held-out one, is scored in a
second pass over the chunks (:func:`featalign.align.mixing.mixing_in_chunks`).

Tolerances, measured on config/test.yaml's vgg_random features of tiny_photos with
1 and 3 samples per chunk against all 4 at once: the controls (none, input,
constant, oracle) bit-identical; ``mixing`` pools the samples' float64 sums in
another order (:data:`MIXING_RTOL`); the optimiser's float32 batches hold other
problems, so ``affine`` and ``dense`` errors, affine matrices (pixels) and dense
displacements move by up to 1.4e-6 (:data:`OPTIMISER_ATOL`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from test_memory import TEST_CONFIG, lazy_dataset, make_photos

import featalign.align.files as align_files
from featalign.align.files import alignment_dataset
from featalign.features import write_features
from featalign.plugins import get_network

#: the mixing measure, chunked against pooled in one go: relative, and absolute for
#: the problems that mixing fits exactly, whose errors (about 1e-24) are rounding noise
#: (the products' blocking moves them by 1e-26)
MIXING_RTOL = 1e-9
MIXING_ATOL = 1e-15
#: affine and dense errors, affine matrices (pixels) and dense displacements.
OPTIMISER_ATOL = 1e-5


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """config/test.yaml's vgg_random on tiny_photos (4 samples, dense maps)."""
    folder = tmp_path_factory.mktemp("align_chunks")
    with lazy_dataset(make_photos(folder)) as dataset:
        return write_features(dataset, get_network("vgg_random"), folder / "f.nc",
                              TEST_CONFIG["networks"]["vgg_random"], progress=False)


class TestAlignInChunks:
    #: fast optimiser settings (still every start kind and the dense warp)
    OPTIONS = {"starts_per_family": 1, "dense_steps": 10}

    @pytest.mark.parametrize("per", [1, 3])
    def test_equals_one_chunk(self, features, per, monkeypatch):
        path = features
        whole = {layer: alignment_dataset(path, layer, region_fraction=0.5,
                                          options=self.OPTIONS, progress=False)
                 for layer in ("block1", "block3")}
        monkeypatch.setattr(align_files, "samples_per_chunk", lambda ds, names, el: per)
        for layer, a in whole.items():
            b = alignment_dataset(path, layer, region_fraction=0.5, options=self.OPTIONS,
                                  progress=False)
            assert set(a.variables) == set(b.variables)
            controls = ["none", "input", "constant", "oracle"]
            xr.testing.assert_identical(a.error.sel(measure=controls),
                                        b.error.sel(measure=controls))
            assert bool(np.isfinite(b.error.sel(measure="mixing")).all())
            np.testing.assert_allclose(b.error.sel(measure="mixing"),
                                       a.error.sel(measure="mixing"), rtol=MIXING_RTOL,
                                       atol=MIXING_ATOL)
            for name in ("affine_matrix", "dense_displacement_rms"):
                np.testing.assert_allclose(b[name], a[name], rtol=0, atol=OPTIMISER_ATOL)
            np.testing.assert_allclose(b.error.sel(measure=["affine", "dense"]),
                                       a.error.sel(measure=["affine", "dense"]), rtol=0,
                                       atol=OPTIMISER_ATOL)
            assert a.attrs["region_pixels"] == b.attrs["region_pixels"]

    def test_samples_per_chunk(self, features):
        with xr.open_dataset(features, group="block3") as ds:
            names = ("dense_original", "dense_transformed", "dense_realigned")
            per_sample = sum(int(np.prod(ds[n].shape[1:])) for n in names)
            assert align_files.samples_per_chunk(ds, names, per_sample - 1) == 1
            assert align_files.samples_per_chunk(ds, names, 2 * per_sample + 5) == 2
            assert align_files.samples_per_chunk(ds, names, 10**12) == ds.sizes["sample"]
