"""Known answers of the warp optimiser (featalign.align.affine, .layer): planted warps,
grid symmetries, pointwise networks, stride-multiple translations, never worse than a
start, gradcheck."""

from __future__ import annotations

import math
import time
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from featalign import geometry as g
from featalign.align.affine import fit_affine
from featalign.align.dense import DENSE_STEPS, _Slopes, fit_dense, warp_with_field
from featalign.align.layer import align_layer, values_in_region
from featalign.align.measures import MEASURES, region_mask, warp_loss
from featalign.align.starts import SYMMETRY_NAMES, family_starts, grid_symmetries

SIZE = 64
RADIUS = 20.0
#: tolerances of the known answers
MATRIX_TOL = 0.02  # max |ΔA| and max |Δb| / half-width
FLOOR_TOL = 1e-3  # final error may exceed the exact inverse warp's error by this much
EXACT_TOL = 1e-6  # errors of exactly alignable cases


# --------------------------------------------------------------------------- fixtures


def textures(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth random textures in a soft disk window, (n, 1, size, size) float32."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.standard_normal((n, size, size)), (0, 2, 2))
    x /= x.std(axis=(1, 2), keepdims=True)
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2
    win = 1 / (1 + np.exp((np.hypot(xx, yy) - 0.4 * size) / 2))
    return torch.from_numpy(x * win).float()[:, None]


def conv_net(seed: int = 0, width: int = 16):
    """A small fixed random CNN: two 3×3 convs + ReLU (zero padding, stride 1)."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(width, 1, 3, 3, generator=gen) / 3
    b1 = torch.randn(width, generator=gen) * 0.1
    w2 = torch.randn(width, width, 3, 3, generator=gen) / math.sqrt(9 * width)

    def features(x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.conv2d(x, w1, b1, padding=1))
        return torch.relu(F.conv2d(h, w2, padding=1))

    return features


def layer(features: torch.Tensor, stride: int) -> tuple[torch.Tensor, g.Grid]:
    """Stride 1 as is, stride 2 by centred 2×2 average pooling."""
    if stride == 1:
        return features, g.Grid.image(SIZE, SIZE)
    return F.avg_pool2d(features, stride), g.Grid.centred(SIZE, SIZE, stride)


def draw_planted(n: int, gen: torch.Generator) -> torch.Tensor:
    """Random affine maps: rotation ±30°, scaling 0.7–1.4, shear ±0.3, translation ±10 %.

    A draw whose exact inverse warp would read R from outside the canvas is redrawn.
    """
    out = []
    theta = torch.linspace(0, 2 * math.pi, 90, dtype=torch.float64)
    rim = RADIUS * torch.stack([theta.cos(), theta.sin()], 1)
    while len(out) < n:
        u = torch.rand(5, generator=gen, dtype=torch.float64) * 2 - 1
        s = math.exp(float(u[3]) * (math.log(1.4) if u[3] > 0 else -math.log(0.7)))
        m = g.compose(
            g.translation(u[0] * 0.1 * SIZE, u[1] * 0.1 * SIZE),
            g.rotation(u[2] * 30.0),
            g.scaling(torch.tensor([s], dtype=torch.float64)),
            g.shear(u[4] * 0.3),
        )[0]
        src = rim @ m[:, :2].T + m[:, 2]  # where the exact inverse reads R from
        if float(src.abs().max()) <= (SIZE - 1) / 2 - 1:
            out.append(m)
    return torch.stack(out)


@cache
def planted(stride: int, n: int = 256, seed: int = 0):
    """Planted problems: moving = warp(target, g) on the layer grid; answer invert(g)."""
    target, grid = layer(conv_net(seed)(textures(n, seed=seed + 1)), stride)
    gs = draw_planted(n, torch.Generator().manual_seed(seed + 2))
    moving = g.warp(target, gs, grid)
    return target, moving, gs, grid


def non_oracle_starts(k: int = 4, seed: int = 0) -> torch.Tensor:
    """The 8 grid symmetries (identity first) and k draws from the affine family."""
    draws = family_starts("affine", k, torch.Generator().manual_seed(seed), (SIZE, SIZE))
    return torch.cat([grid_symmetries(), draws])


def matrix_error(m: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """max |ΔA| and max |Δb| / half-width, per problem."""
    da = (m[:, :, :2] - truth[:, :, :2]).abs().amax((1, 2))
    db = (m[:, :, 2] - truth[:, :, 2]).abs().amax(1) / (SIZE / 2)
    return torch.maximum(da, db)


def recovery(stride: int, n: int, method: str = "gauss_newton", **kwargs):
    target, moving, gs, grid = planted(stride, n)
    mask = region_mask(grid, RADIUS)
    idx = torch.arange(n)
    truth = g.invert(gs)
    t0 = time.perf_counter()
    fit = fit_affine(target, moving, idx, non_oracle_starts(), grid, mask, method=method, **kwargs)
    seconds = time.perf_counter() - t0
    floor = fit_affine(target, moving, idx, truth[:, None], grid, mask, max_iter=0).error
    merr = matrix_error(fit.matrix, truth)
    ok = (merr < MATRIX_TOL) & (fit.error <= floor + FLOOR_TOL)
    lines = [
        (
            f"{method} stride {stride}: recovered {int(ok.sum())}/{n} = {ok.double().mean():.4f} in "
            f"{seconds:.1f} s; iterations median {fit.iterations.double().median():.0f}, "
            f"max {int(fit.iterations.max())}; converged {fit.converged.double().mean():.3f}; "
            f"median error {fit.error.median():.4g} vs floor {floor.median():.4g}"
        )
    ]
    for i in torch.nonzero(~ok).squeeze(1).tolist():
        lines.append(
            f"  FAILED #{i}: g={gs[i].numpy().round(3).tolist()} matrix error {merr[i]:.4f}, "
            f"error {fit.error[i]:.4g}, floor {floor[i]:.4g}, winning start {int(fit.start[i])}"
        )
    print("\n".join(lines))
    return ok, fit, seconds


# --------------------------------------------------------------------------- planted warps


class TestPlantedWarps:
    @pytest.mark.slow
    @pytest.mark.parametrize("stride", [1, 2])
    def test_recovery_from_non_oracle_starts(self, stride: int) -> None:
        ok, _, _ = recovery(stride, 256)
        assert ok.double().mean() >= 0.99

    @pytest.mark.slow
    def test_polish_recovers_what_gauss_newton_leaves_at_stride_2(self) -> None:
        """The polish (fit_affine's polish_iter) on planted stride-2 warps: 0, 10 (the
        default) and 30 steps; the printed counts are the docstring's."""
        rates = {n: recovery(2, 256, polish_iter=n)[0].double().mean() for n in (0, 10, 30)}
        assert rates[10] >= rates[0]
        assert rates[10] >= 0.99

    def test_a_rejected_step_below_xtol_ends_the_start(self) -> None:
        """Damping only shrinks a rejected step further, so a start whose trial step is
        already below ``xtol`` and does not lower the loss has converged to within xtol:
        it stops there instead of raising the damping to its bound (10 more warps). With
        xtol = 1 every first step, accepted or rejected, is below it."""
        target, moving, gs, grid = planted(2, 16)
        mask = region_mask(grid, RADIUS)
        truth = g.invert(gs)[:, None]  # at the answer: most first steps are rejected
        kwargs = {"sigmas": [0.0], "polish_iter": 0, "rtol": 0.0}
        fit = fit_affine(target, moving, torch.arange(16), truth, grid, mask, xtol=1.0, **kwargs)
        assert fit.iterations.tolist() == [1] * 16
        moved = fit_affine(target, moving, torch.arange(16), truth, grid, mask, xtol=0.0, **kwargs)
        assert int(moved.iterations.max()) >= 10  # without the rule: the damping's bound
        # more iterations never end worse (up to the float32 inner loss's rounding)
        assert bool((moved.error <= fit.error * (1 + 1e-5)).all())

    def test_prune_stops_starts_that_fall_far_behind(self) -> None:
        """The coarse level's pruning (fit_affine's ``prune``) stops starts headed for
        worse minima: fewer iterations, the same recovered warps, and each problem's
        error that of the fit without it (the kept start may be another of those that
        reach the same optimum)."""
        ok, fit, _ = recovery(2, 32)
        ok_all, full, _ = recovery(2, 32, prune=None)
        assert bool(ok.all()) and bool(ok_all.all())
        assert int(fit.iterations.sum()) < int(full.iterations.sum())
        torch.testing.assert_close(fit.error, full.error, rtol=1e-5, atol=0)

    def test_smoke_few(self) -> None:
        ok, fit, _ = recovery(2, 8)
        assert fit.matrix.shape == (8, 2, 3) and fit.matrix.dtype == torch.float64
        assert fit.error.shape == fit.iterations.shape == fit.converged.shape == (8,)
        assert fit.start_error.shape == (8, 12)
        assert bool(ok.all())

    @pytest.mark.slow
    def test_adam_variant(self) -> None:
        """The Adam-through-autograd variant on the same problems, for comparison."""
        ok_gn, fit_gn, t_gn = recovery(2, 64)
        ok_adam, fit_adam, t_adam = recovery(2, 64, method="adam", max_iter=60)
        print(
            f"Gauss-Newton: rate {ok_gn.double().mean():.3f}, median iterations "
            f"{fit_gn.iterations.double().median():.0f}, {t_gn:.1f} s; Adam: rate "
            f"{ok_adam.double().mean():.3f}, median iterations "
            f"{fit_adam.iterations.double().median():.0f}, {t_adam:.1f} s"
        )
        assert fit_adam.matrix.shape == fit_gn.matrix.shape
        assert ok_adam.double().mean() >= 0.5

    def test_exception(self) -> None:
        target, moving, _, grid = planted(2, 8)
        mask = region_mask(grid, RADIUS)
        with pytest.raises(ValueError, match="method"):
            fit_affine(
                target, moving, torch.arange(8), non_oracle_starts(), grid, mask, method="sgd"
            )
        with pytest.raises(ValueError, match=r"moving must have shape"):
            fit_affine(target, moving[:, :3], torch.arange(8), non_oracle_starts(), grid, mask)


# --------------------------------------------------------------------------- grid symmetries


class TestGridSymmetries:
    def test_symmetries_are_the_grid_group(self) -> None:
        m = grid_symmetries()
        assert m.shape == (8, 2, 3) and len(SYMMETRY_NAMES) == 8
        assert torch.equal(m[0], g.identity(1, torch.float64)[0])
        dets = torch.linalg.det(m[:, :, :2])
        assert torch.equal(dets, torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=torch.float64))

    @pytest.mark.parametrize("stride", [1, 2])
    def test_rot90_and_flips_align_exactly(self, stride: int) -> None:
        target, grid = layer(conv_net(3)(textures(2, seed=4)), stride)
        ops = [
            lambda x: torch.rot90(x, 1, (-2, -1)),
            lambda x: torch.rot90(x, 2, (-2, -1)),
            lambda x: torch.flip(x, (-1,)),
            lambda x: torch.flip(x, (-2,)),
            lambda x: x.transpose(-1, -2),
        ]
        moving = torch.stack([op(target) for op in ops], 1)  # (S, T, C, h, w)
        res = align_layer(
            target,
            moving,
            moving,
            g.identity(len(ops), torch.float64),
            grid,
            region_radius=RADIUS,
            families=["reflection"] * len(ops),
            starts_per_family=0,
            include_oracle_start=False,
            dense_steps=0,
            progress=False,
        )
        affine = res.errors[..., MEASURES.index("affine")]
        assert float(affine.max()) < EXACT_TOL, affine
        assert float(res.errors[..., MEASURES.index("none")].min()) > 0.1


# --------------------------------------------------------------------------- pointwise networks


def pointwise_net(seed: int = 0, width: int = 8):
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(width, 1, 1, 1, generator=gen)
    b1 = torch.randn(width, generator=gen) * 0.5
    w2 = torch.randn(width, width, 1, 1, generator=gen) / math.sqrt(width)

    def features(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(torch.tanh(F.conv2d(x, w1, b1)), w2)

    return features


FAMILY_MAGNITUDES = [
    ("translation", 3.0),
    ("rotation", 25.0),
    ("reflection", 30.0),
    ("scaling", 1.2),
    ("anisotropic_scaling", 1.2),
    ("shear", 0.2),
    ("affine", 0.2),
]


class TestPointwiseNetwork:
    def test_affine_oracle_input_agree(self) -> None:
        images = torch.from_numpy(
            ndimage.gaussian_filter(textures(3, seed=7).double().numpy(), (0, 0, 1, 1))
        ).float()
        gen = torch.Generator().manual_seed(0)
        gs = torch.stack([g.from_family(f, m, generator=gen) for f, m in FAMILY_MAGNITUDES])
        s, t = images.shape[0], gs.shape[0]
        flat = images.repeat_interleave(t, 0)
        transformed = g.warp(flat, gs.repeat(s, 1, 1).float())
        realigned = g.warp(transformed, g.invert(gs).repeat(s, 1, 1).float())
        net = pointwise_net()
        target = net(images)
        moving = net(transformed).view(s, t, *target.shape[1:])
        back = net(realigned).view(s, t, *target.shape[1:])
        res = align_layer(
            target,
            moving,
            back,
            gs,
            g.Grid.image(SIZE, SIZE),
            region_radius=RADIUS,
            families=[f for f, _ in FAMILY_MAGNITUDES],
            starts_per_family=2,
            dense_steps=0,
            progress=False,
        )
        e = {name: res.errors[..., i] for i, name in enumerate(MEASURES)}
        print({k: float(v.max()) for k, v in e.items()})
        assert float(e["input"].max()) < 0.02
        assert float((e["oracle"] - e["input"]).abs().max()) < 0.01
        assert float((e["affine"] - e["oracle"]).abs().max()) < 0.01
        assert bool((e["affine"] <= e["oracle"]).all())
        assert float(e["none"].min()) > 0.05


# --------------------------------------------------------------------------- translations


class TestStrideTranslations:
    @pytest.mark.parametrize("stride", [1, 2])
    def test_translations_by_stride_multiples_align(self, stride: int) -> None:
        images = textures(2, seed=9)
        shifts = [(stride, 0), (0, -stride), (2 * stride, stride), (-stride, -2 * stride)]
        gs = torch.cat([g.translation(float(dx), float(dy)) for dx, dy in shifts]).to(torch.float64)
        net = conv_net(5)
        s, t = images.shape[0], gs.shape[0]
        transformed = g.warp(images.repeat_interleave(t, 0), gs.repeat(s, 1, 1).float())
        target, grid = layer(net(images), stride)
        moving, _ = layer(net(transformed), stride)
        moving = moving.view(s, t, *target.shape[1:])
        res = align_layer(
            target,
            moving,
            moving,
            gs,
            grid,
            region_radius=RADIUS,
            families=["translation"] * t,
            include_oracle_start=False,
            dense_steps=0,
            progress=False,
        )
        assert float(res.errors[..., MEASURES.index("oracle")].max()) < EXACT_TOL
        assert float(res.errors[..., MEASURES.index("affine")].max()) < EXACT_TOL
        truth = g.invert(gs).expand(s, -1, -1, -1)
        assert torch.allclose(res.affine_matrix, truth, atol=1e-3)


# --------------------------------------------------------------------------- orderings


class TestOrderings:
    @pytest.mark.parametrize(("dense_method", "dense_steps"), [("adam", 30), ("gauss_newton", 10)])
    def test_never_worse_than_a_start(self, dense_method: str, dense_steps: int) -> None:
        """Unalignable features (3×3 convs under scaling and shear): affine ≤ oracle, none;
        dense ≤ affine."""
        images = textures(2, seed=11)
        gs = torch.cat([g.scaling(1.3), g.shear(0.3), g.rotation(35.0)]).to(torch.float64)
        s, t = 2, 3
        transformed = g.warp(images.repeat_interleave(t, 0), gs.repeat(s, 1, 1).float())
        net = conv_net(6)
        target, grid = layer(net(images), 2)
        moving, _ = layer(net(transformed), 2)
        moving = moving.view(s, t, *target.shape[1:])
        res = align_layer(
            target,
            moving,
            moving,
            gs,
            grid,
            region_radius=RADIUS,
            families=["scaling", "shear", "rotation"],
            starts_per_family=2,
            dense_method=dense_method,
            dense_steps=dense_steps,
            progress=False,
        )
        e = {name: res.errors[..., i] for i, name in enumerate(MEASURES)}
        assert bool((e["affine"] <= e["oracle"]).all())
        assert bool((e["affine"] <= e["none"] + 1e-6).all())
        assert bool((e["dense"] <= e["affine"]).all())
        assert bool((res.start_error.min(-1).values == e["affine"]).all())
        assert res.affine_start.shape == (s, t)
        assert res.start_names[0] == "oracle" and res.start_names[1] == "identity"
        assert res.dense_displacement_rms.shape == (s, t)
        assert bool(torch.isfinite(res.dense_displacement_rms).all())


# --------------------------------------------------------------------------- gradcheck


class TestWarpLoss:
    def test_gradcheck(self) -> None:
        gen = torch.Generator().manual_seed(0)
        grid = g.Grid.image(6, 6)
        mask = torch.ones(6, 6, dtype=torch.bool)
        target = torch.randn(2, 2, 6, 6, generator=gen, dtype=torch.float64)
        moving = torch.randn(2, 2, 6, 6, generator=gen, dtype=torch.float64)
        m = g.compose(
            g.rotation(torch.tensor([7.0, -11.0], dtype=torch.float64)),
            g.translation(0.3, -0.2).double(),
        ).requires_grad_(True)
        ctrl = (0.1 * torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64)).requires_grad_(
            True
        )
        assert torch.autograd.gradcheck(
            lambda a, c: warp_loss(target, moving, a, grid, mask, c), (m, ctrl), eps=1e-6, atol=1e-5
        )

    def test_matches_geometry_warp(self) -> None:
        target, moving, gs, grid = planted(2, 8)
        mask = region_mask(grid, RADIUS)
        inv = g.invert(gs)
        ours = warp_loss(target, moving, inv, grid, mask)
        warped = g.warp(moving, inv, grid)
        num = (warped - target)[..., mask].double().pow(2).sum((-2, -1))
        t = target[..., mask].double()
        den = (t - t.mean(-1, keepdim=True)).pow(2).sum((-2, -1))
        assert torch.allclose(ours, num / den, rtol=1e-4, atol=1e-7)


class TestWarpWithField:
    """The dense warp applied to whole maps (what the recognize stage feeds a head)."""

    def test_without_field_it_is_the_geometry_warp(self) -> None:
        target, moving, gs, grid = planted(2, 4)
        inv = g.invert(gs)
        torch.testing.assert_close(
            warp_with_field(moving, inv, grid), g.warp(moving, inv, grid), rtol=1e-4, atol=1e-5
        )  # float32 maps: sampling positions computed two ways differ in the last bits

    def test_a_constant_field_is_a_translation(self) -> None:
        _, moving, _, grid = planted(2, 3)
        control = torch.zeros(3, 2, 4, 4)
        control[:, 0], control[:, 1] = 4.0, -2.0  # read 4 px right, 2 px up (image pixels)
        ident = torch.eye(2, 3).expand(3, 2, 3)
        shift = g.translation(-4.0, 2.0).expand(3, 2, 3)
        torch.testing.assert_close(
            warp_with_field(moving, ident, grid, control), g.warp(moving, shift, grid),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip

    def test_the_fitted_field_reproduces_the_dense_error(self) -> None:
        target, moving, gs, grid = planted(2, 6)
        mask = region_mask(grid, RADIUS)
        start = g.compose(g.invert(gs), g.rotation(torch.full((6,), 4.0, dtype=torch.float64)))  # a poorer affine
        fit = fit_dense(target, moving, torch.arange(6), start, grid, mask, steps=30)
        warped = warp_with_field(moving, start, grid, fit.control)
        num = (warped - target)[..., mask].double().pow(2).sum((-2, -1))
        t = target[..., mask].double()
        den = (t - t.mean(-1, keepdim=True)).pow(2).sum((-2, -1))
        torch.testing.assert_close(num / den, fit.error, rtol=1e-4, atol=1e-7)
        assert (fit.control.abs().amax((1, 2, 3)) > 0.01).all()  # a field was found


def planted_field(stride: int, n: int = 8, seed: int = 0):
    """Planted dense warps: target = the moving maps read through a smooth field of up to
    1.5 image pixels (what :func:`fit_dense` looks for on top of the identity)."""
    moving, grid = layer(conv_net(seed)(textures(n, seed=seed + 1)), stride)
    gen = torch.Generator().manual_seed(seed + 3)
    control = (torch.rand(n, 2, 6, 6, generator=gen) * 2 - 1) * 1.5
    target = warp_with_field(moving, g.identity(n), grid, control)
    return target, moving, control, grid


class TestDenseOptimiser:
    """The dense measure's optimisers find planted smooth fields and never end above their
    start; Levenberg–Marquardt gets as low in 20 iterations as Adam in 60 steps."""

    @pytest.mark.parametrize(("method", "steps"), [("adam", 60), ("gauss_newton", 20)])
    @pytest.mark.parametrize("stride", [1, 2])
    def test_recovers_planted_fields(self, stride: int, method: str, steps: int) -> None:
        target, moving, control, grid = planted_field(stride)
        mask = region_mask(grid, RADIUS)
        ident = g.identity(target.shape[0], torch.float64)
        start = warp_loss(target, moving, ident, grid, mask)
        fit = fit_dense(target, moving, torch.arange(target.shape[0]), ident, grid, mask,
                        smoothness=0.0, steps=steps, method=method)  # fmt: skip
        assert (start > 1e-2).all()  # the planted fields matter
        assert (fit.error < 0.02 * start).all(), (fit.error / start).tolist()

    def test_gauss_newton_beats_adam_with_fewer_steps(self) -> None:
        target, moving, _, grid = planted_field(2)
        mask = region_mask(grid, RADIUS)
        ident = g.identity(target.shape[0], torch.float64)
        args = (target, moving, torch.arange(target.shape[0]), ident, grid, mask)
        lm = fit_dense(*args, steps=20, method="gauss_newton")
        adam = fit_dense(*args, steps=60, method="adam")
        assert (lm.error <= adam.error * 1.01).all(), (lm.error / adam.error).tolist()

    @pytest.mark.parametrize("method", ["gauss_newton", "adam"])
    def test_never_above_the_affine_start(self, method: str) -> None:
        target, moving, gs, grid = planted(2, 6)
        mask = region_mask(grid, RADIUS)
        start = g.compose(g.invert(gs), g.rotation(torch.full((6,), 25.0, dtype=torch.float64)))
        base = warp_loss(target, moving, start, grid, mask).detach()
        fit = fit_dense(target, moving, torch.arange(6), start, grid, mask, steps=3,
                        lr=5.0, method=method)  # fmt: skip
        assert (fit.error <= base).all()

    def test_slopes_are_the_interpolants_exact_gradient(self) -> None:
        gen = torch.Generator().manual_seed(5)
        maps = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64)
        positions = (torch.rand(2, 1, 40, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2)
        positions.requires_grad_(True)
        weights = torch.randn(2, 3, 1, 40, generator=gen, dtype=torch.float64)
        (F.grid_sample(maps, positions, align_corners=False) * weights).sum().backward()
        gx, gy = _Slopes(maps).at(positions.detach())
        ours = torch.stack([(gx * weights[:, :, 0]).sum(1), (gy * weights[:, :, 0]).sum(1)], -1)
        # d(normalised position)/d(feature pixel) = 2 / size (align_corners=False)
        torch.testing.assert_close(ours, positions.grad[:, 0] * torch.tensor([2 / 9, 2 / 7],
                                   dtype=torch.float64))  # fmt: skip

    @pytest.mark.parametrize("method", ["gauss_newton", "adam"])
    def test_steps_default_to_the_methods_own(self, method: str) -> None:
        target, moving, gs, grid = planted(2, 2)
        start = g.compose(g.invert(gs), g.rotation(torch.full((2,), 6.0, dtype=torch.float64)))
        args = (target, moving, torch.arange(2), start, grid, region_mask(grid, RADIUS))
        default = fit_dense(*args, method=method)
        own = fit_dense(*args, method=method, steps=DENSE_STEPS[method])
        fewer = fit_dense(*args, method=method, steps=1)
        torch.testing.assert_close(default.error, own.error, rtol=0, atol=0)
        assert not torch.equal(default.error, fewer.error)  # the count is used

    def test_negative_steps_are_named(self) -> None:
        target, moving, gs, grid = planted(2, 2)
        with pytest.raises(ValueError, match="dense steps must be >= 0, got -1"):
            fit_dense(target, moving, torch.arange(2), gs, grid, region_mask(grid, RADIUS),
                      steps=-1)  # fmt: skip

    def test_an_unknown_method_is_named(self) -> None:
        target, moving, gs, grid = planted(2, 2)
        with pytest.raises(ValueError, match="one of gauss_newton, adam, got 'newton'"):
            fit_dense(target, moving, torch.arange(2), gs, grid, region_mask(grid, RADIUS),
                      method="newton")  # fmt: skip


# --------------------------------------------------------------------------- validation and timing


class TestAlignLayer:
    def _inputs(self):
        target = conv_net(0)(textures(2, seed=1))
        moving = torch.stack([target, target], 1)
        return (
            target,
            moving,
            moving.clone(),
            g.identity(2, torch.float64),
            g.Grid.image(SIZE, SIZE),
        )

    def test_cardinality(self) -> None:
        target, moving, realigned, gs, grid = self._inputs()
        res = align_layer(
            target,
            moving,
            realigned,
            gs,
            grid,
            region_radius=RADIUS,
            families=["rotation", "shear"],
            starts_per_family=1,
            dense_steps=2,
            progress=False,
        )
        assert res.errors.shape == (2, 2, len(MEASURES)) and res.measures == MEASURES
        assert res.affine_matrix.shape == (2, 2, 2, 3)
        assert res.affine_iterations.shape == res.affine_converged.shape == (2, 2)
        assert len(res.start_names) == 1 + 8 + 1 == res.start_matrix.shape[1]
        assert res.dense_control.shape == (2, 2, 2, 6, 6)

    def test_memory_bound_chunks_without_changing_results(self) -> None:
        """A small max_batch_elements splits the batch into chunks; the answer is the same."""
        target, moving, realigned, _, grid = self._inputs()
        gs = torch.cat([g.rotation(20.0), g.shear(0.2)]).double()
        moving = torch.stack([g.warp(target, gs[t]) for t in range(2)], 1)
        kwargs = dict(region_radius=RADIUS, families=["rotation", "shear"], starts_per_family=1,
                      dense_steps=0, progress=False)
        whole = align_layer(target, moving, realigned, gs, grid, **kwargs)
        chunked = align_layer(target, moving, realigned, gs, grid, max_batch_elements=4096,
                              **kwargs)
        torch.testing.assert_close(chunked.errors, whole.errors, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(chunked.affine_matrix, whole.affine_matrix, rtol=1e-6,
                                   atol=1e-8)

    def test_realigned_at_the_region_only(self) -> None:
        """The input measure reads Γ(T_g⁻¹ T_g f) only at R: its values there
        (values_in_region, what the align stage reads a few transforms at a time) give the
        same errors, bit for bit, as the whole maps; values of another region are refused."""
        target, moving, _, gs, grid = self._inputs()
        realigned = moving + 0.1 * torch.randn_like(moving)
        kwargs = dict(region_radius=RADIUS, families=["rotation", "shear"], starts_per_family=1,
                      dense_steps=0, progress=False)
        whole = align_layer(target, moving, realigned, gs, grid, **kwargs)
        values = values_in_region(realigned, grid, RADIUS)
        assert values.shape[:3] == realigned.shape[:3] and values.shape[3] < SIZE * SIZE
        at_r = align_layer(target, moving, values, gs, grid, **kwargs)
        assert torch.equal(at_r.errors, whole.errors)
        assert bool((whole.errors[..., MEASURES.index("input")] > 0).all())
        other = values_in_region(realigned, grid, RADIUS / 2)
        with pytest.raises(ValueError, match="values_in_region"):
            align_layer(target, moving, other, gs, grid, **kwargs)

    @pytest.mark.parametrize("which", ["target", "moving", "realigned"])
    def test_nan_names_the_input(self, which: str) -> None:
        inputs = dict(zip(["target", "moving", "realigned"], self._inputs()[:3]))
        inputs[which] = inputs[which].clone()
        inputs[which].view(-1)[5] = float("nan")
        _, _, _, gs, grid = self._inputs()
        with pytest.raises(ValueError, match=f"^{which} contains"):
            align_layer(
                inputs["target"],
                inputs["moving"],
                inputs["realigned"],
                gs,
                grid,
                region_radius=RADIUS,
                families=["rotation"] * 2,
                progress=False,
            )

    def test_shape_mismatch(self) -> None:
        target, moving, realigned, gs, grid = self._inputs()
        with pytest.raises(ValueError, match=r"moving must have shape.*got \(2, 2, 16, 64, 32\)"):
            align_layer(
                target,
                moving[..., :32],
                realigned,
                gs,
                grid,
                region_radius=RADIUS,
                families=["rotation"] * 2,
                progress=False,
            )
        with pytest.raises(ValueError, match=r"realigned has shape \(2, 3, 16, 64, 64\)"):
            align_layer(
                target,
                moving,
                torch.cat([realigned, realigned[:, :1]], 1),
                gs,
                grid,
                region_radius=RADIUS,
                families=["rotation"] * 2,
                progress=False,
            )
        with pytest.raises(ValueError, match="families has 1 entries for 2 transforms"):
            align_layer(
                target,
                moving,
                realigned,
                gs,
                grid,
                region_radius=RADIUS,
                families=["rotation"],
                progress=False,
            )
        with pytest.raises(ValueError, match="grid says 32x32"):
            align_layer(
                target,
                moving,
                realigned,
                gs,
                g.Grid.centred(SIZE, SIZE, 2),
                region_radius=RADIUS,
                families=["rotation"] * 2,
                progress=False,
            )

    @pytest.mark.slow
    def test_realistic_layer(self) -> None:
        """S=4, T=14, C=32, 64×64, 12 starts: every measure finite, affine ≤ oracle.

        Its time is printed, not asserted (the speed goals live in benchmarks/)."""
        images = textures(4, seed=12)
        fams = [f for f, _ in FAMILY_MAGNITUDES] * 2
        gen = torch.Generator().manual_seed(1)
        gs = torch.stack([g.from_family(f, m, generator=gen) for f, m in FAMILY_MAGNITUDES * 2])
        t = len(fams)
        transformed = g.warp(images.repeat_interleave(t, 0), gs.repeat(4, 1, 1).float())
        net = conv_net(0, width=32)
        target = net(images)
        moving = net(transformed).view(4, t, *target.shape[1:])
        t0 = time.perf_counter()
        res = align_layer(
            target,
            moving,
            moving,
            gs,
            g.Grid.image(SIZE, SIZE),
            region_radius=RADIUS,
            families=fams,
            starts_per_family=3,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        print(
            f"align_layer S=4 T=14 C=32 64x64, {len(res.start_names)} starts: {seconds:.1f} s "
            f"({ {k: round(v, 1) for k, v in res.seconds.items()} })"
        )
        assert len(res.start_names) == 12
        errors = res.errors[..., [MEASURES.index(m) for m in ("none", "oracle", "affine")]]
        assert bool(torch.isfinite(errors).all())
        assert bool((res.errors[..., MEASURES.index("affine")] <= errors[..., 1] + 1e-12).all())


class TestAdam:
    """featalign.align.adam.Adam: torch.optim.Adam's iterates, without torch._dynamo."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_same_iterates_as_torch_optim(self, dtype: torch.dtype) -> None:
        from featalign.align.adam import Adam

        gen = torch.Generator().manual_seed(3)
        a = torch.randn(5, 4, generator=gen, dtype=dtype)
        start = torch.randn(5, 4, generator=gen, dtype=dtype)

        def loss(p: torch.Tensor) -> torch.Tensor:  # non-quadratic: the moments matter
            return ((p - a).pow(2) * (1 + p.sin().pow(2))).sum()

        ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
        opt_ours = Adam(ours, lr=0.05)
        opt_theirs = torch.optim.Adam([theirs], lr=0.05)
        for _ in range(60):
            for p, opt in ((ours, opt_ours), (theirs, opt_theirs)):
                opt.zero_grad()
                loss(p).backward()
                opt.step()
            assert torch.equal(ours, theirs)
        assert float(loss(ours)) < 0.5 * float(loss(start))  # it did optimise

    def test_polish_steps_are_autograds(self) -> None:
        """The affine polish forms the loss's gradient at the sampling positions from
        grid_sample's own backward: its iterates equal those of Adam through autograd on
        the whole loss, bit for bit."""
        from featalign.align.adam import Adam
        from featalign.align.affine import _adam_level, _Level
        from featalign.align.measures import _sample, _sum_sq_in_dtype

        gen = torch.Generator().manual_seed(5)
        grid = g.Grid.image(24, 24)
        target = F.avg_pool2d(torch.randn(3, 4, 28, 28, generator=gen), 5, 1)
        truth = g.compose(
            g.rotation(torch.tensor([12.0, -6.0, 17.0])), g.scaling(torch.tensor([1.05, 0.95, 1.0]))
        ).double()
        moving = g.warp(target, truth, grid)
        level = _Level(target, 0.0, grid, region_mask(grid, 8.0))
        index = torch.arange(3)
        start = g.invert(truth) + 0.02 * torch.randn(3, 2, 3, generator=gen, dtype=torch.float64)
        steps, lr = 6, 3e-3
        ours = _adam_level(moving, None, level, index, start.clone(), max_iter=steps, rtol=0.0, lr=lr)

        scale = torch.tensor([1.0, 1.0, level.pts.half_extent], dtype=torch.float64)
        q = (start / scale).clone().requires_grad_(True)
        opt = Adam(q, lr=lr)
        best = torch.full((3,), float("inf"), dtype=torch.float64)
        best_m = start.clone()
        for _ in range(steps):
            opt.zero_grad()
            m = q * scale
            loss = _sum_sq_in_dtype(_sample(moving, m, level.grid, level.pts) - level.values)
            lc = loss.detach()
            better = lc < best
            best, best_m[better] = torch.where(better, lc, best), m.detach()[better]
            loss.sum().backward()
            opt.step()
        assert torch.equal(ours[0], best_m) and torch.equal(ours[1], best)
        assert bool((best < _sum_sq_in_dtype(_sample(moving, start, grid, level.pts) - level.values)).all())

    def test_align_layer_does_not_import_dynamo(self) -> None:
        """torch.optim's first step imports torch._dynamo (2-3 CPU-s, paid by every
        align job); the optimiser's Adam levels and the dense fit must not."""
        import subprocess
        import sys

        code = (
            "import sys, torch\n"
            "from featalign import geometry as g\n"
            "from featalign.align.layer import align_layer\n"
            "t = torch.rand(1, 2, 16, 16)\n"
            "m = torch.stack([t, t], 1)\n"
            "align_layer(t, m, m.clone(), g.identity(2, torch.float64), g.Grid.image(16, 16),\n"
            "            region_radius=6.0, families=['rotation', 'shear'], starts_per_family=1,\n"
            "            dense_steps=2, progress=False)\n"
            "print('torch._dynamo' in sys.modules)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == "False", out.stderr
