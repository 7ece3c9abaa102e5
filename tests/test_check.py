"""Tests of featalign.check: the logic of `featalign plugins check NAME`."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

from featalign import plugins
from featalign.check import (
    APPROX_TOL,
    EXACT_TOL,
    SYMMETRIES,
    _shift,
    check_network,
    smooth_images,
)

REPO_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
TESTS_PLUGINS = Path(__file__).parent / "plugins"


pytestmark = pytest.mark.usefixtures("isolated_registry")


def plugin(
    folder: Path, name: str, module_src: str, invariant_to: str = "[]", layers: str = "['a', 'b']"
) -> Path:
    """Write a plugin whose build returns ``M()``, with class M defined by ``module_src``."""
    path = folder / f"{name}.py"
    path.write_text(
        "import torch\nimport torch.nn.functional as F\nfrom featalign.plugins import network\n\n"
        + textwrap.dedent(module_src)
        + f"\n\n@network(name={name!r}, description='test', layers={layers}, "
        f"invariant_to={invariant_to}, in_channels=1)\n"
        "def build(**options):\n    torch.manual_seed(0)\n    return M()\n"
    )
    return path


GOOD = """
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    def forward(self, x):
        a = torch.relu(self.conv(x))
        return {'a': a, 'b': F.avg_pool2d(a, 2)}
"""


class TestCheckNetwork:
    def test_d4_pooled_exact(self) -> None:
        report = check_network("d4_pooled", plugin_dirs=[REPO_PLUGINS])
        assert report.passed and report.exit_code == 0, report.format()
        assert [r.layer for r in report.layers] == ["block1", "block2", "block3"]
        assert [r.stride for r in report.layers] == [1, 2, 4]
        assert [r.offset for r in report.layers] == [(0.0, 0.0), (0.5, 0.5), (1.5, 1.5)]
        for r in report.layers:
            assert set(r.symmetry) == set(SYMMETRIES)
            assert all(err < EXACT_TOL for err in r.symmetry.values())
            assert r.expect == {name: EXACT_TOL for name in SYMMETRIES}
            assert r.translation is not None and r.translation < EXACT_TOL
            assert r.finite and r.deterministic
        text = report.format()
        assert "result: PASS" in text and f"tolerance {EXACT_TOL:g}" in text
        assert f"{APPROX_TOL:g} for declared approximate" in text

    def test_vgg_random_far_from_invariant(self) -> None:
        report = check_network("vgg_random", plugin_dirs=[REPO_PLUGINS])
        assert report.passed, report.format()
        for r in report.layers:
            assert r.expect == {}  # nothing declared: informative only
            assert min(r.symmetry.values()) > 0.3

    def test_tiny(self) -> None:
        report = check_network("tiny", {"width": 3}, [TESTS_PLUGINS])
        assert report.passed, report.format()
        assert report.layers[1].shape == (2, 3, 32, 32)
        assert report.options == {"width": 3}

    @pytest.mark.parametrize(
        ("forward", "match"),
        [
            (None, r"build\(\) of network 'p_bad' returned M, not a torch.nn.Module"),
            ("raise OSError('no weights')", r"build\(\) .*'p_bad' raised OSError: no weights"),
            ("return {'a': x}", r"layer 'b' of network 'p_bad' is missing"),
            (
                "return {'a': x, 'b': x[:, 0]}",
                r"layer 'b' of network 'p_bad' is shape \(2, 64, 64\), not a 4-D tensor",
            ),
            ("return {'a': x, 'b': x / 0}", r"layer 'b' of network 'p_bad' has NaN or Inf"),
            (
                "raise RuntimeError('shape mismatch somewhere')",
                (
                    r"p_bad.py: the module of network 'p_bad' is broken: its forward on a "
                    r"\(1, 1, 64, 64\) zero image raised RuntimeError: shape mismatch somewhere"
                ),
            ),
            (
                "return {'a': x + 0.01 * torch.randn_like(x), 'b': x}",
                r"layer 'a' of network 'p_bad' is not deterministic",
            ),
            (
                "return {'a': x * torch.arange(x.shape[-1], dtype=x.dtype), 'b': x}",
                r"layer 'a' of network 'p_bad' is not translation covariant",
            ),
        ],
    )
    def test_failures_are_sentences(self, tmp_path: Path, forward: str | None, match: str) -> None:
        """A broken plugin yields failure sentences naming file and layer, never an exception."""
        if forward is None:
            src = "class M:\n    pass\n"
        elif forward.startswith("raise OSError"):
            src = f"class M(torch.nn.Module):\n    def __init__(self):\n        {forward}\n"
        else:
            src = f"class M(torch.nn.Module):\n    def forward(self, x):\n        {forward}\n"
        path = plugin(tmp_path, "p_bad", src)
        report = check_network("p_bad", plugin_dirs=[tmp_path])
        assert not report.passed and report.exit_code == 1
        assert any(f.startswith(f"{path}:") or "p_bad.py:" in f for f in report.failures)
        assert any(re.search(match, f) for f in report.failures), report.failures
        assert "result: FAIL" in report.format()

    def test_false_declaration_fails(self, tmp_path: Path) -> None:
        plugin(tmp_path, "p_claims", GOOD, invariant_to="['rotation90', 'reflection']")
        report = check_network("p_claims", plugin_dirs=[tmp_path])
        assert not report.passed
        text = "\n".join(report.failures)
        assert (
            "layer 'a' of network 'p_claims' is declared invariant to rotation90 but rot90" in text
        )
        assert f"> {EXACT_TOL:g}" in text
        assert "declared invariant to reflection but flip_y" in text and f"> {APPROX_TOL:g}" in text
        # a norm ratio, named apart from the workflow's (squared) relative error
        assert "gives relative difference" in text and "relative error" not in text
        assert "relative error" not in report.format()

    @pytest.mark.parametrize("relu", [True, False])
    def test_stages_are_checked(self, tmp_path: Path, relu: bool) -> None:
        """stages= (the chain for the stage-by-stage dense evaluation) must reproduce the
        network's dense maps: a chain that drops the ReLU is a failure sentence."""
        first = "torch.nn.Sequential(m.conv, torch.nn.ReLU())" if relu else "m.conv"
        path = plugin(tmp_path, "p_chain", GOOD)
        path.write_text(path.read_text().replace(
            "in_channels=1)",
            f"in_channels=1, stages=lambda m: [('a', {first}), ('b', torch.nn.AvgPool2d(2))])",
        ))
        report = check_network("p_chain", plugin_dirs=[tmp_path])
        assert any(n.startswith("stages: dense maps stage by stage") for n in report.notes)
        if relu:
            assert report.passed, report.format()
        else:
            assert any("stages= of network 'p_chain' does not reproduce" in f
                       for f in report.failures), report.failures

    def test_uncentred_grid_fails_declared_flip(self, tmp_path: Path) -> None:
        """x[::2] samples at even pixels: flips cannot map that grid onto itself."""
        src = GOOD.replace("F.avg_pool2d(a, 2)", "a[..., ::2, ::2]")
        plugin(tmp_path, "p_sub", src, invariant_to="['flip']")
        report = check_network("p_sub", plugin_dirs=[tmp_path])
        assert report.layers[1].offset == (0.0, 0.0)
        assert any("layer 'b'" in f and "is not centred" in f for f in report.failures)

    def test_unknown_name(self) -> None:
        with pytest.raises(plugins.PluginError, match="no network is called 'nope'"):
            check_network("nope")


class TestHelpers:
    def test_smooth_images(self) -> None:
        x = smooth_images(2, 3, 32, seed=1)
        assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
        assert (x[..., 0, :] == 0).all() and (x[..., :, -1] == 0).all()  # window reaches 0
        torch.testing.assert_close(x, smooth_images(2, 3, 32, seed=1))

    def test_shift_known_answer(self) -> None:
        t = torch.arange(16.0).view(1, 1, 4, 4)
        out = _shift(t, 1, -2)
        assert out[0, 0, 1, 0] == t[0, 0, 0, 2] and out[0, 0, 3, 1] == t[0, 0, 2, 3]
        assert (out[0, 0, 0] == 0).all() and (out[0, 0, :, 2:] == 0).all()


#: the pretrained networks: they declare ``stages=`` (the paper config's stride-8 networks
#: among them, 64 phases each) and need weights that an environment may lack
PRETRAINED = ["resnet18", "mobilenet_v2", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["pointwise", "vgg_random", "isotropic", "rotation_pooled", "d4_pooled", "scale_channels",
     *PRETRAINED],
)
def test_builtins_pass_their_check(name: str) -> None:
    """Every built-in network keeps its declarations (5–25 s each on 2 cores); for the
    pretrained ones the check also runs the chain stage by stage and fails it where it
    differs from plain shift-and-stitch."""
    try:
        report = check_network(name, plugin_dirs=[REPO_PLUGINS])
    except (FileNotFoundError, ImportError) as exc:
        if name not in PRETRAINED:
            raise
        pytest.skip(f"{name} needs something missing here: {type(exc).__name__}: {exc}")
    assert report.passed, report.format()
    if name in PRETRAINED:
        assert any(n.startswith("stages: dense maps stage by stage") for n in report.notes)
