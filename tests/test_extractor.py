"""Tests of featalign.extractor: a network built and wrapped to return its declared layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import extractor_of, write_plugin

from featalign.extractor import build_extractor, graph_nodes
from featalign.plugins import PluginError, get_network
from featalign.pretrained import resnet18

TESTS_PLUGINS = Path(__file__).parent / "plugins"

pytestmark = pytest.mark.usefixtures("isolated_registry")


class TestBuildExtractor:
    def test_dict_module(self) -> None:
        ex = build_extractor(get_network("tiny", [TESTS_PLUGINS]), {"width": 3})
        out = ex(torch.rand(2, 1, 16, 16))
        assert list(out) == ["conv", "pool"]
        assert out["conv"].shape == (2, 3, 16, 16) and out["pool"].shape == (2, 3, 8, 8)
        assert not ex.training and not any(p.requires_grad for p in ex.parameters())
        assert ex.nodes is None

    def test_wraps_by_node_names(self) -> None:
        """tiny_nodes is tiny's net as nn.Sequential: the node outputs equal tiny's layers."""
        x = torch.rand(2, 1, 16, 16)
        native = build_extractor(get_network("tiny", [TESTS_PLUGINS]))(x)
        ex = build_extractor(get_network("tiny_nodes", [TESTS_PLUGINS]))
        wrapped = ex(x)
        assert ex.nodes == {"conv": "1", "pool": "2"}
        assert list(wrapped) == ["conv", "pool"]
        for layer in ("conv", "pool"):
            torch.testing.assert_close(wrapped[layer], native[layer])

    def test_torchvision_model(self, tmp_path: Path) -> None:
        write_plugin(
            tmp_path,
            "tv.py",
            "tv_resnet",
            layers="['early', 'layer2']",
            in_channels="3",
            nodes="{'early': 'layer1'}",
            body="import torchvision\nreturn torchvision.models.resnet18(weights=None)",
        )
        out = build_extractor(get_network("tv_resnet", [tmp_path]))(torch.rand(1, 3, 64, 64))
        assert list(out) == ["early", "layer2"]
        assert out["early"].shape == (1, 64, 16, 16) and out["layer2"].shape == (1, 128, 8, 8)

    def test_missing_node(self, tmp_path: Path) -> None:
        write_plugin(
            tmp_path,
            "tv.py",
            "tv_bad",
            layers="['deep']",
            in_channels="3",
            nodes="{'deep': 'layer9'}",
            body="import torchvision\nreturn torchvision.models.resnet18(weights=None)",
        )
        with pytest.raises(
            PluginError,
            match=r"tv\.py: layer 'deep' .*graph node 'layer9'.*featalign plugins nodes tv_bad",
        ):
            build_extractor(get_network("tv_bad", [tmp_path]))

    def test_not_a_module(self, tmp_path: Path) -> None:
        write_plugin(tmp_path, "a.py", "not_module", body="return 42")
        with pytest.raises(
            PluginError, match=r"a\.py: build\(\) .*returned int, not a torch.nn.Module"
        ):
            build_extractor(get_network("not_module", [tmp_path]))

    def test_missing_layer_at_forward(self, tmp_path: Path) -> None:
        body = (
            "class M(torch.nn.Module):\n"
            "    def forward(self, x):\n"
            "        return {'other': x}\n"
            "return M()"
        )
        write_plugin(tmp_path, "a.py", "missing_layer", body=body)
        ex = build_extractor(get_network("missing_layer", [tmp_path]))
        with pytest.raises(
            PluginError,
            match=r"a\.py: layer 'conv' .*missing from the module's output \(it has other\)",
        ):
            ex(torch.rand(1, 1, 8, 8))

    def test_wrong_input_channels(self) -> None:
        ex = build_extractor(get_network("tiny", [TESTS_PLUGINS]))
        with pytest.raises(ValueError, match=r"\(N, 1, H, W\), got \(1, 3, 8, 8\)"):
            ex(torch.rand(1, 3, 8, 8))


class TestGraphNodes:
    def test_eval_graph_and_mode_restored(self) -> None:
        model = resnet18().train()
        nodes = graph_nodes(model)
        assert "layer1.1.relu_1" in nodes and "relu" in nodes
        assert model.training  # traced in eval mode, left as it was


class TestModuleNodes:
    """Modules that do not return a dict, extracted by graph node or submodule name."""

    def test_smoke(self) -> None:
        net = extractor_of(resnet18(), {"stem": "relu", "layer1": "layer1"})
        out = net(torch.rand(1, 3, 64, 64))
        assert list(out) == ["stem", "layer1"]
        assert out["stem"].shape == (1, 64, 32, 32) and out["layer1"].shape == (1, 64, 16, 16)

    @pytest.mark.parametrize("batch", [1, 3])
    @pytest.mark.parametrize("size", [32, 64])
    def test_cardinality(self, batch: int, size: int) -> None:
        net = extractor_of(resnet18(), {"relu": "relu", "layer1": "layer1", "layer2": "layer2"})
        with torch.no_grad():
            out = net(torch.rand(batch, 3, size, size))
        for label, (channels, stride) in {"relu": (64, 2), "layer1": (64, 4),
                                          "layer2": (128, 8)}.items():  # fmt: skip
            assert out[label].shape == (batch, channels, size // stride, size // stride)

    def test_matches_model(self) -> None:
        model = resnet18(seed=3)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            expected = model.eval().layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
            torch.testing.assert_close(extractor_of(model, {"l": "layer1"})(x)["l"], expected)

    def test_exception_unknown_node(self) -> None:
        with pytest.raises(
            PluginError, match=r"layer 'x' .*graph node 'layer9'.*featalign plugins nodes"
        ):
            extractor_of(resnet18(), {"x": "layer9"})
