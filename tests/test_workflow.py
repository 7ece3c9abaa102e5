"""End-to-end: the Snakemake workflow on config/test.yaml, caching, and refusal of bad configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xarray as xr
import yaml
from conftest import ROOT, snakemake

from featalign.io import TIME_ATTRS

TEST_CONFIG = ROOT / "config" / "test.yaml"


def jobs(result) -> dict[str, int]:
    """Job counts from snakemake's 'Job stats' table (dry runs included)."""
    table = result.stdout + result.stderr
    if "Nothing to be done" in table:
        return {}
    block = table.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m[1] != "total"}


def planned_outputs(result) -> list[str]:
    """Every output file of the planned jobs (a job line lists its outputs joined by ", ")."""
    lines = re.findall(r"^\s+output: (.+)$", result.stdout + result.stderr, re.M)
    return sorted(f for line in lines for f in line.split(", "))


@pytest.fixture(scope="module")
def test_run(tmp_path_factory) -> Path:
    """One full run of config/test.yaml in a scratch working directory."""
    work = tmp_path_factory.mktemp("run")
    res = snakemake(work, "--cores", "2", "--configfile", str(TEST_CONFIG))
    assert res.returncode == 0, res.stderr[-3000:]
    return work


def test_lint_is_clean():
    res = snakemake(ROOT, "--lint", "--configfile", str(TEST_CONFIG))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Lints for" not in res.stdout + res.stderr


def test_snakefmt_clean():
    import subprocess
    import sys

    res = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "workflow"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_dry_run_shows_the_dag(tmp_path):
    res = snakemake(tmp_path, "-n", "--configfile", str(TEST_CONFIG))
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    assert jobs(res)["dataset"] == len(cfg["datasets"])
    assert jobs(res)["features"] == len(cfg["datasets"]) * len(cfg["networks"])


def test_datasets_written(test_run):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    for name, section in cfg["datasets"].items():
        path = test_run / "results" / "datasets" / f"{name}.nc"
        with xr.open_dataset(path) as ds:
            assert ds.attrs["snakemake_rule"] == "dataset"
            assert ds.sizes["sample"] == section["samples"]
            assert ds.sizes["x"] == section["size"]
            assert set(ds.family.values) == set(cfg["transforms"])
        assert (test_run / "logs" / "dataset" / f"{name}.log").exists()


def test_second_run_does_nothing(test_run):
    res = snakemake(test_run, "--cores", "2", "--configfile", str(TEST_CONFIG))
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_changing_one_dataset_reruns_only_it(test_run, tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["datasets"]["tiny_digits"]["seed"] = 7
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = snakemake(test_run, "-n", "--configfile", str(changed))
    assert res.returncode == 0, res.stderr
    planned = planned_outputs(res)
    assert "results/datasets/tiny_digits.nc" in planned
    # its own downstream and the aggregate tables/figures rerun; nothing of tiny_photos is
    # recomputed, and of its figures only those drawn from the shared tables redraw
    computed = [p for p in planned
                if p.startswith(("results/datasets/", "results/features/", "results/alignment/"))]
    assert not [p for p in computed if "tiny_photos" in p], planned
    own = [p for p in planned if p.startswith("results/figures/tiny_photos/")]
    assert own == [f"results/figures/tiny_photos/excess_vs_depth.{e}" for e in ("pdf", "png")]


def test_same_config_same_arrays(test_run, tmp_path):
    other = tmp_path / "again"
    res = snakemake(other, "results/datasets/tiny_photos.nc", "--cores", "1",
                    "--configfile", str(TEST_CONFIG))
    assert res.returncode == 0, res.stderr
    with xr.open_dataset(test_run / "results/datasets/tiny_photos.nc") as a, \
            xr.open_dataset(other / "results/datasets/tiny_photos.nc") as b:
        drop = [k for k in ("git_commit", *TIME_ATTRS)]
        for k in drop:
            a.attrs.pop(k, None)
            b.attrs.pop(k, None)
        xr.testing.assert_identical(a.load(), b.load())


BAD = [
    ({"datasets.tiny_photos.source": "jpegs"}, "datasets.tiny_photos.source: unknown source"),
    ({"transforms.spin": [1]}, "transforms.spin: unknown family 'spin'"),
    ({"transforms.scaling": [-1.0]}, "transforms.scaling: scaling factor -1.0 is not positive"),
    ({"transforms.scaling": [2.5]}, "px is too small for the window"),
    ({"datasets.tiny_photos.images": ["lily"]}, "'lily' is not a scikit-image photograph"),
    ({"datasets.tiny_photos.samples": "many"}, "datasets.tiny_photos.samples: 'many' is not of type"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[next(iter(c)) for c, _ in BAD])
def test_bad_config_refused_before_any_job(tmp_path, change, message):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    for dotted, value in change.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = snakemake(tmp_path, "--cores", "1", "--configfile", str(bad))
    assert res.returncode != 0
    assert "featalign: config error: " in res.stderr and message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "results").exists()


def readme_plugin() -> str:
    """The plugin example of the README's 'Add your network' section, verbatim."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"### Add your network.*?```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module")
def user_plugin_run(tmp_path_factory):
    """A run with the README's plugin (and a renamed copy) from a user's plugin folder."""
    base = tmp_path_factory.mktemp("user")
    plugins = base / "my_plugins"
    plugins.mkdir()
    code = readme_plugin()
    (plugins / "my_blur.py").write_text(code)
    (plugins / "my_other.py").write_text(code.replace('name="my_blur"', 'name="my_other"'))
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["plugin_dirs"] = [str(plugins)]
    cfg["networks"] = {"my_blur": {"width": 4}, "my_other": {"datasets": ["tiny_photos"]}}
    path = base / "user.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    work = base / "work"
    res = snakemake(work, "--cores", "2", "--configfile", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    return work, plugins, path


def test_readme_plugin_runs_through_features(user_plugin_run):
    work, _, _ = user_plugin_run
    for ds in ("tiny_photos", "tiny_digits"):
        tree = xr.open_datatree(work / "results" / "features" / ds / "my_blur.nc")
        assert set(tree.children) == {"conv", "pool"}
        assert tree["pool"].attrs["stride"] == 2
        assert tree["conv"].original.shape[1] == 4  # the config's width option reached build()
    assert not (work / "results" / "features" / "tiny_digits" / "my_other.nc").exists()


def test_editing_a_plugin_reruns_only_its_jobs(user_plugin_run):
    work, plugins, config = user_plugin_run
    before = snakemake(work, "-n", "--configfile", str(config))
    assert "Nothing to be done" in before.stdout + before.stderr
    edited = plugins / "my_blur.py"
    edited.write_text(edited.read_text().replace("/ 5)", "/ 4)"))
    after = snakemake(work, "-n", "--configfile", str(config))
    planned = planned_outputs(after)
    features = [p for p in planned if p.startswith("results/features/")]
    assert features == [
        "results/features/tiny_digits/my_blur.nc",
        "results/features/tiny_photos/my_blur.nc",
    ]
    # downstream of my_blur reruns too (its alignment, figures, the tables); nothing of
    # my_other does: its features, alignment and own figures stay
    assert any(p.startswith("results/alignment/tiny_photos/my_blur/") for p in planned)
    assert "results/figures/tiny_photos/my_blur/error_vs_magnitude.png" in planned
    assert not [p for p in planned if "my_other" in p], planned


def test_unknown_network_refused(tmp_path):
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["networks"] = {"vgg_randon": {}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = snakemake(tmp_path, "--cores", "1", "--configfile", str(bad))
    assert res.returncode != 0
    assert "featalign: config error: networks.vgg_randon:" in res.stderr
    assert "vgg_random" in res.stderr  # the message lists the available names
    assert "Traceback" not in res.stderr
