"""Forward passes of the recognize stage within a memory bound.

The recognize stage runs each sample with its T transformed and realigned images
through the classifier's body and warps the maps of every layer. At config/paper.yaml's
scale (55 transforms at 128 px) whole batches of samples do not fit 2 GiB, so a pass
takes as many samples, or of one sample's transforms, as :data:`PASS_BYTES` holds, and
reads the dataset's images a slice at a time (:func:`on_disk`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import xarray as xr

from featalign.io import read_finite

__all__ = ["PASS_BYTES", "Views", "in_memory", "on_disk", "pass_shape"]

#: Bytes of feature maps one forward pass of the recognize stage may hold (its images'
#: maps at every layer, and a layer's warped copies): a batch takes as many samples, or
#: for one sample as many of its transforms, as fit. At config/paper.yaml's scale (55
#: transforms at 128 px) a batch of the configured 8 samples held 448 images' maps, and
#: the job peaked at 6 GB; the batch size then still bounds it from above.
PASS_BYTES = 256 * 2**20

#: (sample slice, transform slice) -> the transformed and realigned images (b, t, C, n, n).
Views = Callable[[slice, slice], tuple[torch.Tensor, torch.Tensor]]


def in_memory(transformed: torch.Tensor, realigned: torch.Tensor) -> Views:
    """:data:`Views` of images already in memory."""
    return lambda sl, tc: (transformed[sl, tc], realigned[sl, tc])


def on_disk(dataset: xr.Dataset) -> Views:
    """:data:`Views` read from a dataset file slice by slice (``open_dataset(lazy=True)``)."""

    def read(sl: slice, tc: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(  # type: ignore[return-value]
            torch.from_numpy(read_finite(dataset, name, sample=sl, transform=tc))
            for name in ("transformed", "realigned")
        )

    return read


def pass_shape(per_image: int, transforms: int, batch_size: int, budget: int) -> tuple[int, int]:
    """Samples and transforms per forward pass within ``budget`` bytes of maps.

    Args:
        per_image: bytes of maps one image needs (:func:`_decide`'s estimate).
        transforms: T; a sample brings itself and its T transformed images.
        batch_size: the most samples per pass (``recognition.batch_size``).
        budget: bytes of maps a pass may hold (the caller passes :data:`PASS_BYTES`, read
            when it is called, so that it can be changed at run time).

    Returns:
        (samples, transforms): all T with as many samples as fit (at least one and at
        most ``batch_size``); where one sample's T + 1 images do not fit, one sample
        with as many transforms as do (at least one).
    """
    images = max(2, budget // max(1, per_image))
    if images >= transforms + 1:
        return max(1, min(batch_size, images // (transforms + 1))), transforms
    return 1, max(1, images - 1)
