"""Reading and writing featalign's files: atomic netCDF writes and provenance attributes.

Every file the workflow writes carries attributes that make it traceable
(:func:`make_attrs`) and is written atomically (:func:`atomic_path`): to a
temporary file in the target folder, flushed to disk, then renamed over the
target, so that a crash leaves the old file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from featalign import __version__

__all__ = [
    "TIME_ATTRS",
    "FileError",
    "atomic_path",
    "config_digest",
    "file_sha256",
    "make_attrs",
    "open_dataset",
    "write_netcdf",
]

#: Attributes that change from run to run; tests drop them before comparing files.
TIME_ATTRS = ("created_at", "history")

#: zlib level for every variable written (feature maps compress well).
COMPRESSION = {"zlib": True, "complevel": 4}


class FileError(Exception):
    """A result file is missing, unreadable, or not what featalign expects."""


def config_digest(section: Any) -> str:
    """sha256 of a config section, canonical JSON (sorted keys)."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def make_attrs(
    title: str,
    *,
    config: Any = None,
    seed: int | None = None,
    rule: str = "",
    **extra: str | int | float,
) -> dict[str, str | int | float]:
    """Global attributes of a featalign file (provenance).

    Args:
        title: what the file holds.
        config: the config section that determines the file's content; stored
            as canonical JSON and its sha256.
        seed: the random seed used, if any.
        rule: the Snakemake rule that wrote it, if any.
        extra: more attributes (network, weights, layer_node, plugin_sha256 …).

    Returns:
        A dict of string/number attributes, safe for netCDF.

    Example:
        >>> a = make_attrs("test", config={"a": 1}, seed=0)
        >>> a["source"].startswith("featalign"), len(a["config_sha256"])
        (True, 64)
    """
    import torch

    attrs: dict[str, str | int | float] = {
        "title": title,
        "source": f"featalign {__version__}",
        "featalign_version": __version__,
        "torch_version": torch.__version__,
        "git_commit": _git_commit(),
        "snakemake_rule": rule,
        "config": json.dumps(config, sort_keys=True, default=str),
        "config_sha256": config_digest(config),
        "seed": -1 if seed is None else int(seed),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "history": f"created by featalign {__version__}",
    }
    attrs.update(extra)
    return _check_attrs(attrs)


def _check_attrs(attrs: Mapping[str, Any], where: str = "file") -> dict[str, Any]:
    """Refuse attribute values that netCDF cannot store (xarray would only fail at write time)."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, bool):
            v = int(v)
        if v is None:
            raise ValueError(f"attribute {k!r} of {where} is None: store a string or a number")
        if not isinstance(v, (str, int, float, np.integer, np.floating, np.ndarray, list, tuple)):
            raise ValueError(
                f"attribute {k!r} of {where} has type {type(v).__name__}: "
                "store a string, a number or an array (nested config as JSON)"
            )
        out[k] = v
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "fiu" and var.ndim > 0:
            enc[str(name)] = dict(COMPRESSION)
    return enc


def write_netcdf(obj: xr.Dataset | xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a Dataset or DataTree to netCDF4, compressed, atomically.

    Float64 data variables of more than one dimension are stored as float32
    only if they already are float32: the caller decides precision.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(obj, xr.DataTree):
            enc = {node.path: _encoding(node.to_dataset(inherit=False)) for node in obj.subtree}
            for node in obj.subtree:
                _check_attrs(node.attrs, f"group {node.path}")
            obj.to_netcdf(tmp, engine="netcdf4", encoding=enc)
        else:
            _check_attrs(obj.attrs)
            obj.to_netcdf(tmp, engine="netcdf4", encoding=_encoding(obj))
    return path


def open_dataset(
    path: str | os.PathLike,
    *,
    kind: str,
    rebuild: str,
    variables: tuple[str, ...] = (),
    group: str | None = None,
) -> xr.Dataset:
    """Open a featalign netCDF file (fully loaded), refusing anything that is not one.

    Args:
        path: the file.
        kind: what it should be, for messages ("dataset", "features" …).
        rebuild: the command that rebuilds it, for messages.
        variables: data variables that must be present.
        group: a netCDF group to open (one layer of a features file).

    Raises:
        FileError: naming the file, the problem and the command that rebuilds it.
    """
    path = Path(path)
    if not path.exists():
        raise FileError(f"{kind} file {path} does not exist; build it with: {rebuild}")
    try:
        with xr.open_dataset(path, engine="netcdf4", group=group) as ds:
            ds = ds.load()
    except Exception as exc:  # netCDF4/HDF5 raise many types for a damaged file
        raise FileError(
            f"{kind} file {path} cannot be read ({type(exc).__name__}: {exc}); "
            f"it is damaged or incomplete: delete it and rebuild with: {rebuild}"
        ) from exc
    src = str(ds.attrs.get("source", ""))
    if not src.startswith("featalign"):
        raise FileError(
            f"{kind} file {path} was not written by featalign (no 'source' attribute); "
            f"rebuild it with: {rebuild}"
        )
    missing = [v for v in variables if v not in ds]
    if missing:
        raise FileError(
            f"{kind} file {path} lacks {', '.join(missing)} (written by {src}?); "
            f"delete it and rebuild with: {rebuild}"
        )
    return ds
