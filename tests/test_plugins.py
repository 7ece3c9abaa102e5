"""Tests of featalign.plugins: registry, discovery, and plugin conformance."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_plugin

from featalign import plugins
from featalign.extractor import build_extractor
from featalign.plugins import (
    FAMILIES,
    SUBGROUPS,
    PluginError,
    default_plugin_dirs,
    get_network,
    list_networks,
    load_plugins,
)

TESTS_PLUGINS = Path(__file__).parent / "plugins"
REPO_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


pytestmark = pytest.mark.usefixtures("isolated_registry")


class TestNetworkDecorator:
    def test_smoke(self, tmp_path: Path) -> None:
        path = write_plugin(
            tmp_path,
            "a.py",
            "  My_Net ",
            layers="['c1', 'c2']",
            invariant_to="['Rotation', 'flip']",
            in_channels="3",
        )
        specs = load_plugins([tmp_path], entry_points=False)
        spec = specs["my_net"]
        assert spec.name == "my_net"
        assert spec.layers == ("c1", "c2")
        assert spec.invariant_to == ("rotation", "flip")
        assert spec.in_channels == 3
        assert spec.source == path.resolve()
        assert spec.nodes is None and spec.train is None
        assert spec.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()

    def test_returns_build_unchanged(self) -> None:
        def build() -> torch.nn.Module:
            return torch.nn.Identity()

        out = plugins.network(name="unchanged_fn", description="d", layers=["x"])(build)
        assert out is build
        assert plugins._REGISTRY["unchanged_fn"].build is build

    @pytest.mark.parametrize(
        ("decl", "match"),
        [
            (
                {"invariant_to": "['rotate']"},
                r"a\.py: invariant_to entry 'rotate' .*rotation90, flip",
            ),
            ({"in_channels": "2"}, r"a\.py: .*in_channels=2; use 1 \(grey\) or 3"),
            ({"layers": "[]"}, r"a\.py: .*at least one layer"),
            ({"layers": "['a', 'a']"}, r"a\.py: .*layer 'a' more than once"),
            ({"nodes": "{'zzz': 'n'}"}, r"a\.py: nodes .*'zzz', which is not in layers"),
            (
                {"layers": "['a', 'b']", "nodes": "{'a': 'n', 'b': 'n'}"},
                r"a\.py: nodes .*map two layers to graph node 'n'",
            ),
            ({"head": "3"}, r"a\.py: head= of network 'bad' is not callable"),
            ({"stages": "[]"}, r"a\.py: stages= of network 'bad' is not callable"),
        ],
    )
    def test_exception(self, tmp_path: Path, decl: dict[str, str], match: str) -> None:
        write_plugin(tmp_path, "a.py", "bad", **decl)
        with pytest.raises(PluginError, match=match):
            load_plugins([tmp_path], entry_points=False)

    def test_families_and_subgroups(self) -> None:
        assert "affine" in FAMILIES and "translation" in FAMILIES and len(FAMILIES) == 7
        assert SUBGROUPS == ("rotation90", "flip")


class TestLoadPlugins:
    def test_duplicate_names_both_files(self, tmp_path: Path) -> None:
        write_plugin(tmp_path / "one", "first.py", "twin")
        write_plugin(tmp_path / "two", "second.py", "TWIN")
        with pytest.raises(
            PluginError, match=r"'twin' is registered twice, in .*first\.py and in .*second\.py"
        ):
            load_plugins([tmp_path / "one", tmp_path / "two"], entry_points=False)

    def test_reentrant(self, tmp_path: Path) -> None:
        write_plugin(tmp_path, "a.py", "again")
        first = load_plugins([tmp_path], entry_points=False)["again"]
        second = load_plugins([tmp_path], entry_points=False)["again"]
        assert first.source == second.source
        # the same folder named twice, and a second call, are not duplicates
        assert "again" in load_plugins([tmp_path, tmp_path], entry_points=False)
        assert sum(s.name == "again" for s in plugins._REGISTRY.values()) == 1

    def test_import_failure_names_file_and_exception(self, tmp_path: Path) -> None:
        (tmp_path / "broken.py").write_text("import torch\nraise RuntimeError('kaboom')\n")
        with pytest.raises(
            PluginError, match=r"broken\.py: failed to import \(RuntimeError: kaboom\)"
        ):
            load_plugins([tmp_path], entry_points=False)

    def test_failure_leaves_registry_unchanged(self, tmp_path: Path) -> None:
        write_plugin(tmp_path, "a_ok.py", "fine_net")
        (tmp_path / "b_bad.py").write_text("raise ImportError('no such thing')\n")
        before = dict(plugins._REGISTRY)
        with pytest.raises(PluginError, match=r"b_bad\.py"):
            load_plugins([tmp_path], entry_points=False)
        assert plugins._REGISTRY == before

    def test_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(PluginError, match=r"plugin directory .*nowhere does not exist"):
            load_plugins([tmp_path / "nowhere"], entry_points=False)

    def test_underscore_files_skipped(self, tmp_path: Path) -> None:
        (tmp_path / "_helper.py").write_text("raise RuntimeError('must not be imported')\n")
        write_plugin(tmp_path, "a.py", "uses_helper")
        assert "uses_helper" in load_plugins([tmp_path], entry_points=False)

    def test_scoped_to_directories(self, tmp_path: Path) -> None:
        write_plugin(tmp_path / "x", "a.py", "only_in_x")
        assert "only_in_x" in load_plugins([tmp_path / "x"], entry_points=False)
        assert "only_in_x" not in load_plugins([TESTS_PLUGINS], entry_points=False)

    def test_entry_points_dist_info(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A module advertised by an installed distribution's entry point is discovered."""
        pkg = tmp_path / "site"
        write_plugin(pkg, "fa_ep_demo_mod.py", "ep_demo")
        dist = pkg / "fa_ep_demo-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fa-ep-demo\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[featalign.networks]\nep_demo = fa_ep_demo_mod\n")
        monkeypatch.syspath_prepend(str(pkg))
        monkeypatch.delitem(sys.modules, "fa_ep_demo_mod", raising=False)
        specs = load_plugins([], entry_points=True)
        assert specs["ep_demo"].source == (pkg / "fa_ep_demo_mod.py").resolve()
        sys.modules.pop("fa_ep_demo_mod", None)

    def test_entry_point_failure(self, monkeypatch: pytest.MonkeyPatch) -> None:
        ep = importlib.metadata.EntryPoint(
            name="ghost", value="featalign_no_such_module_xyz", group="featalign.networks"
        )

        def fake(**kwargs: object) -> list[importlib.metadata.EntryPoint]:
            assert kwargs == {"group": "featalign.networks"}
            return [ep]

        monkeypatch.setattr(importlib.metadata, "entry_points", fake)
        with pytest.raises(
            PluginError,
            match=r"entry point 'ghost = featalign_no_such_module_xyz'.*ModuleNotFoundError",
        ):
            load_plugins([], entry_points=True)


class TestGetNetwork:
    def test_smoke(self) -> None:
        spec = get_network(" TINY ", [TESTS_PLUGINS])
        assert spec.name == "tiny" and spec.in_channels == 1

    def test_unknown_lists_names(self) -> None:
        with pytest.raises(
            PluginError,
            match=r"no network is called 'nope'; available networks are: .*tiny.*vgg_random",
        ):
            get_network("nope", [TESTS_PLUGINS])


class TestListNetworks:
    def test_does_not_build(self, tmp_path: Path) -> None:
        write_plugin(tmp_path, "a.py", "explodes", body="raise RuntimeError('built!')")
        names = [s.name for s in list_networks([tmp_path])]
        assert "explodes" in names and "vgg_random" in names
        assert names == sorted(names)

    def test_default_plugin_dirs(self) -> None:
        assert REPO_PLUGINS.resolve() in default_plugin_dirs()

    def test_a_second_checkout_uses_its_own_plugins(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Running a copy of the repository (featalign installed from the first) must not
        see every built-in network twice, and must use the copy's own plugin files."""
        (tmp_path / "src" / "featalign").mkdir(parents=True)
        (tmp_path / "src" / "featalign" / "__init__.py").write_text("")
        (tmp_path / "plugins").mkdir()
        for f in REPO_PLUGINS.glob("*.py"):
            (tmp_path / "plugins" / f.name).write_text(f.read_text())
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(plugins, "_REGISTRY", {})  # a fresh process, as a workflow job
        assert default_plugin_dirs() == [(tmp_path / "plugins").resolve()]
        spec = get_network("vgg_random")
        assert spec.source == (tmp_path / "plugins" / "vgg_random.py").resolve()

    def test_a_project_folder_adds_its_plugins_to_the_built_in_ones(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        write_plugin(tmp_path / "plugins", "mine.py", "mine")
        monkeypatch.chdir(tmp_path)
        assert default_plugin_dirs() == [REPO_PLUGINS.resolve(), (tmp_path / "plugins").resolve()]
        assert {"mine", "vgg_random"} <= {s.name for s in list_networks()}


CONFORMANCE_DIRS = [*default_plugin_dirs(), TESTS_PLUGINS]


def _conformance_names() -> list[str]:
    try:
        return [s.name for s in list_networks(CONFORMANCE_DIRS)]
    except PluginError as exc:  # surfaced by the test below instead of breaking collection
        return [f"<load error: {exc}>"]


@pytest.mark.parametrize("name", _conformance_names())
def test_conformance(name: str) -> None:
    """Every registered network (built-in, tests/plugins, entry points): declared layers,
    4-D finite outputs on 1×C×64×64."""
    if name.startswith("<load error"):
        pytest.fail(name)
    spec = get_network(name, CONFORMANCE_DIRS)
    try:
        ex = build_extractor(spec)
    except (FileNotFoundError, ImportError) as exc:
        pytest.skip(f"{name} needs something missing here: {type(exc).__name__}: {exc}")
    with torch.no_grad():
        out = ex(torch.rand(1, spec.in_channels, 64, 64))
    assert list(out) == list(spec.layers)
    for layer, t in out.items():
        assert t.ndim == 4 and t.shape[0] == 1, layer
        assert torch.isfinite(t).all(), layer
