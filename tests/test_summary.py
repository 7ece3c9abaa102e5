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
    disagreement_reason,
    invariance_clause,
    mean_interval,
    predicted,
    problem_excess,
    read_table,
    separation_table,
    verdict_grid_markdown,
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


def measured(problem: dict, errors: dict[str, float]) -> list[dict]:
    """The errors table's rows of one problem: one per measure, with its claim family.

    ``stride`` is the evaluated maps' (1 for dense), ``layer_stride`` the layer's.
    """
    problem = {"evaluation": "as_built", "layer_stride": problem["stride"], **problem}
    claim = claim_family(problem["family"], problem["magnitude"], problem["stride"])
    return [
        dict(problem, channels=4, claim_family=claim, measure=m, error=e) for m, e in errors.items()
    ]


def synthetic_errors(
    excess: dict[tuple[str, str], float], n: int = 6, evaluation: str = "as_built"
) -> pd.DataFrame:
    """Errors whose excess (min(affine, dense) - input) is known per (network, claim family).

    One magnitude per claim (1; a ``translation_substride`` claim is a shift by 1 pixel
    at a stride-2 layer, which dense evaluation, at stride 1, calls ``translation``).
    """
    rows = []
    rng = np.random.default_rng(1)
    for t, ((network, claim), ex) in enumerate(excess.items()):
        family, layer_stride = claim, 1
        if claim == "translation_substride":
            family, layer_stride = "translation", 2
        stride = 1 if evaluation == "dense" else layer_stride
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
            problem = dict(dataset="d", network=network, layer=f"l{layer_stride}", depth=0)
            problem.update(evaluation=evaluation, stride=stride, layer_stride=layer_stride)
            problem.update(sample=s, transform=t, family=family, magnitude=1.0)
            rows += measured(problem, vals)
    return pd.DataFrame(rows)


def varied_errors(seed: int = 0) -> pd.DataFrame:
    """2 datasets × 2 networks × 3 layers × 2 evaluations × 6 families (several magnitudes)
    × 5 samples, rows shuffled; excesses random, some negative, so that intervals are not
    degenerate."""
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
            for depth, (layer, layer_stride) in enumerate((("c1", 1), ("c2", 2), ("c3", 4))):
                for evaluation, stride in (("as_built", layer_stride), ("dense", 1)):
                    t = 0
                    for family, mags in sweep.items():
                        for mag in mags:
                            for s in range(5):
                                floor = 1e-3 * (1 + rng.random())
                                ex = rng.normal(0.004, 0.01) * (depth + 1)
                                vals = {
                                    "none": rng.random(),
                                    "oracle": floor + abs(ex),
                                    "affine": max(floor + ex, 0.0),
                                    "dense": max(floor + ex * rng.random(), 0.0),
                                    "input": floor,
                                }
                                problem = dict(dataset=dataset, network=network, layer=layer)
                                problem.update(evaluation=evaluation, depth=depth)
                                problem.update(stride=stride, layer_stride=layer_stride)
                                problem.update(sample=s, transform=t)
                                rows += measured(dict(problem, family=family, magnitude=mag), vals)
                            t += 1
    table = pd.DataFrame(rows)[list(ERRORS_COLUMNS)]
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
        claims = claims_table(errors, {"gen": [], "inv": ["rotation"]}, margin=0.001)
        assert tuple(claims.columns) == CLAIMS_COLUMNS
        got = {
            (r.network, r.family): (r.prediction, r.verdict, r.agreement)
            for r in claims.itertuples()
        }
        assert got[("gen", "rotation")] == ("not aligned", "not aligned", "yes")
        assert got[("gen", "translation")] == ("aligned", "aligned", "yes")
        assert got[("inv", "rotation")] == ("aligned", "aligned", "yes")
        # excess 0.001 within the resolution (floor ~0.0105 + τ): aligned, but the theory
        # said not aligned -> a reported disagreement
        assert got[("inv", "scaling")] == ("not aligned", "aligned", "no")
        row = claims[(claims.network == "gen") & (claims.family == "rotation")].iloc[0]
        assert row.excess_mean == pytest.approx(0.3) and row.problems == 6
        # one magnitude: the effect is the excess over all problems, the floor their input
        assert row.effect == row.excess_mean and row.magnitudes == 1
        assert row.largest_magnitude == 1.0
        assert 0.01 < row.floor < 0.011 and row.resolution == pytest.approx(row.floor + 0.001)
        assert set(claims["evaluation"]) == {"as_built"}

    def test_dense_counts_when_better(self):
        errors = synthetic_errors({("gen", "shear"): 0.1})
        dense, floor = errors.measure == "dense", errors.measure == "input"
        errors.loc[dense, "error"] = errors.loc[floor, "error"].values
        claims = claims_table(errors, {"gen": []}, margin=0.001)
        assert claims.iloc[0].verdict == "aligned"  # the best spatial warp is the min of both

    def test_row_order_does_not_matter(self):
        errors = varied_errors()
        kwargs = dict(margin=0.001, confidence=0.9, resamples=400, seed=2)
        a = claims_table(errors, {"n1": ["rotation90"]}, **kwargs)
        b = claims_table(errors.iloc[::-1], {"n1": ["rotation90"]}, **kwargs)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert {"aligned", "inconclusive", "not aligned"} <= set(a["verdict"])
        assert a["magnitudes"].max() == 3  # translation at stride 1: 1, 2 and 4 pixels

    def test_one_claim_per_layer_and_family(self):
        errors = varied_errors()
        claims = claims_table(errors, {}, margin=0.001)
        groups = errors.groupby(["dataset", "network", "layer", "evaluation", "claim_family"])
        assert len(claims) == groups.ngroups
        assert claims["problems"].sum() == len(errors) // 5
        # dense first; at dense evaluation (stride 1) no shift is sub-stride
        first = claims["evaluation"].tolist().index("as_built")
        assert set(claims["evaluation"][:first]) == {"dense"}
        dense = claims[claims["evaluation"] == "dense"]
        assert "translation_substride" not in set(dense["family"])


@pytest.fixture(scope="module")
def claims() -> pd.DataFrame:
    """Both evaluations: as built as planted, dense with the sub-stride shift aligned."""
    excess = {
        ("gen", "rotation"): 0.3,
        ("gen", "translation"): 0.0,
        ("gen", "translation_substride"): 0.05,
        ("inv", "rotation"): 0.0,
        ("inv", "scaling"): 0.001,
        ("inv", "shear"): 0.05,
    }
    built = synthetic_errors(excess)
    dense = synthetic_errors({**excess, ("gen", "translation_substride"): 0.0}, evaluation="dense")
    errors = pd.concat([built, dense], ignore_index=True)
    return claims_table(errors, {"gen": [], "inv": ["rotation"]}, margin=0.001, resamples=200)


class TestOracleEffect:
    """The inverse warp's excess over the floor: a measured invariance beside the verdict."""

    def test_known_answer(self, claims):
        # synthetic_errors plants oracle = input + excess + 0.05 in every problem
        planted = {("inv", "shear"): 0.05, ("inv", "rotation"): 0.0, ("gen", "rotation"): 0.3}
        for (network, family), ex in planted.items():
            row = claims[(claims["network"] == network) & (claims["family"] == family)].iloc[0]
            assert row["oracle_effect"] == pytest.approx(ex + 0.05, abs=1e-12)
            assert row["oracle_effect_low"] <= row["oracle_effect"] <= row["oracle_effect_high"]
            assert "not invariant" in invariance_clause(row)

    def test_invariant_features(self):
        errors = synthetic_errors({("inv", "rotation"): 0.0})
        oracle = errors["measure"] == "oracle"
        inputs = errors.loc[errors["measure"] == "input", "error"].to_numpy()
        errors.loc[oracle, "error"] = inputs  # the inverse warp is as good as the floor
        row = claims_table(errors, {"inv": ["rotation"]}, margin=0.001, resamples=200).iloc[0]
        assert row["oracle_effect"] == 0.0
        assert invariance_clause(row).startswith("the features are invariant there")

    def test_decides_nothing(self, claims):
        # the verdicts are the rule's alone: the same table without the oracle measure
        errors = pd.concat(
            [synthetic_errors({("inv", "shear"): 0.05}),
             synthetic_errors({("inv", "shear"): 0.05}, evaluation="dense")],
            ignore_index=True,
        )
        with_oracle = claims_table(errors, {"inv": []}, margin=0.001, resamples=200)
        without = claims_table(errors[errors["measure"] != "oracle"], {"inv": []},
                               margin=0.001, resamples=200)
        assert with_oracle["verdict"].tolist() == without["verdict"].tolist()
        assert without["oracle_effect"].isna().all()
        assert invariance_clause(without.iloc[0]) == ""


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"#### {title}")
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("#### ")), None)
    return lines[start + 1 : end]


class TestClaimsSummaryMarkdown:
    @pytest.mark.parametrize("evaluation,title", [("dense", "dense"), ("as_built", "as built")])
    def test_counts_match_the_table(self, claims, evaluation, title):
        text = claims_summary_markdown(claims)
        sub = claims[claims["evaluation"] == evaluation]
        section = _section(text, title)
        yes = int((sub["agreement"] == "yes").sum())
        no = sub["agreement"] == "no"
        opposite = int((no & sub["verdict"].isin(["aligned", "not aligned"])).sum())
        inconclusive = int((no & (sub["verdict"] == "inconclusive")).sum())
        na = int((sub["agreement"] == "n/a").sum())
        counts = next(ln for ln in section if "with a prediction" in ln)
        assert f"**agree {yes}**" in counts and f"**disagree {opposite}**" in counts
        assert f"**inconclusive {inconclusive}**" in counts and f"n/a {na}" in counts
        # the cross-tab rows sum to the evaluation's claims
        header = next(ln for ln in section if ln.startswith("| verdict"))
        preds = [c.strip() for c in header.strip("|").split("|")[1:]]
        body = [ln for ln in section if ln.startswith("| ") and ln != header]
        total = 0
        for ln in body:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            v, nums = cells[0], [int(c) for c in cells[1:]]
            for pred, n in zip(preds, nums):
                assert n == int(((sub["verdict"] == v) & (sub["prediction"] == pred)).sum())
            total += sum(nums)
        assert total == len(sub)

    def test_every_disagreement_with_its_numbers(self, claims):
        text = claims_summary_markdown(claims)
        bad = claims[claims["agreement"] == "no"]
        items = [ln for ln in text.splitlines() if ln.startswith("- ")]
        assert len(bad) > 0 and len(items) == len(bad)
        for (_, r), line in zip(bad.iterrows(), items):
            assert f"{r['network']} {r['layer']} {r['family']} ({r['dataset']})" in line
            assert f"**{r['verdict']}** (predicted {r['prediction']})" in line
            assert (
                f"effect {r['effect']:.3g} [{r['effect_low']:.3g}, {r['effect_high']:.3g}]" in line
            )
            assert f"floor {r['floor']:.3g}, resolution {r['resolution']:.3g}" in line
            assert f"at magnitude {r['largest_magnitude']:g}" in line
            invariance = invariance_clause(r)
            assert invariance  # the fixture's errors hold the oracle measure
            assert line.endswith(f"{disagreement_reason(r)}; {invariance}")
        for ev, title in (("dense", "dense"), ("as_built", "as built")):
            n = int(((claims["evaluation"] == ev) & (claims["agreement"] == "no")).sum())
            assert f"**Disagreements, {title}** ({n}):" in text

    def test_separation(self, claims):
        text = claims_summary_markdown(claims)
        sep = separation_table(claims)
        rows = {ln.split("|")[1].strip(): ln for ln in _section(text, "Separation") if "|" in ln}
        for r in sep.itertuples():
            value = "n/a" if np.isnan(r.auc) else f"{r.auc:.3f}"
            assert f"{value} ({r.not_aligned} / {r.aligned})" in rows[r.family]
        assert not sep["auc"].isna().all()

    def test_no_disagreements(self, claims):
        ok = claims[claims["agreement"] != "no"]
        assert "No disagreements." in claims_summary_markdown(ok)

    def test_exception(self):
        with pytest.raises(ValueError, match="the claims table lacks columns"):
            claims_summary_markdown(pd.DataFrame({"dataset": ["d"]}))


class TestVerdictGridMarkdown:
    def test_one_grid_per_evaluation(self, claims):
        for ev in ("dense", "as_built"):
            grid = verdict_grid_markdown(claims, "d", ev)
            sub = claims[claims["evaluation"] == ev]
            assert grid.splitlines()[0].count("|") == sub["family"].nunique() + 2
            bold = grid.count("**") // 2
            assert bold == int((sub["agreement"] == "no").sum())
        assert "translation_substride" not in verdict_grid_markdown(claims, "d", "dense")


class TestReadTable:
    def test_claims_round_trip(self, claims, tmp_path):
        # pandas' default reader turns the agreement "n/a" into NaN; read_table keeps it
        assert (claims["agreement"] == "n/a").any()
        path = tmp_path / "claims.csv"
        claims.to_csv(path, index=False)
        back = read_table(path)
        pd.testing.assert_frame_equal(back, claims, check_exact=False, rtol=1e-15)
        assert (back["agreement"] == "n/a").sum() == (claims["agreement"] == "n/a").sum()

    def test_missing_values_stay_missing(self, tmp_path):
        errors = varied_errors()
        errors.loc[errors.index[:3], "error"] = np.nan
        path = tmp_path / "errors.csv"
        errors.to_csv(path, index=False)
        back = read_table(path)
        assert back["error"].isna().sum() == 3
        pd.testing.assert_frame_equal(back, errors, check_exact=False, rtol=1e-15)
