"""Where computations run: device selection."""

from __future__ import annotations

import logging

import torch

__all__ = ["log_to", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config value.

    Args:
        name: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The device.

    Raises:
        ValueError: for CUDA when no GPU is present, or an unknown name.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device auto -> %s", dev)
        return dev
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} asked for, but no CUDA GPU is visible; write auto or cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {name!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return dev
    raise ValueError(f"device: unknown device {name!r}; write auto, cpu, cuda or cuda:N")


def log_to(path: str) -> None:
    """Send logging and stderr (progress bars, warnings) of a workflow job to its log file."""
    import sys

    stream = open(path, "a", buffering=1)  # noqa: SIM115 -- lives as long as the job
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    sys.stderr = stream
