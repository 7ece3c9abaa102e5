"""Devices and batch sizes: adapting to free memory, and recovering from out-of-memory."""

from __future__ import annotations

import pytest
import torch

from featalign.forward import forward_all
from featalign.runtime import (
    BatchSizer,
    is_out_of_memory,
    resolve_device,
    retry_on_out_of_memory,
    working_elements,
)

CPU = torch.device("cpu")


class FakeMemory:
    """A device whose batches take ``per_item`` bytes each, with ``free`` bytes free."""

    def __init__(self, free: int, per_item: int) -> None:
        self.free, self.per_item, self.peak = free, per_item, 0

    def run(self, items: int) -> None:
        self.peak += items * self.per_item


class TestBatchSizer:
    def test_cpu_keeps_the_configured_size(self) -> None:
        s = BatchSizer(CPU, 32, limit=1000)
        with s.measure(32):
            torch.zeros(10)
        assert s.size == 32 and not s.adaptive

    def test_grows_to_the_free_memory(self) -> None:
        mem = FakeMemory(free=10_000, per_item=10)
        s = BatchSizer(CPU, 4, limit=5000, free_bytes=lambda: mem.free, peak_bytes=lambda: mem.peak)
        with s.measure(4):
            mem.run(4)
        assert s.size == int(0.6 * 10_000 / 10)  # a batch takes 60 % of what was free
        with s.measure(s.size):  # measured once: later batches keep the size
            mem.run(s.size)
        assert s.size == 600

    def test_shrinks_to_the_free_memory_and_stays_within_the_limit(self) -> None:
        mem = FakeMemory(free=1000, per_item=100)
        s = BatchSizer(CPU, 32, limit=50, free_bytes=lambda: mem.free, peak_bytes=lambda: mem.peak)
        with s.measure(32):
            mem.run(32)
        assert s.size == 6
        big = FakeMemory(free=10**12, per_item=1)
        s = BatchSizer(CPU, 8, limit=50, free_bytes=lambda: big.free, peak_bytes=lambda: big.peak)
        with s.measure(8):
            big.run(8)
        assert s.size == 50

    def test_initial_size_is_capped_by_the_limit(self) -> None:
        assert BatchSizer(CPU, 32, limit=5).size == 5

    def test_shrink_halves_and_gives_up_at_one(self) -> None:
        s = BatchSizer(CPU, 8, limit=100)
        err = torch.cuda.OutOfMemoryError("CUDA out of memory")
        for expected in (4, 2, 1):
            s.shrink(err)
            assert s.size == expected
        with pytest.raises(torch.cuda.OutOfMemoryError):
            s.shrink(err)

    def test_bad_size(self) -> None:
        with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
            BatchSizer(CPU, 0, limit=10)


class TestOutOfMemory:
    @pytest.mark.parametrize(
        "exc, expected",
        [
            (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), True),
            (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"), True),
            (RuntimeError("shape mismatch"), False),
            (ValueError("out of memory"), False),
        ],
    )
    def test_recognised(self, exc: BaseException, expected: bool) -> None:
        assert is_out_of_memory(exc) is expected

    def test_retry_halves_until_it_fits(self) -> None:
        tried: list[int] = []

        def fn(elements: int) -> int:
            tried.append(elements)
            if elements > 2**20:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return elements

        assert retry_on_out_of_memory(fn, 2**23, what="test") == 2**20
        assert tried == [2**23, 2**22, 2**21, 2**20]

    def test_other_errors_pass_through(self) -> None:
        def fn(elements: int) -> None:
            raise RuntimeError("shape mismatch")

        with pytest.raises(RuntimeError, match="shape mismatch"):
            retry_on_out_of_memory(fn, 2**23, what="test")

    def test_gives_up_when_even_small_chunks_fail(self) -> None:
        def fn(elements: int) -> None:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

        with pytest.raises(torch.cuda.OutOfMemoryError):
            retry_on_out_of_memory(fn, 2**20, what="test")

    def test_cpu_chunks_are_the_configured_ones(self) -> None:
        assert working_elements(CPU, 12345) == 12345


class TestForwardAllRecovers:
    def test_out_of_memory_mid_run_gives_the_same_features(self) -> None:
        """A batch that runs out of memory is retried smaller; no image is lost or doubled."""
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        class Flaky(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                if x.shape[0] > 3:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
                return {"conv": conv(x)}

        images = torch.rand(11, 1, 8, 8)
        crops = {"conv": (0, 8, 8)}
        kwargs = {"pad": 0, "device": CPU, "progress": False, "label": "t"}
        got = forward_all(Flaky(), images, crops, batch_size=8, **kwargs)["conv"]
        with torch.inference_mode():
            want = conv(images).numpy()
        assert got.shape == want.shape
        assert abs(got - want).max() < 1e-6


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


# A fresh process: the allocator's settings are per process and cannot be undone.
FAULTS_SCRIPT = """
import resource, sys
import torch
from featalign.runtime import reuse_freed_memory

def faults_per_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(5 * 2**20, dtype=torch.float64).sum()  # a 40 MiB temporary, freed
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

default = faults_per_block()
took = reuse_freed_memory()
faults_per_block()  # the heap grows once
print(default, took, faults_per_block())
"""


def _faults(env: dict[str, str] | None = None) -> tuple[float, str, float]:
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), out[1], float(out[2])


@pytest.mark.skipif(
    __import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator settings"
)
class TestReuseFreedMemory:
    def test_freed_blocks_are_reused_instead_of_faulted_in_again(self) -> None:
        default, took, reused = _faults()
        pages = 40 * 2**20 / 4096
        assert took == "True"
        # glibc's default maps a 40 MiB block (above its 32 MiB) afresh every time: a fault per page
        assert default > 0.9 * pages
        # once reused, the pages are there already
        assert reused < 0.01 * pages

    def test_a_users_own_setting_is_left_alone(self) -> None:
        _, took, _ = _faults({"MALLOC_MMAP_THRESHOLD_": str(2**20)})
        assert took == "False"
