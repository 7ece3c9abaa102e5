"""The feature stage: channel conversion, layer groups, geometry attributes, bad plugins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from featalign import geometry
from featalign.datasets import DatasetSpec, build_dataset
from featalign.extractor import build_extractor
from featalign.features import FeatureError, convert_channels, extract_features, layer_grid
from featalign.io import write_netcdf
from featalign.plugins import PluginError, get_network

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def dataset() -> xr.Dataset:
    spec = DatasetSpec(name="feat", source="textures", samples=2, size=32, channels=1,
                       window_radius=0.5)
    return build_dataset(spec, {"translation": [2, 1], "rotation": [90]})


@pytest.fixture(scope="module")
def tiny():
    return get_network("tiny", [TESTS / "plugins"])


@pytest.fixture(scope="module")
def tree(dataset, tiny) -> xr.DataTree:
    return extract_features(dataset, tiny, {"width": 3}, progress=False)


class TestConvertChannels:
    def test_grey_to_colour_replicates(self):
        x = torch.rand(2, 1, 4, 4)
        y = convert_channels(x, 3)
        assert y.shape == (2, 3, 4, 4) and torch.equal(y[:, 2], x[:, 0])

    def test_colour_to_grey_is_luma(self):
        x = torch.zeros(1, 3, 2, 2)
        x[:, 1] = 1.0
        assert torch.allclose(convert_channels(x, 1), torch.full((1, 1, 2, 2), 0.587))


class TestExtractFeatures:
    def test_layout(self, tree, dataset):
        assert set(tree.children) == {"conv", "pool"}
        pool = tree["pool"].to_dataset()
        assert pool.original.dims == ("sample", "channel", "y", "x")
        assert pool.transformed.shape == (2, 3, 3, 16, 16)
        assert pool.attrs["stride"] == 2 and pool.attrs["channels"] == 3
        assert pool.attrs["depth"] == 1
        assert list(pool.family.values) == list(dataset.family.values)
        assert tree.attrs["network"] == "tiny" and len(tree.attrs["plugin_sha256"]) == 64

    def test_values_are_the_network(self, tree, dataset, tiny):
        ex = build_extractor(tiny, {"width": 3})
        with torch.no_grad():
            want = ex(torch.from_numpy(dataset.image.values))["conv"]
        np.testing.assert_allclose(tree["conv"].original.values, want.numpy(), rtol=1e-6)

    def test_physical_coordinates(self, tree):
        pool = tree["pool"].to_dataset()
        # centred 2x2 pooling of a 32 px canvas: feature pixel k sits at 0.5 + 2k - 15.5
        np.testing.assert_allclose(pool.x.values, 0.5 + 2 * np.arange(16) - 15.5)
        grid = layer_grid(pool)
        assert (grid.stride, grid.offset_x, grid.image_width) == (2.0, 0.5, 32)

    def test_stride_multiple_translation_is_a_shift(self, tree):
        """Γ(T_g f) equals T_g Γ(f) for a shift by the stride (the CNN is covariant)."""
        pool = tree["pool"].to_dataset()
        t = int(np.flatnonzero((pool.family.values == "translation")
                               & (pool.magnitude.values == 2))[0])
        moved = torch.from_numpy(pool.transformed.values[:, t]).double()
        warped = geometry.warp(torch.from_numpy(pool.original.values).double(),
                               torch.from_numpy(pool.matrix.values[t]), grid=layer_grid(pool))
        inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
        assert torch.allclose(moved[inner], warped[inner], atol=1e-5)

    def test_file_round_trip_one_group(self, tree, tmp_path):
        path = write_netcdf(tree, tmp_path / "f.nc")
        with xr.open_dataset(path, group="pool") as pool:
            np.testing.assert_array_equal(pool.original.values, tree["pool"].original.values)
            assert pool.attrs["stride"] == 2
        back = xr.open_datatree(path)
        assert back.attrs["network"] == "tiny"

    def test_canvas_not_divisible(self, tiny):
        odd = build_dataset(
            DatasetSpec(name="odd", source="textures", samples=1, size=30, channels=1,
                        window_radius=0.5),
            {"rotation": [10]},
        )
        odd = odd.isel(x=slice(0, 29), y=slice(0, 29))
        with pytest.raises(FeatureError, match="stride 2, but dataset 'odd' has a 29x29 canvas; "
                                               "make datasets.<name>.size a multiple of 2"):
            extract_features(odd, tiny, {}, progress=False)

    def test_nan_plugin_refused(self, dataset, tmp_path):
        (tmp_path / "nanny.py").write_text(textwrap.dedent('''
            import torch
            from featalign.plugins import network

            class Nan(torch.nn.Module):
                def forward(self, x):
                    return {"out": x * float("nan")}

            @network(name="nanny", description="NaN", layers=["out"], in_channels=1)
            def build():
                return Nan()
        '''))
        with pytest.raises(PluginError, match=r"nanny.py: layer 'out' of network 'nanny' produced"):
            extract_features(dataset, get_network("nanny", [tmp_path]), {}, progress=False)


def test_timeout_fails_a_slow_network(dataset, tmp_path):
    (tmp_path / "sloth.py").write_text(textwrap.dedent('''
        import time
        import torch
        from featalign.plugins import network

        class Sloth(torch.nn.Module):
            def forward(self, x):
                time.sleep(0.5)
                return {"out": x}

        @network(name="sloth", description="slow", layers=["out"], in_channels=1)
        def build():
            return Sloth()
    '''))
    spec = get_network("sloth", [tmp_path])
    with pytest.raises(PluginError, match=r"sloth.py: network 'sloth' took longer than "
                                          r"features.timeout = 1 s on dataset 'feat'"):
        extract_features(dataset, spec, {}, timeout=1.0, batch_size=1, progress=False)
    # without a limit the same network completes
    tree = extract_features(dataset.isel(sample=[0], transform=[0]), spec, {}, progress=False)
    assert "out" in tree.children


class TestDenseEvaluation:
    """Strided layers are also stored densely (shift-and-stitch, featalign.stitch)."""

    def test_strided_layers_only(self, tree):
        assert not any(str(v).startswith("dense_") for v in tree["conv"].to_dataset().variables)
        pool = tree["pool"].to_dataset()
        assert pool.dense_original.dims == ("sample", "channel", "dense_y", "dense_x")
        assert pool.dense_transformed.dims == ("sample", "transform", "channel", "dense_y",
                                               "dense_x")
        assert pool.dense_realigned.shape == (2, 3, 3, 32, 32)
        assert {pool[f"dense_{v}"].dtype for v in ("original", "transformed", "realigned")} == {
            np.dtype(np.float32)
        }
        assert pool.attrs["dense_stride"] == 1 and pool.attrs["dense_phases"] == 4
        # stride 1, the layer's measured offset 0.5: pixel j at 0.5 + j - 15.5
        np.testing.assert_allclose(pool.dense_x.values, 0.5 + np.arange(32) - 15.5)
        np.testing.assert_allclose(pool.dense_y.values[::2], pool.y.values)

    def test_phase_zero_is_the_as_built_map(self, tree):
        pool = tree["pool"].to_dataset()
        for v in ("original", "transformed", "realigned"):
            np.testing.assert_array_equal(pool[f"dense_{v}"].values[..., ::2, ::2],
                                          pool[v].values)

    def test_off_keeps_the_as_built_maps_bit_for_bit(self, dataset, tiny, tree, tmp_path):
        off = extract_features(dataset, tiny, {"width": 3}, dense=False, progress=False)
        for layer in ("conv", "pool"):
            group = off[layer].to_dataset()
            assert not any(str(v).startswith("dense_") for v in group.variables)
            for v in ("original", "transformed", "realigned"):
                np.testing.assert_array_equal(group[v].values, tree[layer][v].values)
        assert off.attrs["dense_evaluation"] == 0 and tree.attrs["dense_evaluation"] == 1
        path = write_netcdf(tree, tmp_path / "dense.nc")
        with xr.open_dataset(path, group="pool") as pool:
            np.testing.assert_array_equal(pool.dense_original.values,
                                          tree["pool"].dense_original.values)

    def test_one_pixel_shift_shifts_the_dense_maps(self):
        """Dense maps commute with a one-pixel shift, at strides 2 and 4 (vgg_random)."""
        base = build_dataset(
            DatasetSpec(name="shift", source="textures", samples=1, size=32, channels=3,
                        window_radius=0.5),
            {"rotation": [90]},
        )
        moved = base.copy()
        for v in ("image", "transformed", "realigned"):  # content windowed: zeros come in
            moved[v] = base[v].roll(y=1, x=1, roll_coords=False)
        net = get_network("vgg_random")
        a = extract_features(base, net, {"width": 4}, progress=False)
        b = extract_features(moved, net, {"width": 4}, progress=False)
        for layer, stride in (("block2", 2), ("block3", 4)):
            assert a[layer].attrs["stride"] == stride
            for v in ("dense_original", "dense_transformed", "dense_realigned"):
                got = b[layer][v].values[..., 1:, 1:]
                want = a[layer][v].values[..., :-1, :-1]
                scale = np.abs(want).max()
                assert scale > 0
                np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0)
            # the as-built map cannot follow a sub-stride shift: it samples other positions
            built_a, built_b = a[layer].original.values, b[layer].original.values
            assert np.abs(built_b[..., 1:, 1:] - built_a[..., :-1, :-1]).max() > 1e-3 * scale


@pytest.fixture(scope="module")
def small(dataset) -> xr.Dataset:
    return dataset.isel(sample=[0], transform=[0, 2])


class TestStageByStage:
    """A chain of stages (featalign.nets.Tapped) is evaluated densely stage by stage: each
    stage once per phase of its own stride (featalign.stitch.stitch_stages), checked on the
    job's first images against plain shift-and-stitch."""

    def _dense(self, tree: xr.DataTree) -> dict[str, np.ndarray]:
        return {f"{layer}/{v}": tree[layer][f"dense_{v}"].values
                for layer in ("block2", "block3")
                for v in ("original", "transformed", "realigned")}

    def test_equals_plain_shift_and_stitch(self, small, monkeypatch, caplog):
        net = get_network("vgg_random")
        with caplog.at_level("INFO", logger="featalign.forward"):
            staged = extract_features(small, net, {"width": 4}, progress=False)
        assert "dense evaluation stage by stage: equals plain" in caplog.text
        monkeypatch.setattr("featalign.features.chain_of_stages", lambda extractor: None)
        plain = extract_features(small, net, {"width": 4}, progress=False)
        got, want = self._dense(staged), self._dense(plain)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=0,
                                       atol=1e-6 * np.abs(want[key]).max(), err_msg=key)

    def test_falls_back_where_the_stages_are_not_sliding_windows(self, small, monkeypatch,
                                                                   caplog):
        """A chain the check finds different from the network (here: a stage that
        rescales by position) is not used: the maps are plain shift-and-stitch's."""
        from featalign.forward import chain_of_stages as real

        class Ramp(torch.nn.Module):
            def forward(self, x):
                return x * torch.linspace(1, 2, x.shape[-1], dtype=x.dtype)

        def skewed(extractor):
            chain = list(real(extractor))
            return tuple(chain[:1]) + (("ramp#", Ramp()),) + tuple(chain[1:])

        net = get_network("vgg_random")
        monkeypatch.setattr("featalign.features.chain_of_stages", lambda extractor: None)
        plain_tree = extract_features(small, net, {"width": 4}, progress=False)
        monkeypatch.setattr("featalign.features.chain_of_stages", skewed)
        with caplog.at_level("WARNING", logger="featalign.forward"):
            tree = extract_features(small, net, {"width": 4}, progress=False)
        assert "plain shift-and-stitch instead" in caplog.text
        got, want = self._dense(tree), self._dense(plain_tree)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    def test_falls_back_where_the_stages_cannot_be_run(self, small, monkeypatch, caplog):
        """A chain that fails on the check's images (a stride or a reach that is not what
        it seemed: ValueError) is not used either: the job goes on with plain
        shift-and-stitch instead of failing."""
        net = get_network("vgg_random")
        monkeypatch.setattr("featalign.features.chain_of_stages", lambda extractor: None)
        plain_tree = extract_features(small, net, {"width": 4}, progress=False)
        monkeypatch.undo()

        def broken(*args, **kwargs):
            raise ValueError("stage 'block3': its maps are too small to crop")

        monkeypatch.setattr("featalign.forward.stage_maps", broken)
        with caplog.at_level("WARNING", logger="featalign.forward"):
            tree = extract_features(small, net, {"width": 4}, progress=False)
        assert "too small to crop): plain shift-and-stitch instead" in caplog.text
        got, want = self._dense(tree), self._dense(plain_tree)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
