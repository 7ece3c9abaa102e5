"""Verdicts and tables: claim families, predictions, the excess and its interval, the claims
table, and its Markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from featalign.summary import (
    CLAIMS_COLUMNS,
    ERRORS_COLUMNS,
    PROBLEM_KEYS,
    bootstrap_interval,
    claim_family,
    claims_summary_markdown,
    claims_table,
    mean_interval,
    predicted,
    problem_excess,
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


def measured(problem: dict, errors: dict[str, float]) -> list[dict]:
    """The errors table's rows of one problem: one per measure, with its claim family."""
    claim = claim_family(problem["family"], problem["magnitude"], problem["stride"])
    return [
        dict(problem, channels=4, claim_family=claim, measure=m, error=e) for m, e in errors.items()
    ]


def synthetic_errors(excess: dict[tuple[str, str], float], n: int = 6) -> pd.DataFrame:
    """Errors whose excess (min(affine, dense) - input) is known per (network, family)."""
    rows = []
    rng = np.random.default_rng(1)
    for t, ((network, family), ex) in enumerate(excess.items()):
        for s in range(n):
            floor = 0.01 + 0.001 * rng.random()
            vals = {
                "none": 0.9,
                "oracle": floor + ex + 0.05,
                "affine": floor + ex,
                "dense": floor + ex + 0.01,
                "mixing": 0.05,
                "input": floor,
                "constant": 1.0,
            }
            problem = dict(dataset="d", network=network, layer="l1", depth=0, stride=1)
            problem.update(sample=s, transform=t, family=family, magnitude=1.0)
            rows += measured(problem, vals)
    return pd.DataFrame(rows)


def varied_errors(seed: int = 0) -> pd.DataFrame:
    """2 datasets × 2 networks × 3 layers × 6 families (several magnitudes) × 5 samples,
    rows shuffled; excesses random, some negative, so that intervals are not degenerate."""
    rng = np.random.default_rng(seed)
    sweep = {
        "translation": (1.0, 2.0, 4.0),
        "rotation": (30.0, 90.0, 15.0),
        "reflection": (0.0, 30.0),
        "shear": (0.2, -0.1),
        "scaling": (1.25,),
        "affine": (0.1, 0.1),
    }
    rows = []
    for dataset in ("a", "b"):
        for network in ("n1", "n2"):
            for depth, (layer, stride) in enumerate((("c1", 1), ("c2", 2), ("c3", 4))):
                t = 0
                for family, mags in sweep.items():
                    for mag in mags:
                        for s in range(5):
                            floor = 1e-3 * (1 + rng.random())
                            ex = rng.normal(0.004, 0.01) * (depth + 1)
                            vals = {
                                "none": rng.random(),
                                "oracle": floor + abs(ex),
                                "affine": floor + ex,
                                "dense": floor + ex * rng.random(),
                                "input": floor,
                            }
                            problem = dict(dataset=dataset, network=network, layer=layer)
                            problem.update(depth=depth, stride=stride, sample=s, transform=t)
                            rows += measured(dict(problem, family=family, magnitude=mag), vals)
                        t += 1
    table = pd.DataFrame(rows, columns=list(ERRORS_COLUMNS))
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


class TestProblemExcess:
    def test_matches_definition(self):
        errors = varied_errors()
        exc = problem_excess(errors)
        assert len(exc) == len(errors) // 5  # one row per problem, five measures each
        expected = np.minimum(exc["affine"], exc["dense"]) - exc["input"]
        np.testing.assert_array_equal(exc["excess"], expected)
        assert {"family", "magnitude"} <= set(exc.columns)

    def test_problem_order(self):
        # sorted by the problem keys whatever the order of the rows: the bootstrap of a
        # group depends on the order of its values
        exc = problem_excess(varied_errors(seed=1))
        keys = list(PROBLEM_KEYS)
        pd.testing.assert_frame_equal(exc, exc.sort_values(keys).reset_index(drop=True))
        assert not exc.duplicated(keys).any()

    def test_missing_measure(self):
        errors = varied_errors()
        exc = problem_excess(errors[errors["measure"] != "dense"])
        assert exc["dense"].isna().all()
        np.testing.assert_array_equal(exc["excess"], exc["affine"] - exc["input"])

    def test_exception(self):
        with pytest.raises(ValueError, match="lacks columns"):
            problem_excess(pd.DataFrame({"error": [1.0]}))


class TestMeanInterval:
    def test_each_group_is_its_bootstrap(self):
        df = pd.DataFrame({"g": [2, 1, 2, 1, 2], "v": [0.3, 0.1, np.nan, 0.7, 0.2]})
        got = mean_interval(df, ["g"], "v", confidence=0.8, resamples=300, seed=5)
        assert got["g"].tolist() == [1, 2] and got["n"].tolist() == [2, 2]
        assert got["rows"].tolist() == [2, 3]
        for g, values in ((1, [0.1, 0.7]), (2, [0.3, np.nan, 0.2])):  # values in row order
            want = bootstrap_interval(values, confidence=0.8, resamples=300, seed=5)
            row = got[got["g"] == g].iloc[0]
            assert (row["mean"], row["low"], row["high"]) == want


class TestClaimsTable:
    def test_known_answers(self):
        errors = synthetic_errors(
            {
                ("gen", "rotation"): 0.3,
                ("gen", "translation"): 0.0,
                ("inv", "rotation"): 0.0,
                ("inv", "scaling"): 0.001,
            }
        )
        claims = claims_table(errors, {"gen": [], "inv": ["rotation"]}, margin=0.005)
        assert tuple(claims.columns) == CLAIMS_COLUMNS
        got = {
            (r.network, r.family): (r.prediction, r.verdict, r.agreement)
            for r in claims.itertuples()
        }
        assert got[("gen", "rotation")] == ("not aligned", "not aligned", "yes")
        assert got[("gen", "translation")] == ("aligned", "aligned", "yes")
        assert got[("inv", "rotation")] == ("aligned", "aligned", "yes")
        # excess 0.001 < margin: aligned, but the theory said not aligned -> a reported
        # disagreement
        assert got[("inv", "scaling")] == ("not aligned", "aligned", "no")
        row = claims[(claims.network == "gen") & (claims.family == "rotation")].iloc[0]
        assert row.excess_mean == pytest.approx(0.3) and row.problems == 6

    def test_dense_counts_when_better(self):
        errors = synthetic_errors({("gen", "shear"): 0.1})
        dense, floor = errors.measure == "dense", errors.measure == "input"
        errors.loc[dense, "error"] = errors.loc[floor, "error"].values
        claims = claims_table(errors, {"gen": []}, margin=0.005)
        assert claims.iloc[0].verdict == "aligned"  # the best spatial warp is the min of both

    def test_row_order_does_not_matter(self):
        errors = varied_errors()
        kwargs = dict(margin=0.01, confidence=0.9, resamples=400, seed=2)
        a = claims_table(errors, {"n1": ["rotation90"]}, **kwargs)
        b = claims_table(errors.iloc[::-1], {"n1": ["rotation90"]}, **kwargs)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert set(a["verdict"]) == {"aligned", "inconclusive", "not aligned"}

    def test_one_claim_per_layer_and_family(self):
        errors = varied_errors()
        claims = claims_table(errors, {}, margin=0.005)
        groups = errors.groupby(["dataset", "network", "layer", "claim_family"])
        assert len(claims) == groups.ngroups
        assert claims["problems"].sum() == len(errors) // 5


@pytest.fixture(scope="module")
def claims() -> pd.DataFrame:
    errors = synthetic_errors(
        {
            ("gen", "rotation"): 0.3,
            ("gen", "translation"): 0.0,
            ("gen", "translation_substride"): 0.05,
            ("inv", "rotation"): 0.0,
            ("inv", "scaling"): 0.001,
            ("inv", "shear"): 0.005,
        }
    )
    return claims_table(errors, {"gen": [], "inv": ["rotation"]}, margin=0.005, resamples=200)


class TestClaimsSummaryMarkdown:
    def test_counts_match_the_table(self, claims):
        text = claims_summary_markdown(claims)
        counts = claims["agreement"].value_counts()
        yes, no, na = (int(counts.get(k, 0)) for k in ("yes", "no", "n/a"))
        assert f"**yes {yes}**, **no {no}**, n/a {na}" in text
        assert no > 0 and na > 0 and f"**Disagreements** ({no}):" in text
        items = [ln for ln in text.splitlines() if ln.startswith("- ")]
        assert len(items) == no
        # the cross-tab rows sum to the table's size
        header = next(ln for ln in text.splitlines() if ln.startswith("| verdict"))
        preds = [c.strip() for c in header.strip("|").split("|")[1:]]
        body = [
            ln
            for ln in text.splitlines()
            if ln.startswith("| ") and ln is not header and not ln.startswith("| verdict")
        ]
        total = 0
        for ln in body:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            v, nums = cells[0], [int(c) for c in cells[1:]]
            for p, n in zip(preds, nums):
                assert n == int(((claims["verdict"] == v) & (claims["prediction"] == p)).sum())
            total += sum(nums)
        assert total == len(claims)

    def test_no_disagreements(self, claims):
        ok = claims[claims["agreement"] != "no"]
        assert "No disagreements." in claims_summary_markdown(ok)

    def test_exception(self):
        with pytest.raises(ValueError, match="the claims table lacks columns"):
            claims_summary_markdown(pd.DataFrame({"dataset": ["d"]}))
