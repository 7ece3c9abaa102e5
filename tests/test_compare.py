"""Tests of ``featalign compare`` (featalign.summary.compare and its face in featalign.cli).

The runs are small tables written by the summarize rule's own code (``claims_table``,
``with_recognition``, ``recognition_claims``, ``recognition_table``) from errors and
recognition problems built with the columns ``errors_table`` and ``problem_table`` write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from featalign.cli import main
from featalign.names import PRIMARY_SET
from featalign.summary.claims import (
    CLAIMS_COLUMNS,
    claims_table,
    read_table,
    with_recognition,
)
from featalign.summary.compare import (
    CLAIMS_KEYS,
    DEFAULT_TOL,
    ERRORS_KEYS,
    RECOGNITION_KEYS,
    RECOGNITION_MEASURES,
    compare_runs,
)
from featalign.summary.families import claim_family
from featalign.summary.recognition import (
    RECOGNITION_COLUMNS,
    recognition_claims,
    recognition_table,
)
from featalign.summary.tables import ERRORS_COLUMNS

INVARIANCES = {"gen": [], "inv": ["rotation"]}
MAGNITUDES = (30.0, 60.0)  # rotations, one transform each
SAMPLES = 4
#: Excess per network and magnitude: gen's grows (not aligned), inv's is nil (aligned).
EXCESS = {"gen": (0.05, 0.1), "inv": (0.0, 0.0)}
FLOOR = 0.002
FAST = dict(resamples=200, seed=0)


def make_errors(excess: dict[str, tuple[float, float]] = EXCESS) -> pd.DataFrame:
    """errors.csv's rows: one dense-evaluated layer per network, two rotations."""
    rows = []
    for network, by_magnitude in excess.items():
        for t, (magnitude, ex) in enumerate(zip(MAGNITUDES, by_magnitude, strict=True)):
            for s in range(SAMPLES):
                e = ex + 1e-3 * s  # a spread, so that the intervals are not points
                problem = dict(
                    dataset="photos", network=network, layer="conv1", evaluation="dense",
                    depth=1, stride=1, layer_stride=1, channels=4, sample=s, transform=t,
                    family="rotation", claim_family=claim_family("rotation", magnitude, 1),
                    magnitude=magnitude,
                )  # fmt: skip
                values = {
                    "none": 0.5 + e,
                    "oracle": FLOOR + e,
                    "affine": FLOOR + e,
                    "dense": FLOOR + e + 0.001,
                    "input": FLOOR,
                }
                rows += [dict(problem, measure=m, error=v) for m, v in values.items()]
    return pd.DataFrame(rows)[list(ERRORS_COLUMNS)]


def make_problems() -> pd.DataFrame:
    """problem_table's rows: gen's decisions change after warping, inv's do not."""
    rows = []
    for network in INVARIANCES:
        for alignment, primary in PRIMARY_SET.items():
            sets = ("alignment", "recognition") if primary == "recognition" else (primary,)
            for sample_set in sets:
                offset = 0 if sample_set == "alignment" else SAMPLES
                for t, magnitude in enumerate(MAGNITUDES):
                    for s in range(offset, offset + SAMPLES):
                        changed = network == "gen" and alignment not in ("input",) and s % 2 == 0
                        rows.append(dict(
                            dataset="photos", network=network, layer="conv1", depth=1, stride=1,
                            alignment=alignment, sample_set=sample_set, sample=s, transform=t,
                            family="rotation", magnitude=magnitude,
                            claim_family=claim_family("rotation", magnitude, 1),
                            agree=0.0 if changed else 1.0, correct=float(s % 3 != 0),
                            divergence=0.1 * changed + 0.01 * s,
                        ))  # fmt: skip
    return pd.DataFrame(rows)


def write_run(
    folder: Path,
    errors: pd.DataFrame | None = None,
    *,
    recognition: bool = True,
) -> Path:
    """Write errors.csv, claims.csv (and recognition.csv) under ``folder/tables`` the way
    workflow/scripts/summarize.py does; return ``folder``."""
    errors = make_errors() if errors is None else errors
    tables = folder / "tables"
    tables.mkdir(parents=True)
    claims = claims_table(errors, INVARIANCES, margin=0.001, **FAST)
    problems = make_problems()
    recognized = recognition_claims(problems, INVARIANCES, margin=0.05, **FAST)
    errors.to_csv(tables / "errors.csv", index=False)
    with_recognition(claims, recognized).to_csv(tables / "claims.csv", index=False)
    if recognition:
        recognition_table(problems, **FAST).to_csv(tables / "recognition.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run, written once: tests copy it."""
    return write_run(tmp_path_factory.mktemp("reference") / "results")


def copy_run(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest)
    return dest


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- keys


class TestKeys:
    def test_claims_keys_are_the_claim_keys_as_written(self):
        assert set(CLAIMS_KEYS) - {"about", "alignment"} <= set(CLAIMS_COLUMNS)
        assert "family" in CLAIMS_KEYS and "verdict" not in CLAIMS_KEYS
        assert set(ERRORS_KEYS) <= set(ERRORS_COLUMNS) and "error" not in ERRORS_KEYS
        assert RECOGNITION_KEYS + RECOGNITION_MEASURES == RECOGNITION_COLUMNS

    def test_keys_name_one_row_of_each_table(self, reference: Path):
        tables = reference / "tables"
        claims = read_table(tables / "claims.csv")
        assert set(claims["about"]) == {"alignment", "recognition"}
        assert not claims.duplicated(list(CLAIMS_KEYS)).any()
        assert not read_table(tables / "errors.csv").duplicated(list(ERRORS_KEYS)).any()
        rec = read_table(tables / "recognition.csv")
        assert len(rec) and not rec.duplicated(list(RECOGNITION_KEYS)).any()

    def test_the_example_has_both_verdicts(self, reference: Path):
        claims = read_table(reference / "tables" / "claims.csv")
        alignment = claims[claims["about"] == "alignment"].set_index("network")["verdict"]
        assert alignment.to_dict() == {"gen": "not aligned", "inv": "aligned"}


# --------------------------------------------------------------------------- known answers


class TestCompare:
    def test_identical_runs(self, reference, tmp_path, capsys):
        # OLD as a repository root (results/tables), NEW as a results folder (tables)
        old = copy_run(reference, tmp_path / "old" / "results").parent
        new = copy_run(reference, tmp_path / "new")
        code, out, err = run_cli(capsys, old, new, "--json", tmp_path / "cmp.json")
        assert (code, err) == (0, "")
        assert "verdicts changed: 0" in out and out.rstrip().endswith("no verdict changed")
        assert "agreement changed: 0" in out
        doc = json.loads((tmp_path / "cmp.json").read_text())
        assert doc["exit_code"] == 0 and doc["verdicts_changed"] == 0
        claims = doc["claims"]["claims"]
        assert claims["old"] == claims["new"] == claims["matched"] > 0
        assert claims["only_old"] == claims["only_new"] == []
        for table in ("errors", "recognition"):
            drift = doc[table]["drift"]
            assert drift and all(d["rose"] == d["fell"] == d["nan"] == 0 for d in drift)
            assert all(d["identical"] == d["rows"] > 0 for d in drift)
            assert doc[table]["rows"]["matched"] == doc[table]["rows"]["old"]
        measures = [d["method"] for d in doc["errors"]["drift"]]
        assert measures == ["none", "oracle", "affine", "dense", "input"]
        assert doc["claims"]["keys"] == list(CLAIMS_KEYS)

    def test_one_flipped_verdict(self, reference, tmp_path, capsys):
        # gen's excess vanishes in NEW: its rotation claim becomes aligned
        old = copy_run(reference, tmp_path / "old")
        new = write_run(tmp_path / "new", make_errors({**EXCESS, "gen": (0.0, 0.0)}))
        code, out, _ = run_cli(capsys, old, new)
        assert code == 1
        assert "verdicts changed: 1" in out and "agreement changed: 1" in out
        line = (
            "    dataset=photos network=gen layer=conv1 evaluation=dense depth=1 stride=1 "
            "family=rotation about=alignment: not aligned -> aligned"
        )
        assert line in out.splitlines()
        assert out.rstrip().endswith("1 verdict changed")
        result = compare_runs(old, new)
        assert [c["key"]["network"] for c in result.claims.verdicts] == ["gen"]
        affine = next(d for d in result.errors.drifts if d.method == "affine")
        assert affine.fell == 2 * SAMPLES and affine.rose == 0  # gen's, both magnitudes
        assert affine.fall_key["network"] == "gen" and affine.largest_fall == pytest.approx(-0.1)

    def test_tolerance(self, reference, tmp_path, capsys):
        old = copy_run(reference, tmp_path / "old")
        new = copy_run(reference, tmp_path / "new")
        errors = read_table(new / "tables" / "errors.csv")
        first = errors.index[(errors["measure"] == "affine") & (errors["network"] == "inv")][0]
        second = errors.index[errors["measure"] == "oracle"][3]
        errors.loc[first, "error"] += 2e-4
        errors.loc[second, "error"] += 1e-6
        errors.to_csv(new / "tables" / "errors.csv", index=False)
        code, out, _ = run_cli(capsys, old, new, "--json", tmp_path / "cmp.json")
        assert code == 0 and "no verdict changed" in out
        drift = {
            d["method"]: d
            for d in json.loads((tmp_path / "cmp.json").read_text())["errors"]["drift"]
        }
        rows = 2 * len(MAGNITUDES) * SAMPLES
        assert drift["affine"] | {"rise_key": None} == drift["affine"] | dict(
            rows=rows, rose=1, fell=0, identical=rows - 1, nan=0, rise_key=None
        )
        assert drift["affine"]["largest_rise"] == pytest.approx(2e-4)
        want = errors.loc[first, list(ERRORS_KEYS)].to_dict()
        assert drift["affine"]["rise_key"] == want
        assert (drift["oracle"]["rose"], drift["oracle"]["identical"]) == (0, rows)
        assert drift["oracle"]["largest_rise"] == pytest.approx(1e-6)
        assert "largest rise of affine error: +2.000e-04 at dataset=photos network=inv" in out
        assert "largest rise of oracle" not in out  # within tol: in the table, not listed
        # a tighter tol counts the small one too
        assert next(d for d in compare_runs(old, new, tol=1e-7).errors.drifts
                    if d.method == "oracle").rose == 1  # fmt: skip

    def test_recognition_drift(self, reference, tmp_path, capsys):
        old = copy_run(reference, tmp_path / "old")
        new = copy_run(reference, tmp_path / "new")
        rec = read_table(new / "tables" / "recognition.csv")
        row = rec.index[rec["alignment"] == "affine"][0]
        rec.loc[row, "divergence"] += 5e-5  # within tol: listed, not counted
        rec.loc[row, "agreement"] -= 0.25  # a decision changed
        rec.to_csv(new / "tables" / "recognition.csv", index=False)
        code, out, _ = run_cli(capsys, old, new)
        assert code == 0
        lines = [line.split() for line in out.splitlines()]
        assert ["affine", "agreement", "4", "0", "1", "3", "0", "-", "-2.500e-01"] in lines
        assert ["affine", "divergence", "4", "0", "0", "4", "0", "+5.000e-05", "-"] in lines
        assert ["affine", "(other", "9", "columns)", "4", "0", "0", "4", "0", "-", "-"] in lines
        assert ["oracle", "(all", "11", "columns)", "8", "0", "0", "8", "0", "-", "-"] in lines
        assert "largest fall of affine agreement: -2.500e-01 at dataset=photos" in out

    def test_rows_in_one_run_and_recognition_in_one(self, reference, tmp_path, capsys):
        old = copy_run(reference, tmp_path / "old")
        new = copy_run(reference, tmp_path / "new")
        claims = read_table(new / "tables" / "claims.csv")
        claims[claims["network"] != "inv"].to_csv(new / "tables" / "claims.csv", index=False)
        (new / "tables" / "recognition.csv").unlink()
        code, out, _ = run_cli(capsys, old, new)
        gone = int((claims["network"] == "inv").sum())
        assert code == 0
        assert f"{len(claims)} old, {len(claims) - gone} new" in out
        assert f"{gone} only in old, 0 only in new" in out
        assert "only in old: dataset=photos network=inv layer=conv1" in out
        assert "recognition.csv: only in OLD; not compared" in out


class TestUserErrors:
    def test_missing_table(self, reference, tmp_path, capsys):
        old = copy_run(reference, tmp_path / "old")
        new = copy_run(reference, tmp_path / "new")
        (new / "tables" / "errors.csv").unlink()
        code, out, err = run_cli(capsys, old, new)
        assert (code, out) == (2, "")
        assert str(new / "tables" / "errors.csv") in err and "missing" in err
        assert err.count("\n") == 1 and "Traceback" not in err

    def test_missing_folder(self, reference, tmp_path, capsys):
        code, _, err = run_cli(capsys, tmp_path / "nowhere", reference)
        assert code == 2 and str(tmp_path / "nowhere") in err and "results/tables/" in err
        (tmp_path / "empty").mkdir()
        code, _, err = run_cli(capsys, reference, tmp_path / "empty")
        assert code == 2 and "NEW" in err and "holds neither" in err

    def test_columns_differ(self, reference, tmp_path, capsys):
        old = copy_run(reference, tmp_path / "old")
        new = copy_run(reference, tmp_path / "new")
        claims = read_table(new / "tables" / "claims.csv")
        claims.drop(columns="margin").to_csv(new / "tables" / "claims.csv", index=False)
        code, _, err = run_cli(capsys, old, new)
        assert code == 2 and "only in old: ['margin']" in err
        assert str(new / "tables" / "claims.csv") in err

    def test_bad_tol(self, reference, capsys):
        code, _, err = run_cli(capsys, reference, reference, "--tol", "-1")
        assert code == 2 and "--tol" in err


def test_help(capsys):
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: featalign compare" in out
    assert DEFAULT_TOL == 1e-4 and "(default 1e-4," in " ".join(out.split())  # the help's
