"""Reading and writing featalign's files: atomic netCDF writes and provenance attributes.

Every file the workflow writes carries attributes that make it traceable
(:func:`make_attrs`) and is written atomically (:func:`atomic_path`): to a
temporary file in the target folder, flushed to disk, then renamed over the
target, so that a crash leaves the old file or none, never a truncated one.

Snakemake deletes a job's output before it reruns the job, so a rerun that fails
would cost the last complete file. The workflow's jobs therefore give every result
file they complete a second name under :data:`PREVIOUS_DIR`
(:func:`keep_as_previous`, a hard link: no extra disk while the file is current),
which holds the last complete file until a rerun completes and replaces it
(README, "Troubleshooting").

Large files are written incrementally (:func:`incremental_netcdf`): xarray writes the
coordinates, attributes and small variables, then the large variables are created with
the same encoding and filled slice by slice, so that a job holds one chunk of them in
memory, not the whole array. Such files are read the same way
(``open_dataset(..., lazy=True)`` and :func:`read_finite`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from featalign import __version__

__all__ = [
    "RUN_ATTRS",
    "TIME_ATTRS",
    "PREVIOUS_DIR",
    "FileError",
    "Pending",
    "atomic_path",
    "config_digest",
    "file_sha256",
    "keep_as_previous",
    "make_attrs",
    "open_dataset",
    "incremental_netcdf",
    "previous_path",
    "read_finite",
    "write_netcdf",
]

log = logging.getLogger(__name__)

#: Time attributes every featalign file has; they change from run to run.
TIME_ATTRS = ("created_at", "history")

#: Everything that differs between two runs of the same job: :data:`TIME_ATTRS` and,
#: in features and alignment files, ``compute_seconds`` (the wall time of the file's
#: computation inside its job: building, probing and running the network, or the
#: optimisers; without the job's start-up, so that a job's cost splits into a fixed and a
#: growing part). Tests drop these before comparing files.
RUN_ATTRS = (*TIME_ATTRS, "compute_seconds")

#: zlib level for every variable written (feature maps compress well).
COMPRESSION = {"zlib": True, "complevel": 4, "fletcher32": True}

#: HDF5 chunk cache per variable (bytes) of the files opened lazily (:func:`open_dataset`).
LAZY_CHUNK_CACHE = 4 << 20

#: Kinds of file whose float data are finite by construction (checked when opened).
ALWAYS_FINITE = ("dataset", "features")


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


#: Free bytes below which a failed write is blamed on a full disk (netCDF/HDF5 report
#: ENOSPC only as "NetCDF: HDF error").
FULL_DISK_BYTES = 1 << 20


def _temp_prefix(path: Path) -> str:
    """Prefix of the temporary files of ``path``: hidden, naming this host and process."""
    return f".{path.name}.{socket.gethostname()}-{os.getpid()}."


def _remove_dead_temps(path: Path) -> None:
    """Remove temporary files of ``path`` left by writers on this host that were killed.

    A writer killed with SIGKILL (or by a power cut) cannot remove its temporary
    file. Only files named by :func:`_temp_prefix` for this host whose process no
    longer exists are removed, so a live writer (here or on another node of a
    shared file system) is never disturbed.
    """
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.{re.escape(socket.gethostname())}-(\d+)\.[^.]*\.tmp$"
    )
    for cand in path.parent.glob(f".{path.name}.*.tmp"):
        m = pattern.match(cand.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                cand.unlink()
        except OSError:  # alive, owned by another user
            pass


def _disk_full(folder: Path, exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_DISK_BYTES


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    Temporary files are hidden and end in ``.tmp`` (no output pattern matches
    them); those of writers on this host that were killed are removed by the next
    write of the same file.

    Raises:
        FileError: the write failed because the disk is full (the message names
            the file, the free space and what to do); other errors propagate.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
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
    except (OSError, RuntimeError) as exc:
        if not _disk_full(path.parent, exc):
            raise
        free = shutil.disk_usage(path.parent).free
        raise FileError(
            f"cannot write {path}: no space left on device ({free} bytes free in "
            f"{path.parent}; {type(exc).__name__}: {exc}); free some space or point the "
            "working directory (snakemake --directory) to a larger disk, then rerun the "
            "same command"
        ) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: Where the workflow keeps the last complete version of each result file, under its
#: path relative to the working directory: ``.featalign/previous/results/...``.
PREVIOUS_DIR = Path(".featalign") / "previous"


def previous_path(path: str | os.PathLike) -> Path | None:
    """Where :func:`keep_as_previous` keeps ``path``; None for a path outside the working
    directory.

    Example:
        >>> str(previous_path("results/datasets/digits.nc"))
        '.featalign/previous/results/datasets/digits.nc'
    """
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(Path.cwd().resolve())
        except (ValueError, OSError):
            return None
    if not path.parts or ".." in path.parts:
        return None
    return PREVIOUS_DIR / path


def keep_as_previous(path: str | os.PathLike) -> Path | None:
    """Give the complete result file ``path`` a second name under :data:`PREVIOUS_DIR`.

    A hard link, replaced atomically: while ``path`` is current it costs no disk. When
    Snakemake deletes ``path`` to rerun its job, the second name keeps the file; if
    the rerun fails, ``ln -f .featalign/previous/P P`` brings it back (README,
    "Troubleshooting"); if it succeeds, the next call moves the name to the new file
    and the old one is freed. Best effort: where hard links are not possible (another
    file system, no support) nothing is kept and the reason is logged.

    Returns:
        The second name, or None when nothing was kept.
    """
    path = Path(path)
    keep = previous_path(path)
    if keep is None:
        return None
    tmp = keep.with_name(f"{_temp_prefix(keep)}link.tmp")
    try:
        keep.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(path, tmp)
        os.replace(tmp, keep)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.info("%s: no previous version kept (%s)", path, exc.strerror or exc)
        return None
    return keep


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "fiu" and var.ndim > 0:
            enc[str(name)] = dict(COMPRESSION)
        elif var.ndim > 0 and (
            var.dtype.kind in "US"
            or (var.dtype.kind == "O" and all(isinstance(v, str) for v in var.values.flat))
        ):
            # text as compressed characters, not variable-length strings: a damaged byte then
            # fails zlib's checksum (FileError) instead of silently renaming a coordinate
            enc[str(name)] = {"dtype": "S1", **COMPRESSION}
    return enc


def _to_netcdf(obj: xr.Dataset | xr.DataTree, tmp: Path) -> None:
    """Write ``obj`` to ``tmp`` with featalign's encoding (:data:`COMPRESSION`, text as chars)."""
    if isinstance(obj, xr.DataTree):
        enc = {node.path: _encoding(node.to_dataset(inherit=False)) for node in obj.subtree}
        for node in obj.subtree:
            _check_attrs(node.attrs, f"group {node.path}")
        obj.to_netcdf(tmp, engine="netcdf4", encoding=enc)
    else:
        _check_attrs(obj.attrs)
        obj.to_netcdf(tmp, engine="netcdf4", encoding=_encoding(obj))


def write_netcdf(
    obj: xr.Dataset | xr.DataTree, path: str | os.PathLike, *, keep_previous: bool = False
) -> Path:
    """Write a Dataset or DataTree to netCDF4, compressed, atomically.

    Float64 data variables of more than one dimension are stored as float32
    only if they already are float32: the caller decides precision.

    Args:
        obj: what to write.
        path: the file.
        keep_previous: then also :func:`keep_as_previous` (the workflow's jobs do).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        _to_netcdf(obj, tmp)
    if keep_previous:
        keep_as_previous(path)
    return path


@dataclass(frozen=True)
class Pending:
    """A data variable that :func:`incremental_netcdf` creates empty, to be filled in slices.

    Attributes:
        dims: its dimensions (all present in its group, as coordinates).
        attrs: its attributes (``long_name``, ``units`` …).
        dtype: its numpy dtype (float32 for images and feature maps).
        chunks: the HDF5 chunk shape; a job that writes whole chunks never rereads
            or recompresses one (the features and dataset stages write one chunk
            per image: every leading dimension 1). The variable's chunk cache is then
            one chunk: a chunk written whole goes to disk instead of HDF5's default
            cache of 64 MiB per variable, which would hold written chunks in memory.
    """

    dims: tuple[str, ...]
    attrs: Mapping[str, Any]
    dtype: str = "float32"
    chunks: tuple[int, ...] | None = None


def _coordinates_attr(ds: xr.Dataset, dims: tuple[str, ...]) -> str:
    """The ``coordinates`` attribute xarray writes for a data variable of ``dims``:
    the non-dimension coordinates whose dimensions it has, sorted."""
    names = (str(k) for k, c in ds.coords.items() if k not in ds.dims and set(c.dims) <= set(dims))
    return " ".join(sorted(names))


@contextlib.contextmanager
def incremental_netcdf(
    obj: xr.Dataset | xr.DataTree,
    path: str | os.PathLike,
    pending: Mapping[str, Mapping[str, Pending]],
    *,
    keep_previous: bool = False,
) -> Iterator[Any]:
    """Write ``obj`` atomically, adding the empty variables ``pending`` for the caller to fill.

    The file is that of :func:`write_netcdf` for ``obj`` with the pending variables
    in it: the same encoding (:data:`COMPRESSION`, float fill value NaN), the
    attributes given and the ``coordinates`` attribute xarray would write, so every
    reader sees the same variables; they come after ``obj``'s own in the file. The
    caller fills them through the open ``netCDF4.Dataset`` yielded, e.g.
    ``nc["/block1"]["transformed"][s, t0:t1] = maps``; a slice never written reads
    as NaN (which :func:`open_dataset` and :func:`read_finite` refuse). The file
    appears at ``path`` (renamed, :func:`atomic_path`) only when the block ends
    without an exception.

    Args:
        obj: coordinates, attributes and small variables (a DataTree: one entry of
            ``pending`` per group path, ``"/"`` for the root).
        path: the file.
        pending: group path -> variable name -> :class:`Pending`.
        keep_previous: then also :func:`keep_as_previous`.

    Yields:
        The open ``netCDF4.Dataset``; its global attributes may still be set
        (``compute_seconds`` once known).
    """
    import netCDF4

    path = Path(path)
    with atomic_path(path) as tmp:
        _to_netcdf(obj, tmp)
        with netCDF4.Dataset(tmp, "a") as nc:
            for group, variables in pending.items():
                if isinstance(obj, xr.DataTree):
                    ds = obj[group].to_dataset(inherit=False)
                else:
                    ds = obj
                g = nc if group in ("", "/") else nc[group.strip("/")]
                _check_attrs(ds.attrs, f"group {group}")
                covered: set[str] = set()
                for name in ds.data_vars:
                    covered.update(_coordinates_attr(ds, ds[name].dims).split())
                for name, var in variables.items():
                    dtype = np.dtype(var.dtype)
                    v = g.createVariable(
                        name, dtype, var.dims, chunksizes=var.chunks,
                        fill_value=dtype.type(np.nan) if dtype.kind == "f" else None,
                        **COMPRESSION,
                    )
                    attrs = dict(_check_attrs(var.attrs, f"variable {name}"))
                    coords = _coordinates_attr(ds, var.dims)
                    if coords:
                        attrs["coordinates"] = coords
                        covered.update(coords.split())
                    v.setncatts(attrs)
                    if var.chunks:  # HDF5 would keep up to 64 MiB of written chunks per variable
                        v.set_var_chunk_cache(size=int(np.prod(var.chunks)) * dtype.itemsize)
                # xarray names the coordinates that no variable lists in a global attribute
                rest = " ".join(sorted(
                    str(k) for k in ds.coords if k not in ds.dims and k not in covered
                ))
                if rest:
                    g.setncattr("coordinates", rest)
                elif "coordinates" in g.ncattrs():
                    g.delncattr("coordinates")
            yield nc
    if keep_previous:
        keep_as_previous(path)


def _finite(values: np.ndarray, rows: int = 64) -> bool:
    """Whether every value is finite, checked ``rows`` leading rows at a time (no
    full-size boolean temporary)."""
    if values.ndim == 0:
        return bool(np.isfinite(values))
    return all(bool(np.isfinite(values[i : i + rows]).all()) for i in range(0, len(values), rows))


def _damaged(kind: str, path: Path, name: str, rebuild: str) -> FileError:
    return FileError(
        f"{kind} file {path} cannot be read ({name} has non-finite values, which "
        f"featalign never writes); it is damaged or incomplete: delete it and "
        f"rebuild with: {rebuild}"
    )


def open_dataset(
    path: str | os.PathLike,
    *,
    kind: str,
    rebuild: str,
    variables: tuple[str, ...] = (),
    attrs: tuple[str, ...] = (),
    group: str | None = None,
    lazy: bool = False,
) -> xr.Dataset:
    """Open a featalign netCDF file, refusing anything that is not one.

    Float data of the kinds in :data:`ALWAYS_FINITE` (images, feature maps) must be
    finite: a chunk whose index a damaged byte broke reads back as NaN. Loaded
    (the default), the whole file is read and checked here. ``lazy``, nothing but
    coordinates is read: the caller reads slices with :func:`read_finite`, which
    checks each slice as it comes (the data are read once, a chunk at a time), and
    closes the dataset (``ds.close()``, or ``with open_dataset(...) as ds``).

    Args:
        path: the file.
        kind: what it should be, for messages ("dataset", "features" …).
        rebuild: the command that rebuilds it, for messages.
        variables: data variables that must be present.
        attrs: attributes that must be present (``stride`` of a layer …).
        group: a netCDF group to open (one layer of a features file).
        lazy: leave the data on disk (see above).

    Raises:
        FileError: naming the file, the problem and the command that rebuilds it.
    """
    path = Path(path)
    if not path.exists():
        raise FileError(f"{kind} file {path} does not exist; build it with: {rebuild}")
    if lazy:
        import netCDF4

        # for the variables of files opened from now on: slices are read whole chunks at a
        # time, which gain nothing from HDF5's default cache of 64 MiB per variable
        netCDF4.set_chunk_cache(LAZY_CHUNK_CACHE)
    try:
        ds = xr.open_dataset(path, engine="netcdf4", group=group)
        if not lazy:
            with ds:
                ds = ds.load()
    except Exception as exc:  # netCDF4/HDF5 raise many types for a damaged file
        raise FileError(
            f"{kind} file {path} cannot be read ({type(exc).__name__}: {exc}); "
            f"it is damaged or incomplete: delete it and rebuild with: {rebuild}"
        ) from exc
    try:
        src = str(ds.attrs.get("source", ""))
        if not src.startswith("featalign"):
            raise FileError(
                f"{kind} file {path} was not written by featalign (no 'source' attribute); "
                f"delete it and rebuild with: {rebuild}"
            )
        missing = [v for v in variables if v not in ds] + [a for a in attrs if a not in ds.attrs]
        if missing:
            raise FileError(
                f"{kind} file {path} lacks {', '.join(missing)} (written by {src}?); "
                f"delete it and rebuild with: {rebuild}"
            )
        if kind in ALWAYS_FINITE and not lazy:
            # images and feature maps are finite when written (the stages refuse anything
            # else); a chunk whose index a damaged byte broke reads back as NaN, silently
            for name, var in ds.data_vars.items():
                if var.dtype.kind == "f" and not _finite(var.values):
                    raise _damaged(kind, path, str(name), rebuild)
    except FileError:
        ds.close()
        raise
    ds.encoding["featalign_file"] = (str(path), kind, rebuild)
    return ds


def read_finite(ds: xr.Dataset, name: str, **index: Any) -> np.ndarray:
    """Read a slice of a variable of a file opened by :func:`open_dataset`, checked.

    Args:
        ds: the opened file (lazy or loaded).
        name: the variable.
        index: positional indices by dimension, as ``ds[name].isel(**index)``
            (``sample=3, transform=slice(0, 16)``).

    Returns:
        The slice's values.

    Raises:
        FileError: float data of a kind in :data:`ALWAYS_FINITE` hold a non-finite
            value (the file is damaged); a file that cannot be read any more.
    """
    path, kind, rebuild = ds.encoding.get("featalign_file", ("?", "", ""))
    try:
        values = ds[name].isel(index).values
    except Exception as exc:  # netCDF4/HDF5 raise many types for a damaged chunk
        raise FileError(
            f"{kind} file {path} cannot be read ({type(exc).__name__}: {exc}); "
            f"it is damaged or incomplete: delete it and rebuild with: {rebuild}"
        ) from exc
    if kind in ALWAYS_FINITE and values.dtype.kind == "f" and not _finite(values):
        raise _damaged(kind, Path(path), name, rebuild)
    return values
