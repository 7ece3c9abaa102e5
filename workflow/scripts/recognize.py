"""Adapter: dataset + alignment files + classifier plugin -> featalign.recognition.measure ->
results/recognition/{dataset}/{network}.nc."""

import json

import torch

from featalign.datasets import DatasetSpec
from featalign.io import open_dataset, write_netcdf
from featalign.plugins import get_network
from featalign.recognition.measure import build_classifier, recognition_dataset, recognition_digits
from featalign.runtime import log_to, resolve_device

log_to(snakemake.log[0], snakemake.threads)  # noqa: F821
inp, p, w = snakemake.input, snakemake.params, snakemake.wildcards  # noqa: F821
options = dict(p.options)
meta = None
if inp.get("weights"):
    options["weights"] = inp.weights
    meta = torch.load(inp.weights, weights_only=True).get("meta")
# read a slice at a time (recognition_dataset): the transformed and realigned images of
# config/paper.yaml's datasets are 0.7 GB each
dataset = open_dataset(inp.dataset, kind="dataset", rebuild=f"snakemake {inp.dataset}",
                       variables=("image", "transformed", "realigned"), lazy=True)  # fmt: skip
spec = DatasetSpec.from_config(w.dataset, json.loads(dataset.attrs["config"])["dataset"])
samples = p.section["recognition"]["samples"]
digits, heldout = recognition_digits(spec, samples, meta, dataset.description.values)
classifier = build_classifier(get_network(w.network, p.plugin_dirs), options)
grid = ("layer", "stride", "offset_y", "offset_x", "image_height", "image_width", "depth")
alignments = {
    ds.attrs["layer"]: ds
    for ds in (open_dataset(f, kind="alignment", rebuild=f"snakemake {f}",
                            variables=("affine_matrix", "dense_control"), attrs=grid) for f in inp.alignment)
}  # fmt: skip
result = recognition_dataset(
    dataset, alignments, classifier, spec, samples=samples, digits=digits, heldout=heldout,
    batch_size=p.section["recognition"]["batch_size"], device=resolve_device(p.device),
    config=p.section, rule="recognize",
)  # fmt: skip
dataset.close()
write_netcdf(result, snakemake.output[0])  # noqa: F821
