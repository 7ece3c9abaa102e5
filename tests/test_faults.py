"""Faults and bad input: nothing is lost, and every user error is a clear message.

Each section proves one promise of the design ("writes are atomic", "a user
error is one sentence naming the key and the fix") by injecting the fault:

1. atomic outputs: every writer goes through ``featalign.io.atomic_path``; a
   writer killed mid-write leaves the old file or none;
2. crash and resume: ``kill -9`` of a running workflow, during the feature and
   during the alignment stage, then ``snakemake --unlock`` and
   ``snakemake --rerun-incomplete``: finished outputs untouched, results equal;
3. corrupted caches: truncated, bit-flipped and "older featalign" files are
   refused with a message naming the file and the rebuild command;
4. config fuzzing (hypothesis) through :func:`featalign.plan.load_plan`, the call
   ``common.smk`` makes before any job: every mutation the schema forbids (wrong
   types, unknown keys, out-of-range values, missing required keys), every
   unknown network or family and every option a network's ``build()`` does not
   take is refused in one sentence naming the key; then a few mutations through
   ``snakemake -n``;
5. plugins that misbehave fail only their own jobs;
6. concurrency: Snakemake's lock, and ``-j 2`` equals ``-j 1``;
7. a full disk ends with a clear error and no partial file.

Workflow runs use a small derived config (one dataset of 2 samples, one
two-layer pointwise network written to tmp_path) to stay within minutes on
2 cores; the runs are marked ``slow``. The counts of faults injected and configs
fuzzed are printed at the end of the run (``conftest.pytest_terminal_summary``).
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import BIN, ROOT, snakemake
from conftest import COUNTS as RUN_COUNTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featalign.geometry import FAMILIES
from featalign.io import FileError, atomic_path, open_dataset, read_finite, write_netcdf

TEST_CONFIG = ROOT / "config" / "test.yaml"
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
TABLES = ("results/tables/errors.csv", "results/tables/claims.csv")
DATASET = "results/datasets/tiny_photos.nc"
FEATURES = "results/features/tiny_photos/slowpoint.nc"
ALIGNMENT = "results/alignment/tiny_photos/slowpoint/{layer}.nc"
LAYERS = ("conv1", "conv2")

#: Faults injected by this file, printed at the end of the run (conftest.py).
COUNTS = RUN_COUNTS["fault suite"]

# ---------------------------------------------------------------------------
# small configs and plugins
# ---------------------------------------------------------------------------

#: A pointwise network with two layers whose build() sleeps `delay` seconds, so that
#: a crash test can kill the feature stage while it is certainly still running.
SLOW_PLUGIN = '''
"""Two 1x1 layers (random init); build() sleeps `delay` s: a feature job that lasts."""
import time

from torch import nn

from featalign.nets import Tapped, seeded
from featalign.plugins import FAMILIES, network


@network(
    name="slowpoint",
    description="Two 1x1 convolutions; build() sleeps for the crash tests.",
    layers=["conv1", "conv2"],
    invariant_to=FAMILIES,
    in_channels=3,
)
def build(width: int = 4, seed: int = 0, delay: float = 0.0) -> nn.Module:
    time.sleep(float(delay))
    with seeded(int(seed)):
        return Tapped([
            ("conv1", nn.Sequential(nn.Conv2d(3, width, 1), nn.ReLU())),
            ("conv2", nn.Conv2d(width, width, 1)),  # linear: never dead
        ])
'''

BAD_TEMPLATE = '''
"""A plugin that misbehaves on purpose: {what}."""
import torch
from torch import nn

from featalign.plugins import network


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        {forward}


@network(name="{name}", description="{what}", layers=["conv"], in_channels=3)
def build(**options):
    {build}
    return Net()
'''

#: name -> (what, build body, forward body)
BAD_PLUGINS = {
    "bad_build": ("raises in build", 'raise RuntimeError("bad_build cannot build")',
                  'return {"conv": y}'),
    "bad_forward": ("raises in forward", "pass",
                    'raise RuntimeError("bad_forward cannot run forward")'),
    "bad_nan": ("returns NaN", "pass", 'return {"conv": y * float("nan")}'),
    "bad_inf": ("returns Inf", "pass", 'return {"conv": y + float("inf")}'),
    "bad_ndim": ("returns a 3-D tensor", "pass", 'return {"conv": y[:, 0]}'),
    "bad_size": ("returns a fixed 5x5 map whatever the input", "pass",
                 'return {"conv": y[..., :5, :5]}'),
}


def write_plugin(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    what, build, forward = BAD_PLUGINS[name]
    path = folder / f"{name}.py"
    path.write_text(BAD_TEMPLATE.format(name=name, what=what, build=build, forward=forward))
    return path


def small_config(networks: dict | None = None, plugin_dirs: list[str] | None = None) -> dict:
    """config/test.yaml reduced: one dataset of 2 samples, 2 transforms, cheap alignment."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    cfg["datasets"] = {"tiny_photos": {**cfg["datasets"]["tiny_photos"], "samples": 2}}
    cfg["transforms"] = {"translation": [4], "rotation": [90]}
    cfg["networks"] = networks if networks is not None else {"pointwise": {"width": 4}}
    cfg["alignment"] = {"starts_per_family": 0, "dense_steps": 0}
    cfg["claims"] = {"bootstrap": 200}
    if plugin_dirs:
        cfg["plugin_dirs"] = plugin_dirs
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def slow_setup(tmp_path_factory) -> tuple[Path, Path]:
    """(config file, plugin folder) of the crash/concurrency runs: network slowpoint."""
    base = tmp_path_factory.mktemp("slowcfg")
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "slowpoint.py").write_text(SLOW_PLUGIN)
    cfg = small_config({"slowpoint": {"width": 4, "delay": 2.0}}, [str(plugins)])
    return write_config(base / "slow.yaml", cfg), plugins


def sm_cmd(work: Path, config: Path, *args: str, targets=TABLES) -> list[str]:
    """A snakemake command line (targets before --configfile, which takes several files)."""
    return [
        str(BIN / "snakemake"), *targets,
        "--snakefile", str(ROOT / "workflow" / "Snakefile"),
        "--directory", str(work), *args, "--configfile", str(config),
    ]


def run(work: Path, config: Path, *args: str, targets=TABLES, timeout: int = 600):
    return subprocess.run(sm_cmd(work, config, *args, targets=targets), cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


@pytest.fixture(scope="module")
def baseline(slow_setup, tmp_path_factory) -> Path:
    """An uninterrupted run of the slow config with -j 2: the reference results."""
    config, _ = slow_setup
    work = tmp_path_factory.mktemp("baseline")
    res = run(work, config, "--cores", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    return work


# ---------------------------------------------------------------------------
# helpers: snapshots, comparisons, killing a process tree
# ---------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(work: Path) -> dict[str, tuple[str, int]]:
    """{path under results/: (sha256, mtime_ns)} of every file."""
    out = {}
    results = work / "results"
    if results.exists():
        for p in sorted(results.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(work))] = (sha256(p), p.stat().st_mtime_ns)
    return out


def leftovers(work: Path) -> list[str]:
    """Temporary files of atomic writes left under results/."""
    return sorted(str(p) for p in (work / "results").rglob("*.tmp")) if (
        work / "results").exists() else []


def assert_same_tables(a: Path, b: Path, rtol: float = 0.0) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(pd.read_csv(a / table), pd.read_csv(b / table),
                                      check_exact=rtol == 0.0, rtol=rtol or 1e-5)


def assert_same_netcdf(a: Path, b: Path, rtol: float = 0.0) -> None:
    """Every .nc under a/results equals its twin under b/results (data, not attributes)."""
    files = sorted(p.relative_to(a) for p in (a / "results").rglob("*.nc"))
    assert files == sorted(p.relative_to(b) for p in (b / "results").rglob("*.nc"))
    for rel in files:
        if "features" in rel.parts:
            ta, tb = xr.open_datatree(a / rel), xr.open_datatree(b / rel)
            try:
                assert set(ta.children) == set(tb.children)
                for layer in ta.children:
                    compare(ta[layer].to_dataset(), tb[layer].to_dataset(), rtol)
            finally:
                ta.close()
                tb.close()
        else:
            with xr.open_dataset(a / rel) as da, xr.open_dataset(b / rel) as db:
                compare(da.load(), db.load(), rtol)


def compare(a: xr.Dataset, b: xr.Dataset, rtol: float) -> None:
    if rtol == 0.0:
        xr.testing.assert_equal(a, b)
        return
    # the optimiser's path (iterations, start, the fitted warp itself) may differ with
    # rounding; the measured errors may not
    skip = [v for v in a.data_vars
            if a[v].dtype.kind not in "f" or str(v).startswith(("affine_", "dense_"))]
    xr.testing.assert_allclose(a.drop_vars(skip), b.drop_vars(skip), rtol=rtol, atol=1e-6)


def start(work: Path, config: Path, *args: str) -> subprocess.Popen:
    """Start snakemake in its own process group (a session), output to work/../<name>.out."""
    out = open(work.parent / f"{work.name}.out", "w")  # noqa: SIM115 -- closed by the OS at exit
    return subprocess.Popen(sm_cmd(work, config, *args), cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"})


def wait_for(proc: subprocess.Popen, predicate, timeout: float = 400.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) before the fault point")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("the fault point was never reached")
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 the process group of ``proc``; fail if any descendant survives outside it."""
    psutil = pytest.importorskip("psutil")
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(0.2)
    alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    for k in alive:
        k.kill()
    assert not alive, f"processes outside snakemake's group survived kill -9: {alive}"
    COUNTS["faults: kill -9 of a workflow"] += 1


# ---------------------------------------------------------------------------
# 1. atomic outputs
# ---------------------------------------------------------------------------

WRITER = re.compile(r"\b(to_netcdf|to_csv|savefig|torch\.save|write_text|write_bytes|np\.save)\(")


def test_every_writer_is_atomic():
    """Every write of a result goes to the temporary path of an atomic writer."""
    offenders = []
    # every module of the library, packages (align/, figures/, summary/) included
    files = [*(ROOT / "src" / "featalign").rglob("*.py"), *(ROOT / "workflow" / "scripts").glob("*.py")]
    for path in files:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = WRITER.search(line)
            if not m or line.lstrip().startswith("#"):
                continue
            # the call writes to the temporary path yielded by atomic_path (io.py,
            # summarize.py, figures._save) or to the handle of train.atomic_torch_save
            # (its own mkstemp + fsync + os.replace)
            if re.search(r"\b(tmp|handle)\b", line + lines[min(i + 1, len(lines) - 1)]):
                COUNTS["writers checked"] += 1
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert not offenders, "writes that bypass atomic_path:\n" + "\n".join(offenders)


KILLED_WRITER = """
import sys
import numpy as np
import xarray as xr
from featalign.io import write_netcdf

rng = np.random.default_rng(0)
ds = xr.Dataset({"noise": (("a", "b"), rng.random((4096, 4096), dtype=np.float32))},
                attrs={"source": "featalign test"})
write_netcdf(ds, sys.argv[1])
"""


@pytest.mark.parametrize("old", [False, True], ids=["no-old-file", "old-file"])
def test_writer_killed_mid_write_leaves_old_file_or_none(tmp_path, old):
    target = tmp_path / "results" / "big.nc"
    target.parent.mkdir()
    before = None
    if old:
        write_netcdf(xr.Dataset({"v": ("a", np.arange(3.0))}, attrs={"source": "featalign"}),
                     target)
        before = sha256(target)
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(target)], start_new_session=True)
    # wait until the temporary file exists and has bytes in it: the write is under way
    t0 = time.monotonic()
    while True:
        tmps = list(target.parent.glob(".big.nc.*.tmp"))
        if tmps and tmps[0].stat().st_size > 0:
            break
        assert proc.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() - t0 < 120
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    COUNTS["faults: writer killed mid-write"] += 1
    if old:
        assert sha256(target) == before  # the old file, byte-identical
    else:
        assert not target.exists()  # none, never a truncated one
    # what is left is a hidden *.tmp file: no output pattern of the workflow matches it
    for p in target.parent.iterdir():
        assert p == target or (p.name.startswith(".") and p.name.endswith(".tmp")), p
    # the next write of the same file cleans up the dead writer's leftover
    write_netcdf(xr.Dataset({"v": ("a", np.arange(4.0))}, attrs={"source": "featalign"}), target)
    assert [p.name for p in target.parent.iterdir()] == ["big.nc"]
    with xr.open_dataset(target) as ds:
        assert ds.v.size == 4


def test_atomic_path_error_leaves_nothing(tmp_path):
    target = tmp_path / "t.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# 2. crash and resume
# ---------------------------------------------------------------------------


def resume(work: Path, config: Path) -> str:
    """The documented resume after kill -9: --unlock, then --rerun-incomplete."""
    res = run(work, config, "--cores", "2")
    # kill -9 leaves snakemake's lock (and the running jobs' incomplete markers) behind:
    # a plain rerun refuses, naming --unlock or --rerun-incomplete
    assert res.returncode != 0
    assert ("Directory cannot be locked" in res.stderr and "--unlock" in res.stderr) or (
        "IncompleteFilesException" in res.stderr and "--rerun-incomplete" in res.stderr
    ), res.stderr
    res = run(work, config, "--unlock")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run(work, config, "--cores", "2", "--rerun-incomplete")
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def assert_untouched(work: Path, before: dict[str, tuple[str, int]]) -> None:
    after = snapshot(work)
    for path, (digest, mtime) in before.items():
        assert path in after, f"{path} vanished"
        assert after[path] == (digest, mtime), f"{path} was rewritten or changed by the resume"


@pytest.mark.slow
def test_crash_during_features_then_resume(slow_setup, baseline, tmp_path):
    config, _ = slow_setup
    work = tmp_path / "work"
    proc = start(work, config, "--cores", "2")
    log = work / "logs" / "features" / "tiny_photos" / "slowpoint.log"
    wait_for(proc, log.exists)  # the feature job is running (its build() sleeps 2 s)
    kill_group(proc)
    before = snapshot(work)
    assert list(before) == [DATASET]  # finished before the kill
    assert not (work / FEATURES).exists() and not leftovers(work)
    resume(work, config)
    assert_untouched(work, before)
    assert_same_tables(work, baseline)
    assert_same_netcdf(work, baseline)
    assert not leftovers(work)


@pytest.mark.slow
def test_crash_during_alignment_then_resume(slow_setup, baseline, tmp_path):
    config, _ = slow_setup
    work = tmp_path / "work"
    # one alignment job at a time (align jobs take one core, so two would run at once): the
    # next job's log then shows that Snakemake has recorded the first one as finished
    proc = start(work, config, "--cores", "2", "--set-threads", "align=2")
    done = [work / ALIGNMENT.format(layer=layer) for layer in LAYERS]
    logs = [work / "logs" / "align" / "tiny_photos" / "slowpoint" / f"{layer}.log"
            for layer in LAYERS]
    # one alignment job finished (and recorded as such), the next one is running
    wait_for(proc, lambda: any(p.exists() for p in done) and all(p.exists() for p in logs))
    kill_group(proc)
    before = snapshot(work)
    assert DATASET in before and FEATURES in before
    finished = [p for p in done if p.exists()]
    assert len(finished) == 1, "kill -9 came after the alignment stage"
    assert not (work / TABLES[0]).exists()
    resume(work, config)
    assert_untouched(work, before)
    assert all(p.exists() for p in done)
    assert_same_tables(work, baseline)
    assert_same_netcdf(work, baseline)
    assert not leftovers(work)


# ---------------------------------------------------------------------------
# 3. corrupted caches
# ---------------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def read_as_consumer(kind: str, path: Path):
    """What the next stage does with a file: the library calls of the adapters."""
    if kind == "dataset":  # workflow/scripts/features.py: opened lazily, read a sample at a time
        names = ("image", "transformed", "realigned")
        with open_dataset(path, kind="dataset", rebuild=f"snakemake {path}", variables=names,
                          lazy=True) as ds:
            return [read_finite(ds, name, sample=s) for s in range(ds.sizes["sample"])
                    for name in names]
    if kind == "features":  # workflow/scripts/align.py
        from featalign.align.files import alignment_dataset

        return alignment_dataset(path, "conv1", region_fraction=0.5, progress=False,
                                 options={"starts_per_family": 0, "dense_steps": 0})
    from featalign.summary import errors_table  # workflow/scripts/summarize.py

    return errors_table([path])


KINDS = {"dataset": DATASET, "features": FEATURES, "alignment": ALIGNMENT.format(layer="conv1")}


def assert_refused(err: BaseException, path: Path) -> None:
    msg = str(err)
    assert isinstance(err, FileError), f"{type(err).__name__} instead of FileError: {msg}"
    assert str(path) in msg and "rebuild" in msg and "snakemake" in msg, msg
    assert "\n" not in msg


@pytest.mark.slow
@pytest.mark.parametrize("kind", [
    "dataset",
    "features",
    "alignment",
])
def test_truncated_file_is_refused(baseline, tmp_path, kind):
    path = tmp_path / Path(KINDS[kind]).name
    shutil.copy(baseline / KINDS[kind], path)
    truncate(path)
    COUNTS["corruptions: truncated"] += 1
    with pytest.raises(Exception) as err:
        read_as_consumer(kind, path)
    assert_refused(err.value, path)


def flip_bit(path: Path, position: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def read_all(path: Path, kind: str) -> list[xr.Dataset]:
    """Every group of a file through featalign.io.open_dataset (what the stages read)."""
    if kind != "features":
        return [open_dataset(path, kind=kind, rebuild=f"snakemake {path}")]
    return [open_dataset(path, kind=kind, rebuild=f"snakemake {path}", group=layer)
            for layer in LAYERS]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_bit_flips_are_refused_or_harmless(baseline, tmp_path, kind):
    """A flipped bit anywhere: FileError naming the file, or the very same data."""
    good = baseline / KINDS[kind]
    reference = read_all(good, kind)
    rng = np.random.default_rng(0)
    size = good.stat().st_size
    outcome = collections.Counter()
    silent = []
    for position in rng.integers(0, size, 40):
        path = tmp_path / f"flip{position}.nc"
        shutil.copy(good, path)
        flip_bit(path, int(position), int(rng.integers(0, 8)))
        try:
            got = read_all(path, kind)
        except FileError as err:
            assert_refused(err, path)
            outcome["refused"] += 1
            continue
        for a, b in zip(got, reference):
            try:
                xr.testing.assert_equal(a, b)
            except AssertionError:
                silent.append(int(position))
                break
        else:
            outcome["harmless"] += 1
    COUNTS["corruptions: bit flips"] += 40
    COUNTS["corruptions: bit flips refused"] += outcome["refused"]
    print(f"{kind}: {dict(outcome)} of 40 bit flips; silently changed data at {silent}")
    assert not silent, f"bit flips read as garbage without an error, at bytes {silent}"


def older(kind: str, src: Path, dst: Path, drop: str) -> None:
    """Rewrite ``src`` as an older featalign might have: without variable/attribute ``drop``."""
    if kind == "features":
        tree = xr.open_datatree(src).load()
        node = tree["conv1"].to_dataset(inherit=False)
        node = node.drop_vars(drop) if drop in node.variables else node
        node.attrs.pop(drop, None)
        tree["conv1"] = xr.DataTree(node)
        write_netcdf(tree, dst)
        return
    with xr.open_dataset(src) as ds:
        ds = ds.load()
    ds = ds.drop_vars(drop) if drop in ds.variables else ds
    ds.attrs.pop(drop, None)
    write_netcdf(ds, dst)


OLDER = [
    ("dataset", "realigned"),  # variable
    ("features", "transformed"),  # variable
    ("features", "stride"),  # attribute
    ("alignment", "error"),  # variable
    ("alignment", "network"),  # attribute
]


@pytest.mark.slow
@pytest.mark.parametrize("kind,drop", OLDER, ids=[
    "dataset-realigned", "features-transformed", "features-stride", "alignment-error",
    "alignment-network"])
def test_file_of_an_older_featalign_is_refused(baseline, tmp_path, kind, drop):
    path = tmp_path / Path(KINDS[kind]).name
    older(kind, baseline / KINDS[kind], path, drop)
    COUNTS["corruptions: older featalign"] += 1
    with pytest.raises(Exception) as err:
        read_as_consumer(kind, path)
    assert_refused(err.value, path)
    assert drop in str(err.value)


@pytest.mark.slow
def test_corrupted_dataset_refused_through_snakemake(baseline, slow_setup, tmp_path):
    config, _ = slow_setup
    work = tmp_path / "work"
    shutil.copytree(baseline, work, symlinks=True)
    truncate(work / DATASET)
    COUNTS["corruptions: through snakemake"] += 1
    res = run(work, config, "--cores", "2", targets=[FEATURES])
    assert res.returncode != 0
    assert "Error in rule features" in res.stderr
    log = (work / "logs" / "features" / "tiny_photos" / "slowpoint.log").read_text()
    message = log.strip().splitlines()[-1]
    assert f"dataset file {DATASET} cannot be read" in message, log[-2000:]
    assert f"delete it and rebuild with: snakemake {DATASET}" in message
    assert not (work / FEATURES).exists()  # snakemake removed the failed job's output
    assert not leftovers(work)


# ---------------------------------------------------------------------------
# 4. config fuzzing
# ---------------------------------------------------------------------------

FUZZ_BASE = small_config({"pointwise": {"width": 4}, "vgg_random": {"width": 4}})
FUZZ_BASE["transforms"] = yaml.safe_load(TEST_CONFIG.read_text())["transforms"]


def key_paths(node, prefix=()) -> list[tuple]:
    """Every key path of a config (list items as integer indices)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out += key_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out += key_paths(v, (*prefix, i))
    return out


def at(path: tuple):
    node = FUZZ_BASE
    for k in path:
        node = node[k]
    return node


PATHS = key_paths(FUZZ_BASE)
MAPPINGS = [()] + [p for p in PATHS if isinstance(at(p), dict)]
LISTS = [p for p in PATHS if isinstance(at(p), list)]
NUMBERS = [p for p in PATHS if isinstance(at(p), (int, float)) and not isinstance(at(p), bool)]

WRONG = st.one_of(
    st.text(max_size=6), st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.lists(st.integers(-5, 5), max_size=2), st.just({}), st.just([]),
    st.dictionaries(st.sampled_from(["radius", "a"]), st.integers(-2, 2), max_size=1),
)
NEW_KEYS = st.one_of(st.sampled_from(["colour", "widht", "Source", "extra", "layers"]),
                     st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True))

MUTATION_KINDS = ("wrong value", "missing key", "unknown key", "empty", "out of range",
                  "unknown network", "unknown family")

MUTATIONS = st.one_of(
    st.tuples(st.just("wrong value"), st.sampled_from(PATHS), WRONG),
    st.tuples(st.just("missing key"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("unknown key"), st.sampled_from(MAPPINGS), NEW_KEYS),
    st.tuples(st.just("empty"), st.sampled_from(MAPPINGS[1:] + LISTS), st.none()),
    st.tuples(st.just("out of range"), st.sampled_from(NUMBERS),
              st.sampled_from([-1, 0, -0.5, 1e9, 5000, 2, 1.5, 0.999])),
    st.tuples(st.just("unknown network"), st.just(("networks",)),
              st.one_of(st.sampled_from(["vgg_randon", "resnet", "Pointwise_", "ghost"]),
                        st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))),
    st.tuples(st.just("unknown family"),
              st.sampled_from([("transforms",), ("datasets", "tiny_photos", "transforms")]),
              st.one_of(st.sampled_from(["spin", "Rotation", "zoom", "flip", "rotation90"]),
                        st.from_regex(r"[a-z]{1,8}", fullmatch=True))),
)


def apply(mutation) -> tuple[dict, tuple]:
    """The mutated config and the key path the message must name."""
    kind, path, value = mutation
    cfg = copy.deepcopy(FUZZ_BASE)
    if kind in ("unknown key", "unknown network", "unknown family"):
        node = cfg
        for k in path:
            node = node.setdefault(k, {})  # a dataset's own transforms may not exist yet
        if not isinstance(node, dict):  # e.g. a null option mapping
            return cfg, path
        key = value
        node[key] = [1.0] if kind == "unknown family" else ({} if kind == "unknown network"
                                                             else 1)
        return cfg, (*path, key)
    node = cfg
    for k in path[:-1]:
        node = node[k]
    leaf = path[-1]
    if kind == "missing key":
        del node[leaf]
    elif kind == "empty":
        node[leaf] = type(node[leaf])()
    else:
        node[leaf] = value
    return cfg, path


def check(cfg: dict) -> None:
    """What workflow/rules/common.smk does with a config before any job: the same call."""
    from featalign.plan import load_plan

    load_plan(cfg, SCHEMA_PATH)


def names_path(message: str, path: tuple, kind: str = "") -> bool:
    """Whether a message names the key path (or, for an index, the list; for a removed
    or added key, its parent and the key, or the parent left empty; for a transform,
    the family)."""
    dotted = ".".join(map(str, path))
    keys = [str(k) for k in path if not isinstance(k, int)]
    if dotted in message or ".".join(keys) in message:
        return True
    parent = ".".join(keys[:-1]) or "(top level)"
    if keys and parent in message and repr(keys[-1]) in message:
        return True
    if kind == "missing key" and message.startswith(f"{parent}: ") and "empty" in message:
        return True
    if keys and keys[0] == "transforms" or "transforms" in keys:
        family = keys[keys.index("transforms") + 1] if keys[-1] != "transforms" else None
        if family and re.search(rf"\b{re.escape(family)}\b", message):
            return True
    return False


#: The schema alone, without featalign's messages or defaults: the oracle of what it forbids.
SCHEMA_ORACLE = jsonschema.Draft202012Validator(SCHEMA)


@functools.cache
def network_names() -> frozenset[str]:
    from featalign.plugins import list_networks

    return frozenset(s.name for s in list_networks())


@functools.cache
def build_options(network: str) -> frozenset[str]:
    """The keyword options the network's ``build()`` takes."""
    from featalign.plugins import get_network

    params = inspect.signature(get_network(network).build).parameters.values()
    return frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL)


def forbidden(cfg: dict, mutation, path: tuple) -> str | None:
    """Why the design forbids a mutated config outright, or None where a meaning check
    may refuse it or not (a canvas too small, no transforms, NaN, ...)."""
    kind, _, value = mutation
    if not SCHEMA_ORACLE.is_valid(cfg):
        return "schema"
    if kind == "unknown network" and value.strip().lower() not in network_names():  # case-blind
        return "unknown network"
    if kind == "unknown family" and value not in FAMILIES:
        return "unknown family"
    if (kind == "unknown key" and len(path) == 3 and path[0] == "networks"
            and path[2] not in build_options(path[1]) | {"datasets"}):
        return "unknown build option"
    return None


def test_config_fuzzing():
    """Mutations of a small config: whatever the schema forbids, and every unknown
    network, family or build option, is refused by the call common.smk makes before any
    job, in one sentence naming the key; the rest is refused likewise or accepted."""
    from featalign.config import ConfigError
    from featalign.plugins import PluginError

    stats: collections.Counter[str] = collections.Counter()

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True)
    @given(MUTATIONS)
    def one(mutation):
        cfg, path = apply(mutation)
        why = forbidden(copy.deepcopy(cfg), mutation, path)
        stats["tried"] += 1
        stats[f"{mutation[0]}: tried"] += 1
        if why:
            stats[f"forbidden by {why}"] += 1
        try:
            check(cfg)
        except (ConfigError, PluginError) as err:
            stats["refused"] += 1
            stats[f"{mutation[0]}: refused"] += 1
            if why:
                stats[f"forbidden by {why}: refused"] += 1
            message = str(err)
            assert "\n" not in message, message
            assert names_path(message, path, mutation[0]), (
                f"{mutation}: message does not name the key: {message}")
            return
        assert why is None, f"{mutation}: accepted, but forbidden by the {why}"

    one()
    RUN_COUNTS["config fuzzing"].update(stats)
    kinds = {m for m, *_ in (s.split(": ") for s in stats) if m in MUTATION_KINDS}
    assert kinds == set(MUTATION_KINDS), f"kinds never tried: {set(MUTATION_KINDS) - kinds}"
    for why in ("schema", "unknown network", "unknown family", "unknown build option"):
        assert stats[f"forbidden by {why}"] > 0, f"no mutation was forbidden by the {why}"
        assert stats[f"forbidden by {why}: refused"] == stats[f"forbidden by {why}"]


SNAKEMAKE_CASES = [
    (("datasets", "tiny_photos", "samples"), -1, "datasets.tiny_photos.samples: -1 is less than"),
    (("datasets", "tiny_photos", "colour"), 3, "datasets.tiny_photos: Additional properties"),
    (("datasets", "tiny_photos", "source"), None, "'source' is a required property"),
    (("transforms", "zoom"), [1.5], "transforms.zoom: unknown family 'zoom'"),
    (("networks", "vgg_randon"), {}, "networks.vgg_randon: no network is called"),
    (("networks", "pointwise", "widht"), 8, "networks.pointwise.widht: "),
]


@pytest.mark.slow
@pytest.mark.parametrize("path,value,message", SNAKEMAKE_CASES,
                         ids=[".".join(p) for p, _, _ in SNAKEMAKE_CASES])
def test_bad_config_stops_dry_run_in_one_line(tmp_path, path, value, message):
    cfg = copy.deepcopy(FUZZ_BASE)
    node = cfg
    for k in path[:-1]:
        node = node[k]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    bad = write_config(tmp_path / "bad.yaml", cfg)
    res = snakemake(tmp_path / "work", "-n", "--configfile", str(bad))
    COUNTS["configs through snakemake -n"] += 1
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if "featalign: config error" in ln]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert "Job stats" not in res.stderr + res.stdout  # stopped before any job
    assert not (tmp_path / "work" / "results").exists()


# ---------------------------------------------------------------------------
# 5. plugins that misbehave
# ---------------------------------------------------------------------------




@pytest.mark.slow
def test_bad_plugins_fail_only_their_own_jobs(tmp_path):
    plugins = tmp_path / "plugins"
    files = {name: write_plugin(plugins, name) for name in BAD_PLUGINS}
    (plugins / "slowpoint.py").write_text(SLOW_PLUGIN)
    networks = {"slowpoint": {"width": 4}, **{name: {} for name in BAD_PLUGINS}}
    config = write_config(tmp_path / "plugins.yaml", small_config(networks, [str(plugins)]))
    work = tmp_path / "work"
    res = run(work, config, "--cores", "2", "--keep-going",
              "--set-threads", "features=1", "align=1")
    COUNTS["faults: misbehaving plugins"] += len(BAD_PLUGINS)
    assert res.returncode != 0
    # the good network completes
    for layer in LAYERS:
        with xr.open_dataset(work / ALIGNMENT.format(layer=layer)) as ds:
            assert np.isfinite(ds.error.values).all()
    report = {}
    for name in files:
        assert not (work / f"results/features/tiny_photos/{name}.nc").exists()
        assert f"results/features/tiny_photos/{name}.nc" in res.stderr  # its job failed
        log = (work / "logs" / "features" / "tiny_photos" / f"{name}.log").read_text()
        last = log.strip().splitlines()[-1]
        report[name] = last
    print("\n".join(f"{k}: {v}" for k, v in report.items()))
    assert not leftovers(work)
    # one sentence naming the plugin file: the last line of the log
    unclear = {k: v for k, v in report.items() if str(files[k]) not in v}
    assert not unclear, f"last log line does not name the plugin file: {unclear}"


# ---------------------------------------------------------------------------
# 6. concurrency
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_second_run_is_locked_out_and_j1_equals_j2(slow_setup, baseline, tmp_path):
    config, _ = slow_setup
    work = tmp_path / "work"
    first = start(work, config, "--cores", "1")
    locks = work / ".snakemake" / "locks"
    wait_for(first, lambda: locks.is_dir() and any(locks.iterdir()))
    second = run(work, config, "--cores", "1")
    COUNTS["faults: concurrent second run"] += 1
    assert second.returncode != 0
    # refused by the lock or, since snakemake builds its DAG before it takes the lock, by
    # the incomplete marker of an output the first run's job has written but the first run
    # has not yet recorded as finished (a race that a loaded machine makes likely)
    assert ("Directory cannot be locked" in second.stderr
            or "IncompleteFilesException" in second.stderr), second.stderr
    assert first.wait(timeout=600) == 0, (work.parent / "work.out").read_text()[-3000:]
    # the first run's results are intact, and -j 1 gives what -j 2 (baseline) gave, up to
    # float32 rounding: Snakemake scales each job's threads (OMP_NUM_THREADS) to the
    # cores, and reductions over 1 or 2 threads differ in the last bits (measured: 1.3e-7)
    assert_same_tables(work, baseline, rtol=1e-5)
    assert_same_netcdf(work, baseline, rtol=1e-5)


# ---------------------------------------------------------------------------
# 7. full disk
# ---------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KiB tmpfs at tmp_path/disk (skipped where mount is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)],
                         check=False, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_full_disk_write_is_a_clear_error_and_leaves_nothing(tiny_disk):
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"noise": (("a", "b"), rng.random((512, 512)))}, attrs={"source": "featalign"})
    target = tiny_disk / "big.nc"
    COUNTS["faults: full disk"] += 1
    with pytest.raises(FileError) as err:
        write_netcdf(ds, target)
    assert str(target) in str(err.value) and "no space left" in str(err.value).lower()
    assert list(tiny_disk.iterdir()) == []  # neither a partial file nor a temporary one


@pytest.mark.slow
def test_full_disk_run_fails_clearly_without_partial_files(slow_setup, tmp_path):
    _, plugins = slow_setup
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs",
                          str(work / "results")], check=False, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        cfg = small_config({"slowpoint": {"width": 32}}, [str(plugins)])
        config = write_config(tmp_path / "disk.yaml", cfg)
        res = run(work, config, "--cores", "2")
        COUNTS["faults: full disk"] += 1
        assert res.returncode != 0
        logs = "".join(p.read_text() for p in (work / "logs").rglob("*.log"))
        assert "No space left on device" in logs or "no space left" in logs.lower(), logs[-3000:]
        assert not leftovers(work), leftovers(work)
        # whatever is there is complete: the dataset, which fitted
        assert sorted(str(p.relative_to(work)) for p in (work / "results").rglob("*.nc")) == [
            DATASET]
        read_all(work / DATASET, "dataset")
    finally:
        subprocess.run(["umount", "-l", str(work / "results")], check=False)
