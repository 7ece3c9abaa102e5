"""The verdict rule of README "Verdicts", the deformation that orders a sweep, and the
separation (AUC): known answers for every branch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from featalign.summary import (
    CLAIMS_COLUMNS,
    auc,
    claim_family,
    claims_table,
    deformation,
    disagreement_reason,
    magnitude_levels,
    problem_excess,
    separation_table,
    verdict,
)

TAU = 0.001

#: README "Verdicts" rule 1 (unresolved if some hi_m < −r_m, r_m = F_m + τ) cannot fire on
#: non-negative errors; left for the rule's author (tests below), not tuned here.
FLOOR = 0.002  # the input error of every problem below: resolution = FLOOR + TAU = 0.003


def claim_errors(
    sweep: dict[float, list[float]],
    family: str = "shear",
    *,
    network: str = "net",
    evaluation: str = "dense",
    floor: float = FLOOR,
) -> pd.DataFrame:
    """The errors of one claim whose excess is known per problem: magnitude -> excesses."""
    rows = []
    t = 0
    for magnitude, excesses in sweep.items():
        for s, ex in enumerate(excesses):
            problem = dict(
                dataset="d",
                network=network,
                layer="l",
                evaluation=evaluation,
                depth=0,
                stride=1,
                layer_stride=1,
                channels=4,
                sample=s,
                transform=t,
                family=family,
                claim_family=claim_family(family, magnitude, 1),
                magnitude=magnitude,
            )
            values = {"affine": floor + ex, "dense": floor + ex + 0.01, "input": floor}
            rows += [dict(problem, measure=m, error=e) for m, e in values.items()]
        t += 1
    return pd.DataFrame(rows)


def judge(errors: pd.DataFrame, invariances=None) -> pd.Series:
    """The one claim's row of the claims table (τ = TAU, fixed bootstrap)."""
    claims = claims_table(errors, invariances or {}, margin=TAU, resamples=500, seed=0)
    assert len(claims) == 1
    return claims.iloc[0]


# --------------------------------------------------------------------------- the rule


class TestVerdictFunction:
    def test_branches(self):
        r = [0.003, 0.003]
        assert verdict([0.0, 0.001], [-0.001, -0.001], [0.001, 0.003], r, TAU) == "aligned"
        assert verdict([0.01, 0.05], [0.005, 0.04], [0.02, 0.06], r, TAU) == "not aligned"
        # clearly above at the largest magnitude, but falling with it: no dose response
        assert verdict([0.05, 0.01], [0.04, 0.005], [0.06, 0.02], r, TAU) == "inconclusive"
        # straddles the resolution at the largest magnitude
        assert verdict([0.01, 0.01], [0.005, 0.002], [0.02, 0.02], r, TAU) == "inconclusive"
        # below −τ at one magnitude: unresolved before anything else, even a clear effect
        assert verdict([-0.01, 0.05], [-0.02, 0.04], [-0.005, 0.06], r, TAU) == "unresolved"

    def test_boundaries(self):
        # hi = r is within the resolution; hi = −τ is not below −τ; lo = r is not above r
        assert verdict([0.0], [-0.003], [0.003], [0.003], TAU) == "aligned"
        assert verdict([0.01], [0.003], [0.02], [0.003], TAU) == "inconclusive"
        assert verdict([-0.002], [-0.003], [-TAU], [0.003], TAU) == "aligned"
        assert verdict([-0.002], [-0.003], [-0.0011], [0.003], TAU) == "unresolved"
        # a single level: the dose response is trivially met
        assert verdict([0.01], [0.004], [0.02], [0.003], TAU) == "not aligned"
        # equal means at both ends meet Ē_M ≥ Ē_1
        assert verdict([0.01, 0.01], [0.005, 0.005], [0.02, 0.02], [0.003] * 2, TAU) == "not aligned"

    def test_nan_levels(self):
        nan = math.nan
        # a level without a finite excess can neither make every level aligned ...
        assert verdict([0.0, nan], [0.0, nan], [0.0, nan], [0.003, nan], TAU) == "inconclusive"
        # ... nor stand for the largest magnitude, nor make the claim unresolved
        assert verdict([0.05, nan], [0.04, nan], [0.06, nan], [0.003, nan], TAU) == "inconclusive"
        assert verdict([0.0, 0.05], [nan, 0.04], [nan, 0.06], [0.003] * 2, TAU) == "not aligned"

    def test_exception(self):
        with pytest.raises(ValueError, match="equal, non-empty"):
            verdict([], [], [], [], TAU)
        with pytest.raises(ValueError, match="equal, non-empty"):
            verdict([0.0], [0.0, 0.0], [0.0], [0.0], TAU)


class TestClaimsTableRule:
    """Known answers of the rule through claims_table, from errors with planted excess."""

    def test_aligned(self):
        row = judge(claim_errors({0.2: [0.0, 0.0005, -0.0005, 0.0], 0.5: [0.001, 0.0, 0.0, 0.0]}))
        assert row.verdict == "aligned"
        assert row.prediction == "not aligned" and row.agreement == "no"
        assert row.magnitudes == 2 and row.largest_magnitude == 0.5
        assert row.floor == pytest.approx(FLOOR) and row.resolution == pytest.approx(FLOOR + TAU)
        assert row.effect == pytest.approx(0.00025)

    def test_not_aligned(self):
        row = judge(
            claim_errors({0.2: [0.01, 0.012, 0.011, 0.009], 0.5: [0.05, 0.06, 0.055, 0.05]})
        )
        assert (row.verdict, row.prediction, row.agreement) == ("not aligned",) * 2 + ("yes",)
        assert row.effect == pytest.approx(0.05375)
        assert row.resolution < row.effect_low <= row.effect <= row.effect_high
        # the claim's excess over all problems is kept beside the effect
        assert row.excess_mean == pytest.approx((0.042 + 0.215) / 8)
        assert row.ci_low < row.excess_mean < row.ci_high

    def test_inconclusive_straddles(self):
        row = judge(claim_errors({0.2: [0.0] * 4, 0.5: [0.0, 0.0, 0.02, 0.02]}))
        assert row.effect_low <= row.resolution < row.effect_high
        assert row.verdict == "inconclusive" and row.agreement == "no"

    def test_unresolved_negative_excess(self):
        # the evidence issue's case (d4_pooled block3 on 8×8 maps): excess −0.031
        # [−0.066, −0.009], the input floor worse than the best warp: no resolution
        row = judge(claim_errors({0.2: [-0.066, -0.04, -0.01, -0.009]}, floor=0.07))
        assert row.effect_high < -TAU
        assert row.verdict == "unresolved" and row.agreement == "no"

    def test_negative_within_tau_is_not_unresolved(self):
        # an exact control a hair below the floor (the optimiser's rounding): aligned
        row = judge(claim_errors({0.2: [-1e-4, -2e-4, -1e-4, -1.5e-4]}))
        assert row.effect_high < 0 and row.verdict == "aligned"

    def test_why_the_bound_is_tau_not_the_resolution(self):
        # each excess is ≥ −input, so Ē_m ≥ −F_m and hi_m never falls below −(F_m + τ):
        # the first wording of rule 1 (README erratum) could not fire on real errors
        row = judge(claim_errors({0.2: [-0.07, -0.07, -0.07, -0.07]}, floor=0.07))
        assert row.effect_high >= -row.resolution
        assert row.verdict == "unresolved"

    def test_dose_response_failing(self):
        falling = judge(claim_errors({0.2: [0.1, 0.11, 0.1, 0.09], 0.5: [0.05, 0.06, 0.05, 0.04]}))
        assert falling.effect_low > falling.resolution  # clearly above the floor ...
        assert falling.verdict == "inconclusive"  # ... but falling with the magnitude
        rising = judge(claim_errors({0.2: [0.05, 0.06, 0.05, 0.04], 0.5: [0.1, 0.11, 0.1, 0.09]}))
        assert rising.verdict == "not aligned"

    def test_ordered_by_deformation_not_by_value(self):
        # scaling 0.6 deforms more than 1.25 (‖A − I‖_F: 0.57 against 0.35): 0.6 is the largest
        row = judge(claim_errors({1.25: [0.01] * 4, 0.6: [0.05, 0.06, 0.05, 0.04]}, "scaling"))
        assert row.largest_magnitude == 0.6 and row.effect == pytest.approx(0.05)
        assert row.verdict == "not aligned"
        row = judge(claim_errors({0.6: [0.01] * 4, 1.25: [0.05, 0.06, 0.05, 0.04]}, "scaling"))
        assert row.largest_magnitude == 0.6 and row.verdict == "inconclusive"  # falls with size

    def test_ties_pooled(self):
        # every reflection has ‖A − I‖_F = 2: 30° and 60° are one level, pooled
        row = judge(claim_errors({30.0: [0.1] * 4, 60.0: [0.0] * 4}, "reflection"))
        assert row.magnitudes == 1 and row.largest_magnitude == 60.0
        assert row.effect == pytest.approx(0.05) and row.problems == 8
        assert row.verdict == "not aligned"  # unpooled, 60° alone (excess 0) would say otherwise
        # rotations by ±θ pool too; the level's magnitude is the larger one on a tie
        levels = magnitude_levels(
            problem_excess(
                claim_errors({-15.0: [0.01] * 3, 15.0: [0.02] * 3, 45.0: [0.1] * 3}, "rotation")
            ),
            margin=TAU,
        )
        assert levels["level"].tolist() == [0, 1]
        assert levels["members"].tolist() == ["-15, 15", "45"]
        assert levels["magnitude"].tolist() == [15.0, 45.0]
        assert levels["rows"].tolist() == [6, 3]
        assert levels["mean"].iloc[0] == pytest.approx(0.015)

    def test_no_prediction_is_na(self):
        errors = claim_errors({1.0: [0.05] * 4}, "translation")
        errors["stride"] = 2  # a shift by 1 at stride 2: sub-stride, no prediction
        errors["claim_family"] = claim_family("translation", 1.0, 2)
        row = judge(errors)
        assert (row.family, row.prediction, row.agreement) == (
            "translation_substride",
            "none",
            "n/a",
        )

    def test_evaluations_are_separate_claims(self):
        dense = claim_errors({0.5: [0.0] * 4}, evaluation="dense")
        built = claim_errors({0.5: [0.05] * 4}, evaluation="as_built")
        claims = claims_table(
            pd.concat([built, dense], ignore_index=True), {}, margin=TAU, resamples=200
        )
        assert tuple(claims.columns) == CLAIMS_COLUMNS
        assert claims["evaluation"].tolist() == ["dense", "as_built"]  # dense first
        assert claims["verdict"].tolist() == ["aligned", "not aligned"]

    def test_without_evaluation_column(self):
        errors = claim_errors({0.5: [0.05] * 4}).drop(columns=["evaluation"])
        row = judge(errors)
        assert row.evaluation == "as_built" and row.verdict == "not aligned"


# --------------------------------------------------------------------------- deformation


class TestDeformation:
    @pytest.mark.parametrize(
        "family,magnitude,want",
        [
            ("translation", 2.0, 2 * math.sqrt(2)),  # the shift (m, m)
            ("translation", -3.0, 3 * math.sqrt(2)),
            ("rotation", 90.0, 2.0),
            ("rotation", 180.0, 2 * math.sqrt(2)),
            ("rotation", 60.0, 2 * math.sqrt(2) * math.sin(math.radians(30))),
            ("reflection", 0.0, 2.0),
            ("reflection", 30.0, 2.0),
            ("reflection", 45.0, 2.0),
            ("reflection", 90.0, 2.0),
            ("scaling", 0.8, math.sqrt(2) * 0.2),
            ("scaling", 1.5, math.sqrt(2) * 0.5),
            ("anisotropic_scaling", 1.5, math.hypot(0.5, 1 / 1.5 - 1)),
            ("shear", 0.5, 0.5),
            ("shear", -0.2, 0.2),
            ("affine", 0.4, 0.4),  # by definition: A = expm(m N), ‖N‖_F = 1
        ],
    )
    def test_known(self, family, magnitude, want):
        assert deformation(family, magnitude) == pytest.approx(want, rel=1e-12, abs=1e-12)

    def test_symmetric_rotations_are_equal(self):
        assert deformation("rotation", -15.0) == pytest.approx(deformation("rotation", 15.0))
        assert deformation("rotation", 270.0) == pytest.approx(deformation("rotation", 90.0))

    def test_affine_is_close_to_frobenius_for_small_magnitudes(self):
        # ‖expm(m N) − I‖_F = m + O(m²): the distance the magnitude names
        import torch

        from featalign import geometry

        a = geometry.affine(20, 0.01, generator=torch.Generator().manual_seed(0))
        dist = torch.linalg.norm(a[:, :, :2] - torch.eye(2, dtype=a.dtype), dim=(1, 2))
        assert torch.allclose(dist, torch.full_like(dist, 0.01), rtol=0.02)

    def test_exception(self):
        with pytest.raises(ValueError, match="unknown family"):
            deformation("zoom", 1.0)


# --------------------------------------------------------------------------- separation


class TestAUC:
    def test_known(self):
        assert auc([3.0, 4.0, 5.0], [0.0, 1.0]) == 1.0  # perfect separation
        assert auc([0.0, 1.0], [3.0, 4.0, 5.0]) == 0.0  # reversed
        assert auc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5  # identical populations
        assert auc([1.0, 3.0], [2.0]) == 0.5
        assert auc([2.0, 2.0], [1.0, 2.0]) == 0.75  # a tie counts one half

    def test_empty_and_nan(self):
        assert math.isnan(auc([], [1.0])) and math.isnan(auc([1.0], []))
        assert auc([np.nan, 2.0], [1.0, np.inf]) == 1.0  # non-finite values left out

    def test_equals_the_rank_statistic(self):
        rng = np.random.default_rng(0)
        pos, neg = rng.normal(1, 1, 30), rng.normal(0, 1, 40)
        ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
        u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
        assert auc(pos, neg) == pytest.approx(u / (pos.size * neg.size))


def _claims_for_separation() -> pd.DataFrame:
    rows = []
    spec = {
        # family, evaluation: (not aligned statistics, aligned statistics)
        ("rotation", "dense"): ([0.1, 0.2, 0.05], [-0.001, 0.0]),
        ("rotation", "as_built"): ([0.1, 0.0], [0.05, 0.2]),
        ("shear", "dense"): ([0.1, 0.2], []),
    }
    for (fam, ev), (na, al) in spec.items():
        for pred, stats in (("not aligned", na), ("aligned", al)):
            for k, s in enumerate(stats):
                rows.append(
                    dict(
                        family=fam,
                        evaluation=ev,
                        network=f"n{k}",
                        prediction=pred,
                        effect=s + 0.003,
                        resolution=0.003,
                    )
                )
    rows.append(
        dict(
            family="translation_substride",
            evaluation="dense",
            network="x",
            prediction="none",
            effect=0.5,
            resolution=0.003,
        )
    )
    return pd.DataFrame(rows)


class TestSeparationTable:
    def test_known(self):
        sep = separation_table(_claims_for_separation())
        got = {
            (r.family, r.evaluation): (r.not_aligned, r.aligned, r.auc) for r in sep.itertuples()
        }
        assert list(sep["evaluation"]) == ["dense", "dense", "dense", "as_built"]  # dense first
        assert got[("rotation", "dense")] == (3, 2, 1.0)
        assert got[("rotation", "as_built")] == (2, 2, 0.25)
        n_a, a, value = got[("shear", "dense")]
        assert (n_a, a) == (2, 0) and math.isnan(value)
        n_a, a, value = got[("translation_substride", "dense")]
        assert (n_a, a) == (0, 0) and math.isnan(value)

    def test_independent_of_tau(self):
        claims = _claims_for_separation()
        shifted = claims.assign(resolution=claims["resolution"] + 0.01)
        pd.testing.assert_series_equal(
            separation_table(claims)["auc"], separation_table(shifted)["auc"]
        )

    def test_exception(self):
        with pytest.raises(ValueError, match="lacks columns"):
            separation_table(pd.DataFrame({"family": ["shear"]}))


# --------------------------------------------------------------------------- reasons


class TestDisagreementReason:
    @staticmethod
    def reason(verdict_, effect, low, high, resolution=0.003):
        return disagreement_reason(
            dict(
                verdict=verdict_,
                effect=effect,
                effect_low=low,
                effect_high=high,
                resolution=resolution,
                margin=TAU,
            )
        )

    def test_every_branch(self):
        assert self.reason("aligned", 0.001, 0.0, 0.002).startswith(
            "effect within resolution at every magnitude"
        )
        assert self.reason("not aligned", 0.05, 0.04, 0.06).startswith(
            "effect clearly above the resolution"
        )
        assert self.reason("inconclusive", 0.05, 0.04, 0.06).startswith(
            "excess does not rise with magnitude"
        )
        assert self.reason("inconclusive", 0.004, 0.001, 0.008).startswith(
            "effect within resolution at the largest magnitude (effect_low"
        )
        assert "above it at a smaller one" in self.reason("inconclusive", 0.001, 0.0, 0.002)
        assert self.reason("unresolved", -0.03, -0.04, -0.02).startswith(
            "the best warp beats realigning the input at the largest magnitude"
        )
        assert "at a smaller magnitude" in self.reason("unresolved", 0.0, -0.001, 0.001)
        # below −τ but not below −resolution: still the largest magnitude (rule 1 uses τ)
        assert "at the largest magnitude" in self.reason("unresolved", -0.002, -0.003, -0.0015)
        assert self.reason("inconclusive", math.nan, math.nan, math.nan).startswith("no finite")

    def test_from_a_judged_claim(self):
        # the reason follows the rule's branch on the claim's own numbers
        row = judge(claim_errors({0.2: [0.1, 0.11, 0.1, 0.09], 0.5: [0.05, 0.06, 0.05, 0.04]}))
        assert disagreement_reason(row).startswith("excess does not rise with magnitude")
