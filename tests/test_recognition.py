"""The recognize stage: the head contract, known answers, the held-out split, the claims."""

from __future__ import annotations

import copy
import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from featalign import geometry
from featalign.check import check_network, smooth_images
from featalign.config import ConfigError, validate_config
from featalign.datasets import DatasetSpec, build_dataset
from featalign.lattice import probe_grid
from featalign.names import ALIGNMENTS
from featalign.plugins import PluginError, get_network, load_plugins
from featalign.recognition import passes
from featalign.recognition.measure import (
    HEAD_TOL,
    build_classifier,
    head_differences,
    heldout_digits,
    js_divergence,
    recognition_dataset,
    recognition_digits,
    recognition_images,
)
from featalign.summary.recognition import problem_table, recognition_claims, recognition_table

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"

DICT_PLUGIN = """
import torch
from torch import nn
from featalign.plugins import network


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, {classes})
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g))
            self.conv.bias.zero_()
            self.fc.bias.zero_()

    def forward(self, x):
        c = torch.relu(self.conv(x))
        p = nn.functional.avg_pool2d(c, 2)
        return {{"conv": c, "pool": p, "logits": self.fc(p.mean((-2, -1)))}}


def head(model, layer):
    pool = nn.AvgPool2d(2) if layer == "conv" else nn.Identity()
    return nn.Sequential(pool, nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc)


@network(name="{name}", description="dict classifier", layers=["conv", "pool"],
         in_channels=1, strides={{"conv": 1, "pool": 2}}, head=head)
def build():
    return Net()
"""


def dict_plugin(tmp_path: Path, name: str, *, classes: int = 3) -> object:
    folder = tmp_path / name
    folder.mkdir()
    text = DICT_PLUGIN.format(name=name, classes=classes)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return load_plugins([folder], entry_points=False)[name]


class TestHeadContract:
    def test_dict_module_head_reproduces_its_logits(self, tmp_path):
        spec = dict_plugin(tmp_path, "dict_ok")
        diffs = head_differences(build_classifier(spec), smooth_images(2, 1, 32))
        assert set(diffs) == {"conv", "pool"}
        assert max(diffs.values()) <= HEAD_TOL
        report = check_network(spec)
        assert report.passed, report.format()
        assert any(n.startswith("head:") for n in report.notes)

    def test_check_fails_a_head_that_does_not_reproduce_the_network(self, tmp_path):
        spec = dict_plugin(tmp_path, "dict_bad")

        def head(model, layer):  # max-pools where the network averages, for 'conv' only
            pool = torch.nn.MaxPool2d(2) if layer == "conv" else torch.nn.Identity()
            return torch.nn.Sequential(
                pool, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), model.fc
            )

        report = check_network(dataclasses.replace(spec, head=head))
        assert not report.passed
        assert (
            [f for f in report.failures if "does not reproduce" in f]
            == [f for f in report.failures if "for layer 'conv'" in f]
            != []
        ), report.failures

    def test_wrong_number_of_classes(self, tmp_path):
        spec = dict_plugin(tmp_path, "dict_classes")
        spec = dataclasses.replace(
            spec,
            head=lambda m, layer: torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)
            ),
        )
        with pytest.raises(
            PluginError,
            match=r"for layer 'conv' returns shape \(2, 5\), but "
            r"the network's logits are \(2, 3\)",
        ):
            head_differences(build_classifier(spec), smooth_images(2, 1, 32))

    def test_network_without_head(self):
        with pytest.raises(PluginError, match="declares no head="):
            build_classifier(get_network("vgg_random"))

    @pytest.mark.parametrize(
        "name, options", [("mnist_cnn", {"random_init": True}), ("mobilenet_v2", {})]
    )
    def test_builtin_heads(self, name, options):
        spec = get_network(name)
        images = smooth_images(2, spec.in_channels, 64)
        diffs = head_differences(build_classifier(spec, options), images)
        assert list(diffs) == list(spec.layers)
        assert max(diffs.values()) <= HEAD_TOL

    @pytest.mark.parametrize("size", [28, 29, 48, 63, 64])
    def test_mnist_cnn_conv1_head_convolves_only_the_field_it_reads(self, size):
        clf = build_classifier(get_network("mnist_cnn"), {"random_init": True})
        m = clf.model
        maps = torch.rand(2, 64, size // 2, size // 2)  # any maps, not only conv1's
        full = torch.nn.Sequential(m.conv2, m.pool2, m.relu2, m.grid, torch.nn.Flatten(), m.fc)
        with torch.no_grad():
            torch.testing.assert_close(clf.heads["conv1"](maps), full(maps), rtol=1e-5, atol=1e-5)

    def test_mnist_cnn_is_the_trained_network_at_28px(self):
        from featalign.train import load_mnist_cnn

        plugin = build_classifier(get_network("mnist_cnn"), {"random_init": True}).model
        plain = load_mnist_cnn(random_init=True)
        x = smooth_images(3, 1, 28)
        with torch.no_grad():
            assert torch.equal(plugin(x), plain(x))
            # on a larger canvas it classifies the centre field, not a squeezed canvas
            assert plugin(torch.zeros(1, 1, 64, 64)).shape == (1, 10)


_GRID = dict(stride=2, offset_y=0.5, offset_x=0.5, image_height=64, image_width=64, depth=0)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """mnist_cnn (seeded random init) on 64 px digits; 'best' affine warps = the oracle's."""
    spec = DatasetSpec(name="d", source="mnist", samples=3, size=64)
    sweep = {"translation": [4, 3], "rotation": [90]}
    ds = build_dataset(spec, sweep)
    clf = build_classifier(get_network("mnist_cnn"), {"random_init": True})
    probes = probe_grid(clf.body, 1, 64)
    inverse = geometry.invert(torch.from_numpy(ds.matrix.values)).numpy()
    # the dense warps: on top of the oracle's affine, a constant field that undoes it for
    # the translations (the sum reads where the unaligned maps are), none elsewhere
    control = np.zeros((2, 3, len(inverse), 2, 6, 6))
    moves = ds.family.values == "translation"
    control[:, :, moves] = -ds.matrix.values[moves, :, 2][:, :, None, None]
    alignments = {}
    for depth, (layer, p) in enumerate(probes.items()):
        warps = np.broadcast_to(inverse, (2, 3, *inverse.shape)).copy()
        alignments[layer] = xr.Dataset(
            {"affine_matrix": (("evaluation", "sample", "transform", "row", "col"), warps),
             "dense_control": (("evaluation", "sample", "transform", "component", "control_y",
                                "control_x"), control)},
            coords={"evaluation": ["as_built", "dense"]},
            attrs=dict(
                layer=layer,
                stride=p.stride,
                offset_y=p.offset_y,
                offset_x=p.offset_x,
                image_height=64,
                image_width=64,
                depth=depth,
            ),
        )
    digits, held = recognition_digits(spec, 4, None, ds.description.values)
    assert not held
    out = recognition_dataset(ds, alignments, clf, spec, samples=4, digits=digits, progress=False)
    return ds, out, (alignments, clf, spec, digits)


class TestKnownAnswers:
    def test_oracle_restores_stride_multiple_translations_exactly(self, known):
        ds, out, _ = known
        pairs = list(zip(ds.family.values.tolist(), ds.magnitude.values.tolist(), strict=True))
        t = pairs.index(("translation", 4.0))
        for a in ("oracle", "input"):
            sel = out.sel(alignment=a).isel(transform=t)
            assert (sel.prediction.values == out.reference.values).all()
            assert float(sel.divergence.max()) < 1e-6
        # unaligned maps are shifted: the head sees another field
        assert float(out.sel(alignment="none").isel(transform=t).divergence.min()) > 1e-6

    def test_reference_none_and_input_are_the_network_once_for_every_layer(self, known):
        ds, out, (_, clf, _, _) = known
        own = out.sample_set.values == "alignment"
        got = out.isel(sample=own)
        for name in ("prediction", "confidence", "reference_probability", "divergence"):
            for a in ("none", "input"):  # computed once, copied to every layer
                values = got[name].sel(alignment=a).values
                assert (values == values[:1]).all(), (name, a)
        assert (got.reference.values == got.reference.values[:1]).all()
        # the straightforward per-layer computation head_k(body_k(x)) gives the same
        s, t = ds.sizes["sample"], ds.sizes["transform"]
        with torch.no_grad():

            def softmax(layer, images):
                x = torch.from_numpy(images).float().reshape(-1, *images.shape[-3:])
                logits = clf.heads[layer](clf.body(x)[layer])
                return torch.softmax(logits.double(), -1)

            for li, layer in enumerate(clf.spec.layers):
                ref = softmax(layer, ds.image.values)
                np.testing.assert_array_equal(got.reference.values[li], ref.argmax(-1).numpy())
                rep = ref.repeat_interleave(t, 0)
                for a, images in (("none", ds.transformed), ("input", ds.realigned)):
                    p = softmax(layer, images.values)
                    conf, pred = p.max(-1)
                    sel = got.sel(alignment=a).isel(layer=li)
                    np.testing.assert_array_equal(sel.prediction.values, pred.view(s, t))
                    np.testing.assert_allclose(sel.confidence, conf.view(s, t), rtol=1e-4)
                    np.testing.assert_allclose(
                        sel.reference_probability,
                        p.gather(1, rep.argmax(-1)[:, None]).view(s, t),
                        rtol=1e-4,
                        atol=1e-7,
                    )
                    np.testing.assert_allclose(
                        sel.divergence, js_divergence(p, rep).view(s, t), rtol=1e-4, atol=1e-6
                    )

    def test_affine_with_the_oracle_warp_is_the_oracle(self, known):
        _, out, _ = known
        own = out.sample_set.values == "alignment"
        a = out.sel(alignment="affine").isel(sample=own)
        o = out.sel(alignment="oracle").isel(sample=own)
        assert (a.prediction.values == o.prediction.values).all()
        np.testing.assert_allclose(a.divergence.values, o.divergence.values, atol=1e-6)
        # affine is computed on the dataset's own samples only
        assert (out.sel(alignment="affine").isel(sample=~own).prediction.values == -1).all()

    def test_dense_applies_the_stored_field(self, known):
        ds, out, _ = known
        own = out.sample_set.values == "alignment"
        moves = ds.family.values == "translation"
        dense = out.sel(alignment="dense").isel(sample=own)
        # the field cancels the oracle's translation: the unaligned decision, to the bit
        for other, where in (("none", moves), ("oracle", ~moves)):
            ref = out.sel(alignment=other).isel(sample=own, transform=where)
            got = dense.isel(transform=where)
            assert (got.prediction.values == ref.prediction.values).all()
            np.testing.assert_allclose(got.divergence.values, ref.divergence.values, atol=1e-6)
        assert (out.sel(alignment="dense").isel(sample=~own).prediction.values == -1).all()

    def test_an_alignment_file_without_dense_warps_is_refused(self, known):
        ds, _, _ = known
        clf = build_classifier(get_network("mnist_cnn"), {"random_init": True})
        spec = DatasetSpec(name="d", source="mnist", samples=3, size=64)
        old = {layer: xr.Dataset({"affine_matrix": (("evaluation", "x"), np.zeros((2, 1)))},
                                 coords={"evaluation": ["as_built", "dense"]}, attrs=_GRID)
               for layer in clf.spec.layers}  # fmt: skip
        with pytest.raises(PluginError, match=r"has no dense_control .* rerun its align job"):
            recognition_dataset(ds, old, clf, spec, samples=0, progress=False)

    def test_the_recognition_set_in_chunks_is_the_same(self, known):
        ds, out, (alignments, clf, spec, digits) = known
        chunked = recognition_dataset(ds, alignments, clf, spec, samples=4, digits=digits,
                                      batch_size=2, chunk_samples=3, progress=False)  # fmt: skip
        for name, var in out.data_vars.items():
            if var.dtype.kind == "f":  # other batches: float32 sums in another order
                np.testing.assert_allclose(chunked[name], var, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(chunked[name], var)

    def test_passes_of_a_few_transforms_are_the_same(self, known, monkeypatch):
        """Where one sample's images do not fit PASS_BYTES, its transforms are split."""
        ds, out, (alignments, clf, spec, digits) = known
        monkeypatch.setattr(passes, "PASS_BYTES", 1)  # one transform a pass
        split = recognition_dataset(ds, alignments, clf, spec, samples=4, digits=digits,
                                    progress=False)  # fmt: skip
        for name, var in out.data_vars.items():
            if var.dtype.kind == "f":  # other batches: float32 sums in another order
                np.testing.assert_allclose(split[name], var, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(split[name], var)

    def test_tables(self, known):
        _, out, _ = known
        problems = problem_table(out)
        assert set(problems["alignment"]) == set(ALIGNMENTS)
        assert problems["correct"].notna().all()  # digits have labels
        table = recognition_table(problems, resamples=200)
        assert (
            (table["agreement_low"] <= table["agreement"])
            & (table["agreement"] <= table["agreement_high"])
        ).all()
        assert table.loc[table["sample_set"] == "recognition", "n"].eq(4).all()


@pytest.mark.slow
def test_heldout_digits_are_the_training_split(tmp_path):
    from featalign.train import load_mnist_cnn, load_mnist_digits, train_mnist_cnn

    meta = train_mnist_cnn(tmp_path / "w.pt", epochs=1, seed=3, holdout=200, limit=200)
    model = load_mnist_cnn(tmp_path / "w.pt")
    images, labels = load_mnist_digits()
    idx = torch.from_numpy(heldout_digits(3, 200))
    with torch.no_grad():
        right = int((model(images[idx]).argmax(1) == labels[idx]).sum())
    assert right == round(meta["heldout_accuracy"] * 200)
    spec = DatasetSpec(name="d", source="mnist", samples=2, size=32)
    digits, held = recognition_digits(spec, 50, meta, [])
    assert held and list(digits) == list(idx[:50].numpy())


@pytest.mark.parametrize("source", ["photographs", "mnist"])
def test_recognition_images_are_drawn_as_the_dataset_draws(source):
    spec = DatasetSpec(
        name="d", source=source, samples=3, size=32, images=("camera",), digit_size=20
    )
    ds = build_dataset(spec, {"shear": [0.1]})
    if source == "mnist":
        digits = [int(d.split("[")[1].split("]")[0]) for d in ds.description.values]
        images, described, labels = recognition_images(spec, 3, digits=digits)
        assert (labels >= 0).all()
    else:
        images, described, labels = recognition_images(dataclasses.replace(spec, samples=0), 3)
        assert (labels == -1).all()
    assert described == list(ds.description.values)
    np.testing.assert_allclose(images.float().numpy(), ds.image.values, atol=1e-6)


def _problems(changed: dict[tuple[str, str, float], float], n: int = 40) -> pd.DataFrame:
    """Synthetic problems: alignment x (family, magnitude) -> rate of changed decisions."""
    rows = []
    for (alignment, family, mag), rate in changed.items():
        for s in range(n):
            rows.append(
                dict(
                    dataset="d",
                    network="net",
                    layer="l",
                    depth=0,
                    stride=2,
                    alignment=alignment,
                    sample_set="recognition",
                    sample=s,
                    transform=f"{family}{mag}",
                    family=family,
                    magnitude=mag,
                    claim_family=family if family != "translation" else "translation",
                    agree=float(s >= rate * n),
                    correct=np.nan,
                    divergence=0.0,
                )
            )
    return pd.DataFrame(rows)


def test_recognition_claims_known_verdicts():
    problems = _problems(
        {
            ("oracle", "translation", 2.0): 0.0,
            ("oracle", "translation", 4.0): 0.0,
            ("oracle", "shear", 0.2): 0.2,
            ("oracle", "shear", 0.5): 0.8,
            ("input", "translation", 2.0): 0.0,
            ("input", "translation", 4.0): 0.0,
            ("input", "shear", 0.2): 0.0,
            ("input", "shear", 0.5): 0.0,
        }
    )
    claims = recognition_claims(problems, {"net": []}, margin=0.05, resamples=500)
    got = {
        (r.alignment, r.family): (r.prediction, r.verdict, r.agreement) for r in claims.itertuples()
    }
    assert got[("oracle", "translation")] == ("restored", "restored", "yes")
    assert got[("oracle", "shear")] == ("not restored", "not restored", "yes")
    assert got[("input", "shear")] == ("restored", "restored", "yes")
    assert claims["about"].eq("recognition").all()
    row = claims[(claims["alignment"] == "oracle") & (claims["family"] == "shear")].iloc[0]
    assert row["effect"] == pytest.approx(0.8)  # minus the input's rate, 0
    # a declared invariance turns the prediction around
    inv = recognition_claims(problems, {"net": ["shear"]}, margin=0.05, resamples=500)
    shear = inv[(inv["alignment"] == "oracle") & (inv["family"] == "shear")].iloc[0]
    assert (shear["prediction"], shear["agreement"]) == ("restored", "no")


class TestConfig:
    @staticmethod
    def config(**recognition) -> dict:
        cfg = yaml.safe_load((ROOT / "config/test.yaml").read_text())
        cfg["recognition"] = recognition
        return copy.deepcopy(cfg)

    def test_a_network_without_head(self):
        with pytest.raises(
            ConfigError,
            match=r"^recognition\.networks: network 'vgg_random' "
            r".*declares no head=",
        ):
            validate_config(self.config(networks=["vgg_random"]), SCHEMA)

    def test_an_unconfigured_network(self):
        with pytest.raises(
            ConfigError,
            match=r"recognition\.networks: 'mobilenet_v2' is not a "
            r"configured network",
        ):
            validate_config(self.config(networks=["mobilenet_v2"]), SCHEMA)

    def test_more_digits_than_held_out(self):
        with pytest.raises(
            ConfigError,
            match=r"recognition\.samples: 101 digits asked for on "
            r"dataset 'tiny_digits', but network 'mnist_cnn' "
            r"holds out 100 .* write at most 100",
        ):
            validate_config(self.config(samples=101), SCHEMA)

    def test_more_digits_than_held_out_per_dataset(self):
        with pytest.raises(
            ConfigError,
            match=r"^recognition\.samples\.tiny_digits: 101 digits asked for on dataset "
            r"'tiny_digits'.* write at most 100",
        ):
            validate_config(self.config(samples={"tiny_digits": 101, "tiny_photos": 500}), SCHEMA)

    def test_samples_for_an_unknown_dataset(self):
        with pytest.raises(
            ConfigError,
            match=r"^recognition\.samples names 'digitz', not a configured dataset "
            r"\(configured: tiny_photos, tiny_digits\)",
        ):
            validate_config(self.config(samples={"digitz": 10}), SCHEMA)

    def test_samples_per_dataset_reach_only_that_datasets_job(self):
        from featalign.plan import load_plan

        plan = load_plan(self.config(samples={"tiny_digits": 50}), SCHEMA)
        counts = {d: p["recognition"]["samples"] for d, p in plan.recognition_params.items()}
        assert counts == {"tiny_photos": 0, "tiny_digits": 50}
        same = load_plan(self.config(samples={"tiny_digits": 50, "tiny_photos": 3}), SCHEMA)
        assert same.recognition_params["tiny_digits"] == plan.recognition_params["tiny_digits"]
        assert load_plan(self.config(samples=7), SCHEMA).recognition_params["tiny_photos"][
            "recognition"]["samples"] == 7  # fmt: skip

    def test_margin_out_of_range(self):
        with pytest.raises(ConfigError, match=r"recognition\.margin"):
            validate_config(self.config(margin=0), SCHEMA)

    def test_default_runs_every_classifier(self):
        from featalign.plan import load_plan

        plan = load_plan(self.config(), SCHEMA)
        assert plan.recognitions == (("tiny_photos", "mnist_cnn"), ("tiny_digits", "mnist_cnn"))
        assert load_plan(self.config(networks=[]), SCHEMA).recognitions == ()


def test_recognition_figure(known, tmp_path):
    from featalign.figures.recognition import plot_recognition

    _, out, _ = known
    table = recognition_table(problem_table(out), resamples=100)
    fig = plot_recognition(table, tmp_path / "r.png", tmp_path / "r.pdf")
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "r.pdf").stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == out.family.to_series().nunique() * out.sizes["layer"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("affine") and "n = 3 per point" in t for t in labels)
    assert any(t.startswith("oracle") and "n = 4 per point" in t for t in labels)


def test_verdict_grid_gets_a_panel_per_alignment(tmp_path):
    from featalign.figures.verdict_grid import plot_verdict_grid
    from featalign.summary.claims import with_recognition

    base = dict(dataset="d", network="n", layer="l", depth=0, stride=2, family="shear")
    alignment = pd.DataFrame([dict(base, evaluation=e, verdict="not aligned",
                                   prediction="not aligned", agreement="yes")
                              for e in ("dense", "as_built")])  # fmt: skip
    recognition = pd.DataFrame([dict(base, evaluation="as_built", verdict=v, prediction=p,
                                     agreement=g, about="recognition", alignment=a)
                                for a, v, p, g in (("oracle", "restored", "not restored", "no"),
                                                   ("input", "restored", "restored", "yes"))])  # fmt: skip
    fig = plot_verdict_grid(with_recognition(alignment, recognition), tmp_path / "g.png",
                            tmp_path / "g.pdf")  # fmt: skip
    gids = [ax.get_gid() for ax in fig.axes if ax.get_gid()]
    assert gids == ["dense", "as_built", "recognition: oracle", "recognition: input"]
    oracle = next(ax for ax in fig.axes if ax.get_gid() == "recognition: oracle")
    assert [t for t in oracle.texts if t.get_gid() == "disagreement"]


class TestPassShape:
    """How many samples, or transforms of one sample, a forward pass takes."""

    def test_whole_samples_while_they_fit(self):
        # 10 images of 100 bytes fit in 1000: two samples of 1 + 4 images
        assert passes.pass_shape(100, 4, batch_size=8, budget=1000) == (2, 4)
        assert passes.pass_shape(100, 4, batch_size=1, budget=1000) == (1, 4)
        assert passes.pass_shape(1, 4, batch_size=8, budget=10**9) == (8, 4)

    def test_transforms_of_one_sample_when_it_does_not_fit(self):
        # 4 images fit: the sample itself and 3 of its 55 transforms
        assert passes.pass_shape(100, 55, batch_size=8, budget=400) == (1, 3)
        # never less than one transform
        assert passes.pass_shape(10**9, 55, batch_size=8, budget=400) == (1, 1)
