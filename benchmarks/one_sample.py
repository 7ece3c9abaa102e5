"""Peak memory and time of one paper-sized sample's features and align work.

A paper-sized job holds one chunk at a time, so its peak is about that of one sample's
work. This script measures it without running the whole job (hours for a stride-8
network): ``write_features`` on one sample of a dataset file (1 original + 2 × T
images, at the network's chunk size), then ``alignment_dataset`` on one layer of the
features file it wrote (one sample is the align job's chunk of a paper-sized layer).
Each step runs in its own process, on one thread like the workflow's jobs, and prints
its wall time and peak RSS (``ru_maxrss``). The README's resnet18 rows of "Running on a
GPU or a cluster" came from it::

    snakemake results/datasets/photos.nc --cores 1 --configfile config/paper.yaml
    .venv/bin/python benchmarks/one_sample.py results/datasets/photos.nc resnet18 layer2 \\
        --out /tmp/one_sample          # add --chunk 29 to set the images per chunk

Not part of ``benchmarks/run.py``: it needs a paper-sized dataset file, and it reports
numbers rather than goals.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without an editable install
    sys.path.insert(0, str(ROOT / "src"))

#: The paper config's alignment options and region that matter here.
PAPER_ALIGNMENT = {"starts_per_family": 4}
PAPER_REGION = 0.5


def _features(dataset: str, network: str, out: str, chunk: int | None) -> dict:
    import torch

    from featalign.features import CHUNK, write_features
    from featalign.io import open_dataset
    from featalign.plugins import get_network

    torch.set_num_threads(1)
    with open_dataset(dataset, kind="dataset", rebuild=f"snakemake {dataset}",
                      variables=("image", "transformed", "realigned"), lazy=True) as ds:
        one = ds.isel(sample=slice(0, 1))
        t0 = time.perf_counter()
        write_features(one, get_network(network, [str(ROOT / "plugins")]), out, {},
                       device=torch.device("cpu"), batch_size=8, max_pad=96, dense=True,
                       chunk=chunk or CHUNK, timeout=0, config={}, rule="one_sample",
                       keep_previous=False)
    return {"seconds": time.perf_counter() - t0}


def _align(features: str, layer: str) -> dict:
    import torch

    from featalign.align.files import alignment_dataset

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    alignment_dataset(features, layer, region_fraction=PAPER_REGION, options=PAPER_ALIGNMENT,
                      seed=0, device="cpu", progress=False)
    return {"seconds": time.perf_counter() - t0}


def _step(argv: list[str]) -> None:
    """One step in this process: print its JSON line (seconds, peak MiB)."""
    kind, *args = argv
    if kind == "features":
        result = _features(args[0], args[1], args[2], int(args[3]) or None)
    else:
        result = _align(args[0], args[1])
    result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--step", *args], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        _step(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a dataset file, e.g. results/datasets/photos.nc")
    parser.add_argument("network")
    parser.add_argument("layer", help="the layer to align")
    parser.add_argument("--chunk", type=int, default=0, help="images per chunk (default: CHUNK)")
    parser.add_argument("--out", default="one_sample", help="folder of the features file")
    a = parser.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    features = str(Path(a.out) / f"{a.network}.nc")
    f = _run("features", a.dataset, a.network, features, str(a.chunk))
    print(f"features {a.network}, one sample: {f['seconds']:.0f} s, peak {f['peak_mib']:.0f} MiB")
    al = _run("align", features, a.layer)
    print(f"align {a.network} {a.layer}, one sample: {al['seconds']:.0f} s, "
          f"peak {al['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
