"""Verdicts and tables: claim families, predictions, bootstrap intervals, the claims table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featalign.summary import (
    CLAIMS_COLUMNS,
    bootstrap_interval,
    claim_family,
    claims_table,
    predicted,
    verdict,
)


class TestClaimFamily:
    @pytest.mark.parametrize(
        "family,magnitude,stride,want",
        [
            ("translation", 4, 4, "translation"),
            ("translation", 8, 4, "translation"),
            ("translation", 2, 4, "translation_substride"),
            ("translation", 1, 1, "translation"),
            ("rotation", 90, 2, "rotation90"),
            ("rotation", -180, 2, "rotation90"),
            ("rotation", 45, 2, "rotation"),
            ("reflection", 0, 1, "flip"),
            ("reflection", 135, 1, "flip"),
            ("reflection", 30, 1, "reflection"),
            ("shear", 0.2, 1, "shear"),
        ],
    )
    def test_known(self, family, magnitude, stride, want):
        assert claim_family(family, magnitude, stride) == want


class TestPredicted:
    def test_translation_always_aligns(self):
        assert predicted("translation", []) == "aligned"
        assert predicted("translation_substride", []) == "none"

    def test_subgroups(self):
        assert predicted("rotation90", ["rotation90", "flip"]) == "aligned"
        assert predicted("rotation", ["rotation90", "flip"]) == "not aligned"
        assert predicted("rotation90", ["rotation"]) == "aligned"  # the family contains it
        assert predicted("flip", ["reflection"]) == "aligned"
        assert predicted("scaling", ["rotation"]) == "not aligned"


class TestBootstrap:
    def test_constant(self):
        assert bootstrap_interval([0.2] * 10) == (0.2, 0.2, 0.2)

    def test_covers_the_mean(self):
        rng = np.random.default_rng(0)
        v = rng.normal(1.0, 0.1, 200)
        mean, lo, hi = bootstrap_interval(v)
        # the standard error is 0.1/sqrt(200) = 0.007: the 95 % interval is about ±0.014
        assert lo < mean < hi and 0.02 < hi - lo < 0.04

    def test_nan_ignored_and_empty(self):
        assert bootstrap_interval([np.nan, 1.0, 1.0])[0] == 1.0
        assert all(np.isnan(bootstrap_interval([])))


class TestVerdict:
    def test_margin(self):
        assert verdict(0.0, 0.004, 0.005) == "aligned"
        assert verdict(0.006, 0.5, 0.005) == "not aligned"
        assert verdict(0.004, 0.006, 0.005) == "inconclusive"
        assert verdict(np.nan, np.nan, 0.005) == "inconclusive"


def synthetic_errors(excess: dict[tuple[str, str], float], n: int = 6) -> pd.DataFrame:
    """Errors whose excess (min(affine, dense) - input) is known per (network, family)."""
    rows = []
    rng = np.random.default_rng(1)
    for t, ((network, family), ex) in enumerate(excess.items()):
        for s in range(n):
            floor = 0.01 + 0.001 * rng.random()
            vals = {"none": 0.9, "oracle": floor + ex + 0.05, "affine": floor + ex,
                    "dense": floor + ex + 0.01, "mixing": 0.05, "input": floor, "constant": 1.0}
            for measure, err in vals.items():
                rows.append(dict(dataset="d", network=network, layer="l1", depth=0, stride=1,
                                 channels=4, sample=s, transform=t, family=family,
                                 claim_family=family, magnitude=1.0, measure=measure, error=err))
    return pd.DataFrame(rows)


def test_claims_table_known_answers():
    errors = synthetic_errors({("gen", "rotation"): 0.3, ("gen", "translation"): 0.0,
                               ("inv", "rotation"): 0.0, ("inv", "scaling"): 0.001})
    claims = claims_table(errors, {"gen": [], "inv": ["rotation"]}, margin=0.005)
    assert tuple(claims.columns) == CLAIMS_COLUMNS
    got = {(r.network, r.family): (r.prediction, r.verdict, r.agreement)
           for r in claims.itertuples()}
    assert got[("gen", "rotation")] == ("not aligned", "not aligned", "yes")
    assert got[("gen", "translation")] == ("aligned", "aligned", "yes")
    assert got[("inv", "rotation")] == ("aligned", "aligned", "yes")
    # excess 0.001 < margin: aligned, but the theory said not aligned -> a reported disagreement
    assert got[("inv", "scaling")] == ("not aligned", "aligned", "no")
    row = claims[(claims.network == "gen") & (claims.family == "rotation")].iloc[0]
    assert row.excess_mean == pytest.approx(0.3) and row.problems == 6


def test_dense_counts_when_better():
    errors = synthetic_errors({("gen", "shear"): 0.1})
    errors.loc[errors.measure == "dense", "error"] = errors.loc[errors.measure == "input", "error"].values
    claims = claims_table(errors, {"gen": []}, margin=0.005)
    assert claims.iloc[0].verdict == "aligned"  # the best spatial warp is the min of both
