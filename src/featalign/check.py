"""``featalign plugins check NAME``: validate a network plugin before a run.

The check builds the network, runs a small batch of smooth random images (soft
disk window, so content stays inside the canvas) and reports, per layer: output
shape, measured stride and grid offset, finite outputs, determinism (two builds,
repeated forwards), translation covariance at stride multiples, and the
behaviour under the exact symmetries of the pixel grid (90° rotations, axis
flips, transpose), whether declared or not.

Each check reports a **relative difference**, a norm ratio
``‖Γ(T f) − T Γ(f)‖ / ‖Γ(f) − channel mean‖`` over the compared region (not the
workflow's *relative error* of DESIGN.md "Measures", a ratio of squared norms over
the region R: a relative difference d corresponds to a relative error of about d²).
Exact properties (translation by stride multiples, declared ``rotation90``/``flip``)
must hold to :data:`EXACT_TOL`; a declared ``rotation`` or ``reflection`` family
(without the subgroup) to :data:`APPROX_TOL` on the grid elements. Differences
under undeclared symmetries are reported for information only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from featalign.extractor import build_extractor
from featalign.lattice import GridProbe, probe_grid
from featalign.nets import gaussian_kernel1d
from featalign.plugins import NetworkSpec, PluginError, display_path, get_network

__all__ = [
    "APPROX_TOL",
    "EXACT_TOL",
    "SYMMETRIES",
    "CheckReport",
    "LayerResult",
    "check_network",
    "relative_difference",
    "smooth_images",
]

log = logging.getLogger(__name__)

EXACT_TOL = 1e-5
"""Relative difference allowed for exact properties in float32."""
APPROX_TOL = 0.05
"""Relative difference allowed for a declared approximate family on exact grid elements."""
MAX_CANVAS = 256
"""The largest canvas the check grows to so that translation has an interior."""

_Op = Callable[[torch.Tensor], torch.Tensor]

SYMMETRIES: dict[str, tuple[_Op, str, str]] = {
    "rot90": (lambda t: torch.rot90(t, 1, dims=(-2, -1)), "rotation90", "rotation"),
    "rot180": (lambda t: torch.rot90(t, 2, dims=(-2, -1)), "rotation90", "rotation"),
    "rot270": (lambda t: torch.rot90(t, 3, dims=(-2, -1)), "rotation90", "rotation"),
    "flip_y": (lambda t: torch.flip(t, dims=(-2,)), "flip", "reflection"),
    "flip_x": (lambda t: torch.flip(t, dims=(-1,)), "flip", "reflection"),
    "transpose": (lambda t: t.transpose(-2, -1), "flip", "reflection"),
}
"""Grid symmetries: name -> (op on (..., H, W), exact subgroup, family)."""

_SHIFT_K = (1, -2)  # translation check: shift by stride·(1, -2) pixels in (y, x)


@dataclass
class LayerResult:
    """What the check measured for one layer.

    Attributes:
        layer: the label.
        shape: output shape (N, C, H, W) on the canvas, or None.
        stride: measured stride, or None.
        offset: measured (offset_y, offset_x), or None.
        finite: all outputs finite.
        deterministic: two builds and repeated forwards gave identical outputs.
        shift: the translation tested, (dy, dx) in pixels.
        translation: relative difference of the translation check (None: not measured).
        symmetry: grid symmetry name -> relative difference.
        expect: grid symmetry name -> tolerance when declared, absent if informative.
    """

    layer: str
    shape: tuple[int, ...] | None = None
    stride: int | None = None
    offset: tuple[float, float] | None = None
    finite: bool | None = None
    deterministic: bool | None = None
    shift: tuple[int, int] | None = None
    translation: float | None = None
    symmetry: dict[str, float] = field(default_factory=dict)
    expect: dict[str, float] = field(default_factory=dict)
    centred: bool | None = None


@dataclass
class CheckReport:
    """The result of checking one network.

    Attributes:
        name: the network name.
        source: the plugin file, or None.
        sha256: digest of the plugin file, or "".
        declared: declared invariances.
        options: build options used.
        canvas: image size used (square).
        batch: number of images.
        layers: per-layer results, in declared order.
        failures: one sentence per failure.
        notes: remarks that are not failures.
    """

    name: str
    source: Path | None = None
    sha256: str = ""
    declared: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    canvas: int | None = None
    batch: int = 2
    layers: list[LayerResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when everything holds, 1 otherwise."""
        return 0 if self.passed else 1

    def format(self) -> str:
        """Return the human-readable report (several lines, no trailing newline)."""
        where = display_path(self.source)
        lines = [f"featalign plugins check {self.name}"]
        lines.append(
            f"  file      {where}" + (f" (sha256 {self.sha256[:12]})" if self.sha256 else "")
        )
        lines.append(
            "  declared  invariant_to: "
            + (", ".join(self.declared) if self.declared else "(none)")
            + f"; options {json.dumps(self.options, sort_keys=True, default=str)}"
        )
        if self.canvas:
            lines.append(
                f"  input     {self.batch} smooth random images, {self.canvas}x{self.canvas}, "
                "soft disk window, float32"
            )
        lines.append(
            "  rel. diff ||G(Tf) - T G(f)|| / ||G(f) - channel mean|| (a norm ratio); tolerance "
            f"{EXACT_TOL:g} for exact checks (translation by stride multiples, rotation90, "
            f"flip), {APPROX_TOL:g} for declared approximate families (rotation, reflection) "
            "on grid elements; '*' declared and checked, '!' failed, unmarked informative"
        )
        if self.layers:
            head = [
                "layer",
                "shape",
                "stride",
                "offset(y,x)",
                "finite",
                "determ.",
                "translation",
            ] + list(SYMMETRIES)
            rows = [head]
            for r in self.layers:
                rows.append(_row(r))
            widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
            for row in rows:
                lines.append(
                    "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                )
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.passed:
            lines.append("result: PASS (every check holds)")
        else:
            lines.append(
                f"result: FAIL ({len(self.failures)} failure{'s' * (len(self.failures) != 1)})"
            )
            lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)


def _fmt_diff(diff: float | None, tol: float | None) -> str:
    if diff is None:
        return "n/a"
    text = f"{diff:.1e}"
    if tol is None:
        return text
    return text + ("*" if diff <= tol else "!")


def _yes(v: bool | None) -> str:
    return "n/a" if v is None else ("yes" if v else "NO")


def _row(r: LayerResult) -> list[str]:
    shape = "n/a" if r.shape is None else "(" + ",".join(map(str, r.shape)) + ")"
    stride = "n/a" if r.stride is None else str(r.stride)
    offset = "n/a" if r.offset is None else f"({r.offset[0]:g},{r.offset[1]:g})"
    trans = _fmt_diff(r.translation, EXACT_TOL if r.translation is not None else None)
    if r.shift is not None and r.translation is not None:
        trans = f"{trans} @({r.shift[0]},{r.shift[1]})"
    syms = [_fmt_diff(r.symmetry.get(n), r.expect.get(n)) for n in SYMMETRIES]
    return [r.layer, shape, stride, offset, _yes(r.finite), _yes(r.deterministic), trans, *syms]


def smooth_images(
    batch: int, channels: int, size: int, *, seed: int = 0, sigma: float = 2.0
) -> torch.Tensor:
    """Return smooth random images inside a soft disk.

    White noise blurred by a Gaussian of ``sigma`` px, standardised, times a
    window that is 1 within 0.35·size/2 of the centre and falls (cos²) to 0 at
    0.6·size/2, so that translations by a few strides and every grid symmetry
    keep the content inside the canvas.

    Args:
        batch: N.
        channels: C.
        size: H = W.
        seed: seed of the noise.
        sigma: smoothing in pixels.

    Returns:
        Images of shape (N, C, size, size), float32.

    Example:
        >>> smooth_images(2, 3, 16).shape
        torch.Size([2, 3, 16, 16])
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch * channels, 1, size, size, generator=gen)
    g = gaussian_kernel1d(sigma, truncate=3.0)
    r = g.numel() // 2
    x = F.conv2d(
        F.conv2d(x, g.view(1, 1, 1, -1), padding=(0, r)), g.view(1, 1, -1, 1), padding=(r, 0)
    )
    x = (x - x.mean()) / x.std().clamp_min(1e-12)
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    rad = torch.sqrt(yy**2 + xx**2) / (size / 2)
    t = ((rad - 0.35) / 0.25).clamp(0, 1)
    window = torch.where(t >= 1, 0.0, torch.cos(t * math.pi / 2) ** 2)
    return (x.view(batch, channels, size, size) * window).float()


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., y, x] = t[..., y − dy, x − dx], zero where that is outside."""
    out = torch.zeros_like(t)
    h, w = t.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def relative_difference(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``‖a − ref‖ / ‖ref − per-channel mean of ref‖``, a norm ratio computed in float64.

    Args:
        a: feature maps of shape (..., H, W).
        ref: the reference, same shape.

    Returns:
        The relative difference: 0 when ``a`` equals ``ref``; ``inf`` when ``ref`` is
        flat (constant per channel) and ``a`` differs from it.

    Example:
        >>> ref = torch.arange(4.0).view(1, 2, 2)
        >>> relative_difference(ref, ref), round(relative_difference(ref + 0.5, ref), 4)
        (0.0, 0.4472)
    """
    a64, r64 = a.double(), ref.double()
    num = torch.linalg.vector_norm(a64 - r64)
    den = torch.linalg.vector_norm(r64 - r64.mean(dim=(-2, -1), keepdim=True))
    if float(den) == 0.0:
        return 0.0 if float(num) == 0.0 else math.inf
    return float(num / den)


def _interior(p: GridProbe, n: int, length: int, d: int, axis: str) -> slice | None:
    """Output indices j whose receptive field lies inside the canvas before and after a shift d."""
    off = p.offset_y if axis == "y" else p.offset_x
    lo, hi = p.extent_y if axis == "y" else p.extent_x
    k = d // p.stride
    js = [
        j
        for j in range(length)
        if off + p.stride * j + lo >= max(0, d)
        and off + p.stride * j + hi <= n - 1 + min(0, d)
        and 0 <= j - k < length
    ]
    if not js:
        return None
    return slice(js[0], js[-1] + 1)


def _forward(ex: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return ex(x)


class _Abort(Exception):
    pass


def check_network(
    network: str | NetworkSpec,
    options: Mapping[str, Any] | None = None,
    plugin_dirs: Iterable[Path | str] = (),
    *,
    batch: int = 2,
    seed: int = 0,
) -> CheckReport:
    """Check a network plugin: build, shapes, grid, determinism, covariance, invariances.

    Args:
        network: a name (looked up with :func:`featalign.plugins.get_network`) or a spec.
        options: build options.
        plugin_dirs: extra plugin folders for the name lookup.
        batch: number of test images.
        seed: seed of the test images.

    Returns:
        The report; ``report.exit_code`` is 0 only if every check holds. Problems of
        the plugin (it raises, returns the wrong type, misses a layer, yields NaN)
        are failures in the report, not exceptions.

    Raises:
        PluginError: if the name is unknown or the plugin files cannot be loaded.
    """
    spec = network if isinstance(network, NetworkSpec) else get_network(network, plugin_dirs)
    opts = dict(options or {})
    report = CheckReport(
        name=spec.name, source=spec.source, declared=spec.invariant_to, options=opts, batch=batch
    )
    try:
        report.sha256 = spec.sha256()
    except PluginError:
        report.sha256 = ""
    try:
        _run_checks(spec, opts, report, batch, seed)
    except _Abort:
        pass
    except Exception as exc:  # a report, never a traceback; details at debug level
        log.debug("check of %s stopped", spec.name, exc_info=True)
        report.failures.append(
            f"{display_path(spec.source)}: the check of network '{spec.name}' stopped on "
            f"{type(exc).__name__}: {_one_line(exc)}; run with -vv for the traceback."
        )
    return report


def _build(spec: NetworkSpec, opts: dict[str, Any], report: CheckReport) -> torch.nn.Module:
    where = display_path(spec.source)
    try:
        return build_extractor(spec, opts)
    except PluginError as exc:
        report.failures.append(str(exc))
    except Exception as exc:  # noqa: BLE001 -- the plugin's own failure becomes a sentence
        report.failures.append(
            f"{where}: build({_kw(opts)}) of network '{spec.name}' raised "
            f"{type(exc).__name__}: {_one_line(exc)}; fix the plugin or its options."
        )
    raise _Abort


def _kw(opts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in opts.items())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def _run(
    ex: torch.nn.Module, x: torch.Tensor, spec: NetworkSpec, report: CheckReport, what: str
) -> dict[str, torch.Tensor]:
    try:
        return _forward(ex, x)
    except PluginError as exc:
        report.failures.append(str(exc))
    except Exception as exc:  # noqa: BLE001
        report.failures.append(
            f"{display_path(spec.source)}: the forward pass of network '{spec.name}' on {what} "
            f"of shape {tuple(x.shape)} raised {type(exc).__name__}: {_one_line(exc)}; fix the "
            "module's forward."
        )
    raise _Abort


def _run_checks(
    spec: NetworkSpec, opts: dict[str, Any], report: CheckReport, batch: int, seed: int
) -> None:
    where = display_path(spec.source)
    c = spec.in_channels
    ex = _build(spec, opts, report)
    report.layers = [LayerResult(layer) for layer in spec.layers]
    by_name = {r.layer: r for r in report.layers}

    # 1. a first forward at 64 px: contract, finiteness
    out = _run(ex, smooth_images(batch, c, 64, seed=seed), spec, report, "a batch")
    bad = [layer for layer in spec.layers if not torch.isfinite(out[layer]).all()]
    if bad:
        for layer in bad:
            by_name[layer].finite = False
            report.failures.append(
                f"{where}: layer '{layer}' of network '{spec.name}' has NaN or Inf values on "
                "smooth random images; check the module for divisions, logs or overflow."
            )
        raise _Abort

    # 2. the sampling grids
    try:
        probes = probe_grid(ex, c, 64)
    except Exception as exc:  # noqa: BLE001
        report.failures.append(
            f"{where}: could not measure the sampling grid of network '{spec.name}' "
            f"({type(exc).__name__}: {_one_line(exc)}); make each layer's output size grow "
            "by 1 per stride of input."
        )
        raise _Abort from None
    lcm = math.lcm(*(p.stride for p in probes.values()))
    need = max(
        2 * (p.radius + p.stride * max(abs(k) for k in _SHIFT_K)) + p.stride + 2
        for p in probes.values()
    )
    n = lcm * max(1, -(-max(64, min(math.ceil(need), MAX_CANVAS)) // lcm))
    report.canvas = n
    x = smooth_images(batch, c, n, seed=seed)
    out = _run(ex, x, spec, report, "a batch") if n != 64 else out
    for layer in spec.layers:
        r, p, t = by_name[layer], probes[layer], out[layer]
        r.shape, r.stride, r.offset = tuple(t.shape), p.stride, (p.offset_y, p.offset_x)
        r.finite = bool(torch.isfinite(t).all())
        if not r.finite:
            report.failures.append(
                f"{where}: layer '{layer}' of network '{spec.name}' has NaN or Inf values on a "
                f"{n}x{n} canvas; check the module for divisions, logs or overflow."
            )
        if p.clipped:
            report.notes.append(
                f"layer {layer}: the receptive field exceeds the largest probe canvas, so its "
                "measured offset may be off."
            )
    if not all(r.finite for r in report.layers):
        raise _Abort

    # 3. determinism: a second build, repeated forwards
    ex2 = _build(spec, opts, report)
    again = _run(ex, x, spec, report, "a batch")
    other = _run(ex2, x, spec, report, "a batch")
    for layer in spec.layers:
        same = torch.equal(out[layer], again[layer]) and torch.equal(out[layer], other[layer])
        by_name[layer].deterministic = same
        if not same:
            diff = max(
                float((out[layer] - again[layer]).abs().max()),
                float((out[layer] - other[layer]).abs().max()),
            )
            report.failures.append(
                f"{where}: layer '{layer}' of network '{spec.name}' is not deterministic (two "
                f"builds or two forwards differ by up to {diff:.2e}); seed the random init inside "
                "build() and avoid randomness in forward."
            )

    # 4. translation covariance at stride multiples
    for s in sorted({p.stride for p in probes.values()}):
        dy, dx = s * _SHIFT_K[0], s * _SHIFT_K[1]
        shifted = _run(ex, _shift(x, dy, dx), spec, report, "a shifted batch")
        for layer in spec.layers:
            p, r = probes[layer], by_name[layer]
            if p.stride != s:
                continue
            r.shift = (dy, dx)
            h, w = out[layer].shape[-2:]
            ys, xs = _interior(p, n, h, dy, "y"), _interior(p, n, w, dx, "x")
            if ys is None or xs is None:
                report.notes.append(
                    f"layer {layer}: translation not measured, the receptive field "
                    f"(±{p.radius:g} px) leaves no interior on a {n}x{n} canvas."
                )
                continue
            ref = _shift(out[layer], _SHIFT_K[0], _SHIFT_K[1])
            r.translation = relative_difference(shifted[layer][..., ys, xs], ref[..., ys, xs])
            if r.translation > EXACT_TOL:
                report.failures.append(
                    f"{where}: layer '{layer}' of network '{spec.name}' is not translation "
                    f"covariant: shifting the input by ({dy}, {dx}) px (stride {s} times "
                    f"{_SHIFT_K}) gives relative difference {r.translation:.2e} > "
                    f"{EXACT_TOL:g} in the interior; check the stride and avoid "
                    "position-dependent operations."
                )

    # 5. grid symmetries, declared or informative
    declared = set(spec.invariant_to)
    for layer in spec.layers:
        p, r = probes[layer], by_name[layer]
        h, w = out[layer].shape[-2:]
        r.centred = (
            h == w
            and abs(2 * p.offset_y - (n - 1 - p.stride * (h - 1))) < 1e-6
            and abs(2 * p.offset_x - (n - 1 - p.stride * (w - 1))) < 1e-6
        )
    for name, (op, subgroup, family) in SYMMETRIES.items():
        tout = _run(ex, op(x), spec, report, f"a batch transformed by {name}")
        for layer in spec.layers:
            r = by_name[layer]
            diff = relative_difference(tout[layer], op(out[layer])) if r.centred else None
            tol = (
                EXACT_TOL
                if subgroup in declared
                else APPROX_TOL
                if (family in declared or "affine" in declared)
                else None
            )
            if diff is not None:
                r.symmetry[name] = diff
            if tol is None:
                continue
            r.expect[name] = tol
            what = subgroup if tol == EXACT_TOL else family
            if diff is None:
                msg = (
                    f"{where}: layer '{layer}' of network '{spec.name}' is declared invariant "
                    f"to {what} but its sampling grid (stride {r.stride}, offset "
                    f"{r.offset}) is not centred on a {n}x{n} canvas, so {name} does not map "
                    "it onto itself; use symmetric padding and centred pooling (no x[::2])."
                )
                if msg not in report.failures:
                    report.failures.append(msg)
            elif diff > tol:
                report.failures.append(
                    f"{where}: layer '{layer}' of network '{spec.name}' is declared invariant to "
                    f"{what} but {name} gives relative difference {diff:.2e} > {tol:g}; remove "
                    f"'{what}' from invariant_to or make the features invariant."
                )
    uncentred = [r.layer for r in report.layers if not r.centred]
    if uncentred:
        report.notes.append(
            f"grid symmetries not measured for layer(s) {', '.join(uncentred)}: their sampling "
            f"grid is not centred on the {n}x{n} canvas, so 90-degree rotations and flips do not "
            "map it onto itself."
        )
    _check_head(spec, opts, x, report)
    _check_stages(spec, ex, x, report)
    untested = sorted(declared - {"rotation", "reflection", "rotation90", "flip", "translation"})
    if untested:
        report.notes.append(
            f"declared {', '.join(untested)} invariance is not checked here (no exact grid "
            "element); the workflow measures it."
        )


def _check_stages(
    spec: NetworkSpec, ex: torch.nn.Module, x: torch.Tensor, report: CheckReport
) -> None:
    """7. a declared chain of stages (``stages=``) must reproduce the dense maps of plain
    shift-and-stitch (the feature stage would fall back to the slower plain method)."""
    if spec.stages is None:
        return
    from featalign.forward import staged_difference
    from featalign.stitch import STAGE_RTOL

    try:
        worst = staged_difference(ex, x)
    except Exception as exc:  # noqa: BLE001 -- a plugin's chain can raise anything
        report.failures.append(
            f"{display_path(spec.source)}: stages= of network '{spec.name}' failed "
            f"({type(exc).__name__}: {_one_line(exc)}); return [(label, module), ...] whose "
            "modules, run in order, compute the declared layers."
        )
        return
    if worst is None:
        return
    report.notes.append(f"stages: dense maps stage by stage vs shift-and-stitch {worst:.1e} "
                        f"(tolerance {STAGE_RTOL:g})")
    if not worst <= STAGE_RTOL:
        report.failures.append(
            f"{display_path(spec.source)}: stages= of network '{spec.name}' does not "
            f"reproduce the network's dense maps (relative difference {worst:.2e} > "
            f"{STAGE_RTOL:g}); make its modules, run in order, compute exactly the declared "
            "layers, or remove stages= (the feature stage would not use it)."
        )


def _check_head(
    spec: NetworkSpec, opts: dict[str, Any], x: torch.Tensor, report: CheckReport
) -> None:
    """6. a classifier's head (``head=``): head_k(body_k(x)) must be the network's logits."""
    if spec.head is None:
        return
    from featalign.recognition.measure import HEAD_TOL, build_classifier, head_differences

    try:
        diffs = head_differences(build_classifier(spec, opts), x)
    except PluginError as exc:
        report.failures.append(str(exc))
        return
    report.notes.append(
        "head: ||head_k(body_k(x)) - logits|| / ||logits|| "
        + ", ".join(f"{layer} {d:.1e}" for layer, d in diffs.items())
        + f" (tolerance {HEAD_TOL:g})"
    )
    for layer, d in diffs.items():
        if not d <= HEAD_TOL:
            report.failures.append(
                f"{display_path(spec.source)}: the head of network '{spec.name}' for layer "
                f"'{layer}' does not reproduce the network's own logits (relative difference "
                f"{d:.2e} > {HEAD_TOL:g}); make head(model, '{layer}') run exactly the "
                "layers after it."
            )
