"""Where computations run: device selection, and batch sizes that fit the device's memory."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, not here: every job logs through log_to, and the
# figure and summary jobs need no torch (its import is 2-3 s of each job's start-up)

__all__ = [
    "BatchSizer",
    "is_out_of_memory",
    "is_user_error",
    "log_to",
    "one_sentence",
    "resolve_device",
    "reuse_freed_memory",
    "retry_on_out_of_memory",
    "working_elements",
]

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
    import torch

    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device auto -> %s", dev)
        return dev
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device: {name!r} asked for, but no CUDA GPU is visible; write auto or cpu"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {name!r} but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return dev
    raise ValueError(f"device: unknown device {name!r}; write auto, cpu, cuda or cuda:N")


def log_to(path: str, threads: int | None = None) -> None:
    """Send logging and stderr (progress bars, warnings) of a workflow job to its log file.

    ``threads`` (the rule's ``threads``, ``snakemake.threads``) caps torch's CPU threads:
    Snakemake counts a job as that many cores, but a ``script:`` job's torch would take
    every core of the machine, so jobs that Snakemake runs side by side would oversubscribe
    the CPU (and torch's spinning threads burn it). It also lets the C allocator reuse
    freed blocks (:func:`reuse_freed_memory`), which every job's loops over chunks gain from.

    A user error that ends the job (:func:`is_user_error`: a config value, a plugin, a
    damaged input file, a full disk) ends the log with its one-sentence message,
    ``featalign: error: …``, instead of a traceback; any other exception (a bug) keeps
    its traceback. ``FEATALIGN_TRACEBACK=1`` keeps tracebacks of user errors too.
    """
    stream = open(path, "a", buffering=1)  # noqa: SIM115 -- lives as long as the job
    logging.basicConfig(
        stream=stream,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    sys.stderr = stream
    if not os.environ.get("FEATALIGN_TRACEBACK"):
        sys.excepthook = _one_sentence_hook
    if threads is not None:
        n = max(1, int(threads))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(n)
        else:  # read by torch's thread pools when the job imports it (if it does)
            os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    reuse_freed_memory()


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks below this many bytes come from the allocator's heap and are reused once freed
#: (:func:`reuse_freed_memory`); larger ones are still mapped and unmapped one by one. The
#: affine fit's chunks (at most 2**23 elements on the CPU) stay below it; 256 MiB was no
#: faster in the optimizer benchmark. Either raised the peak of the default run's digits
#: recognize job (1314 MB with glibc's default; 1658 MB at 64 MiB, 1597-1760 MB at 256).
HEAP_BLOCK_LIMIT = 64 * 2**20
#: The environment variables and tunables by which a user sets glibc's thresholds: where
#: one is set, :func:`reuse_freed_memory` leaves the allocator as the user set it.
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def reuse_freed_memory(limit: int = HEAP_BLOCK_LIMIT) -> bool:
    """Let the C allocator reuse freed blocks of up to ``limit`` bytes instead of unmapping them.

    PyTorch's CPU tensors come from ``malloc``. glibc maps every block above its mmap
    threshold (at most 32 MiB by default) afresh and unmaps it when freed, so a loop that
    allocates a temporary of tens of MB per iteration (a batch of feature maps, a chunk of
    the affine fit's resampled maps) pays a page fault for every 4 KiB of it, every time.
    Five 3×3 convolutions on (8, 64, 80, 80) took 22156 page faults and 70 ms per call; with
    the thresholds set here, none and 46 ms. The affine fit of the optimizer benchmark (64
    problems, 28 px, 12 starts) took 2.0-2.5 ms per problem with a threshold of 64 MiB or
    more, against 2.7-3.4 ms with glibc's own (2026-12-01, benchmarks/run.py --quick).

    Sets glibc's mmap threshold to ``limit`` and its trim threshold to twice that (so the
    top of the heap is returned to the system only beyond it). Freed blocks are kept to be
    reused, which can raise a job's peak where blocks of many sizes fragment the heap
    (:data:`HEAP_BLOCK_LIMIT`). Results do not change: the arithmetic is the same, only
    where the memory lies (the default run's tables were identical, ``featalign compare``).

    Returns:
        Whether the thresholds were set: not off glibc (macOS, musl), and not where the
        user set them through ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
        ``GLIBC_TUNABLES``.
    """
    import ctypes
    import ctypes.util

    if any(k in os.environ for k in _MALLOC_SETTINGS) or "malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl has a mallopt that does nothing
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, int(limit))) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * int(limit))
    )


#: featalign's exception classes that carry a user's fix: (module, class name). Named, not
#: imported, so that a job's code digest (featalign.provenance) does not cover the config,
#: plugin and dataset code of every job that logs.
USER_ERRORS: frozenset[tuple[str, str]] = frozenset({
    ("featalign.config", "ConfigError"),
    ("featalign.io", "FileError"),
    ("featalign.plugins", "PluginError"),
    ("featalign.features", "FeatureError"),
})


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is featalign's word on something the user fixes: a config value
    (ConfigError), a plugin (PluginError), a dataset or network that do not fit
    (FeatureError), a missing, damaged or unwritable file (FileError).

    Example:
        >>> is_user_error(ValueError("a bug")), is_user_error(KeyError("x"))
        (False, False)
    """
    return any((k.__module__, k.__name__) in USER_ERRORS for k in type(exc).__mro__)


def one_sentence(exc: BaseException) -> str:
    """The message of a user error on one line, as a job's log ends with it.

    Example:
        >>> from featalign.config import ConfigError
        >>> one_sentence(ConfigError("datasets.d.size: too small;\\n raise it"))
        'featalign: error: datasets.d.size: too small; raise it'
    """
    return "featalign: error: " + " ".join(str(exc).split())


def _one_sentence_hook(kind, exc, tb) -> None:  # noqa: ANN001 -- sys.excepthook's signature
    """sys.excepthook of a job: a user error as one sentence, anything else as usual."""
    import sys

    try:
        user = is_user_error(exc)
    except Exception:  # never hide the original error behind one of the hook's own
        user = False
    if user:
        sys.stderr.write(one_sentence(exc) + "\n")
        sys.stderr.flush()
    else:
        sys.__excepthook__(kind, exc, tb)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA or CPU) that a smaller batch avoids."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _cuda_free_bytes(device: torch.device) -> int:
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


class BatchSizer:
    """Items per batch that fit the device: measured on CUDA, as configured on the CPU.

    On the CPU the configured size is kept (memory there is the job's to plan, e.g. by
    Slurm's ``mem_mb``). On CUDA the peak memory of each batch is measured
    (``torch.cuda.max_memory_allocated``); after the first batch the size is set so that
    a batch takes at most ``fraction`` of the memory that was free before it, up to
    ``limit`` items, so a large GPU runs few large batches and a small one more small
    ones. On an out-of-memory error :meth:`shrink` halves the size (the caller retries).

    Args:
        device: where the batches run.
        initial: the configured batch size (the first batch's size).
        limit: the largest useful size (e.g. the number of items).
        fraction: share of the free memory a batch may take.
        free_bytes: free memory of ``device`` (tests pass a fake; default: CUDA's).
        peak_bytes: peak allocated bytes since the last reset (default: CUDA's).

    Example:
        >>> import torch
        >>> s = BatchSizer(torch.device("cpu"), 32, limit=100)
        >>> with s.measure(s.size):
        ...     pass
        >>> s.size
        32
    """

    def __init__(
        self,
        device: torch.device,
        initial: int,
        *,
        limit: int,
        fraction: float = 0.6,
        free_bytes: Callable[[], int] | None = None,
        peak_bytes: Callable[[], int] | None = None,
    ) -> None:
        if initial < 1:
            raise ValueError(f"batch size must be >= 1, got {initial}")
        import torch

        self.device = torch.device(device)
        self.limit = max(1, int(limit))
        self.size = max(1, min(int(initial), self.limit))
        self.fraction = float(fraction)
        cuda = self.device.type == "cuda"
        self.adaptive = cuda or free_bytes is not None
        self._free = free_bytes or ((lambda: _cuda_free_bytes(self.device)) if cuda else None)
        self._peak = peak_bytes or (
            (lambda: int(torch.cuda.max_memory_allocated(self.device))) if cuda else None
        )
        self._measured = False

    @contextlib.contextmanager
    def measure(self, items: int) -> Iterator[None]:
        """Run one batch of ``items`` items; the first one on CUDA sets the size."""
        if not self.adaptive or self._measured:
            yield
            return
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        before = self._peak() if self._peak else 0
        free = self._free() if self._free else 0
        yield
        used = max(1, (self._peak() if self._peak else 0) - before)
        per_item = used / max(1, items)
        fit = int(self.fraction * free / per_item)
        new = max(1, min(self.limit, fit))
        if new != self.size:
            log.info(
                "batch size %d -> %d (%.1f MiB per item, %.0f MiB free on %s)",
                self.size,
                new,
                per_item / 2**20,
                free / 2**20,
                self.device,
            )
        self.size = new
        self._measured = True

    def shrink(self, exc: BaseException) -> None:
        """Halve the size after an out-of-memory error; re-raise it at size 1."""
        if self.size <= 1:
            raise exc
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        log.warning(
            "out of memory at batch size %d on %s: retrying with %d",
            self.size,
            self.device,
            self.size // 2,
        )
        self.size //= 2
        self._measured = True  # a measured size that failed is not measured again


def working_elements(device: torch.device, configured: int, *, bytes_per_element: int = 64) -> int:
    """Elements per chunk of the warp optimiser (``alignment.max_batch_elements``).

    On the CPU the configured bound. On CUDA what fits in half the free memory, at
    ``bytes_per_element`` (float32 maps and samples with their intermediate copies), at
    least 2**20: a large GPU then aligns a whole layer in one chunk, and
    :func:`retry_on_out_of_memory` halves it if the estimate was too bold.

    Example:
        >>> import torch
        >>> working_elements(torch.device("cpu"), 2**25)
        33554432
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return int(configured)
    fit = max(2**20, _cuda_free_bytes(device) // 2 // bytes_per_element)
    log.info("optimiser chunks of %d elements on %s", fit, device)
    return int(fit)


def retry_on_out_of_memory(fn: Callable[[int], object], elements: int, *, what: str):
    """Call ``fn(elements)``, halving ``elements`` after each out-of-memory error.

    Raises:
        The last out-of-memory error when ``elements`` falls below 2**16 (then the
        problem itself does not fit: a smaller ``features.batch_size`` or layer will).
    """
    import torch

    while True:
        try:
            return fn(elements)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc) or elements < 2**17:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning(
                "%s: out of memory with chunks of %d elements; retrying with %d",
                what,
                elements,
                elements // 2,
            )
            elements //= 2
