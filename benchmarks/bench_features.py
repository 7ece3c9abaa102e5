"""Benchmark 4: feature extraction, images/s at the configured batch size against a batch-1 loop.

The batch size is the config schema's default ``features.batch_size`` (what a run uses
unless its config says otherwise).

The built-in network ``vgg_random`` (``featalign.plugins.get_network`` +
``featalign.extractor.build_extractor``, all three layers returned, as the feature stage
runs it) on smooth random RGB textures of 64×64 pixels, zero-padded by 8 px as the
feature stage pads the canvas, under ``torch.inference_mode``. The batched pass and the
batch-1 loop over the same images are timed in interleaved pairs, 5 of them; each pair
gives one speed-up, and the goal is met only when their whole range meets it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import yaml
from common import ROOT, Goal, paired_ratio, run_standalone, set_threads, smooth_fields, write_json

from featalign.extractor import build_extractor
from featalign.plugins import get_network

NAME = "features"
#: The goal of the batched throughput over the batch-1 loop.
TARGET = 1.5


def configured_batch_size() -> int:
    """The schema's default ``features.batch_size``."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return int(schema["properties"]["features"]["properties"]["batch_size"]["default"])


def main(quick: bool = False, tiny: bool = False) -> list[Goal]:
    """Run benchmark 4, write ``results/benchmarks/features.json`` and return its goals."""
    set_threads(2)
    count = 32 if tiny else 64 if quick else 256
    repeats = 1 if tiny else 5
    size, pad, batch = 64, 8, configured_batch_size()
    print(f"[features] vgg_random, {count} images 3x{size}x{size}, batch {batch} vs 1", flush=True)
    spec = get_network("vgg_random")
    extractor = build_extractor(spec)
    images = smooth_fields(count, 3, size, 2.0, torch.Generator().manual_seed(0))
    images = F.pad(images, (pad, pad, pad, pad))

    def run(bs: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for lo in range(0, count, bs):
                extractor(images[lo : lo + bs])
        return time.perf_counter() - t0

    run(batch)  # warm-up
    run(1)
    key = f"batch{batch}"
    seconds: dict[str, list[float]] = {key: [], "batch1": []}

    def timed(bs: int, label: str) -> Callable[[], float]:
        def go() -> float:
            seconds[label].append(run(bs))
            return seconds[label][-1]

        return go

    # batch 1 over batch B, paired and interleaved: the speed-up, with its range
    speedup = paired_ratio(timed(1, "batch1"), timed(batch, key), repeats)
    rate = {k: count / min(v) for k, v in seconds.items()}
    print(f"  batch {batch}: {rate[key]:.0f} images/s, batch 1: {rate['batch1']:.0f} images/s")
    payload = {
        "network": "vgg_random",
        "images": count,
        "image_size": size,
        "padding": pad,
        "batch_size": batch,
        "seconds": seconds,
        "images_per_second": rate,
        "speedup_ratios": list(speedup.samples),
    }
    goals = [speedup.goal(f"feature extraction speed-up, batch {batch} vs batch 1", f">= {TARGET:g}x")]
    write_json(NAME, payload, goals, quick or tiny)
    return goals


if __name__ == "__main__":
    run_standalone(main, __doc__)
