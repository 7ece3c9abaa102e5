"""The measures of featalign.align (measures, mixing, layer): normalisation, constant
baseline, region R, flat targets, mixing."""

from __future__ import annotations

import logging

import pytest
import torch

from featalign import geometry as g
from featalign.align.layer import align_layer
from featalign.align.measures import (
    MEASURES,
    NORMALISATION,
    EmptyRegionError,
    region_mask,
    relative_error,
)
from featalign.align.mixing import mixing_error


def random_maps(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def align_one_transform(target: torch.Tensor, moving: torch.Tensor, family: str):
    """align_layer on 16×16 maps and one identity transform, no family draws, no dense warp."""
    return align_layer(
        target,
        moving,
        moving,
        g.identity(1, torch.float64),
        g.Grid.image(16, 16),
        region_radius=6.0,
        families=[family],
        starts_per_family=0,
        dense_steps=0,
        progress=False,
    )


class TestRegionMask:
    def test_smoke(self) -> None:
        mask = region_mask(g.Grid.image(16, 16), 4.0)
        assert mask.shape == (16, 16) and mask.dtype == torch.bool
        # symmetric about the canvas centre
        assert torch.equal(mask, torch.flip(mask, (0,))) and torch.equal(mask, mask.T)

    def test_uses_the_lattice(self) -> None:
        """At stride 2 the feature pixel centres are image pixels 0.5, 2.5, ...: the disk of
        radius 1 about the centre (31.5 of 64) holds the 2×2 central feature pixels, whose
        centres sit at distance √2·1 = 1.41 — outside; radius 1.5 takes them in."""
        grid = g.Grid.centred(64, 64, 2)
        assert int(region_mask(grid, 1.5).sum()) == 4
        with pytest.raises(ValueError):
            region_mask(grid, 1.0)

    def test_exception(self) -> None:
        with pytest.raises(
            EmptyRegionError, match=r"8x8 feature pixels.*radius 0.1.*region.radius"
        ):
            region_mask(g.Grid.centred(64, 64, 8), 0.1)


class TestRelativeError:
    def test_constant_is_one(self) -> None:
        t = random_maps(3, 5, 12, 12)
        mask = region_mask(g.Grid.image(12, 12), 5.0)
        mean = t[..., mask].mean(-1)[..., None, None].expand_as(t)
        err = relative_error(mean, t, mask)
        assert torch.allclose(err, torch.ones(3, dtype=torch.float64), atol=1e-12)
        assert torch.equal(relative_error(t, t, mask), torch.zeros(3, dtype=torch.float64))
        assert "mu_c" in NORMALISATION

    def test_only_region_counts(self) -> None:
        t = random_maps(1, 2, 10, 10)
        mask = region_mask(g.Grid.image(10, 10), 3.0)
        x = t.clone()
        x[..., ~mask] = 100.0
        assert float(relative_error(x, t, mask)) == 0.0

    def test_flat_target_is_nan(self) -> None:
        t = random_maps(2, 3, 8, 8)
        t[1] = 0.5
        mask = region_mask(g.Grid.image(8, 8), 3.0)
        err = relative_error(t + 1, t, mask)
        assert bool(torch.isfinite(err[0])) and bool(torch.isnan(err[1]))


class TestLayerMeasures:
    def test_constant_none_input(self) -> None:
        grid = g.Grid.centred(32, 32, 2)
        target = random_maps(3, 4, 16, 16, seed=1)
        moving = random_maps(3, 2, 4, 16, 16, seed=2)
        realigned = random_maps(3, 2, 4, 16, 16, seed=3)
        res = align_layer(
            target,
            moving,
            realigned,
            g.rotation(torch.tensor([10.0, 20.0])).double(),
            grid,
            region_radius=10.0,
            families=["rotation"] * 2,
            starts_per_family=1,
            dense_steps=0,
            progress=False,
        )
        mask = region_mask(grid, 10.0)
        e = res.errors
        assert torch.allclose(
            e[..., MEASURES.index("constant")], torch.ones(3, 2, dtype=torch.float64)
        )
        none = relative_error(moving, target[:, None], mask)
        assert torch.allclose(e[..., MEASURES.index("none")], none, rtol=1e-6)
        inp = relative_error(realigned, target[:, None], mask)
        assert torch.allclose(e[..., MEASURES.index("input")], inp, rtol=1e-6)
        assert res.region_pixels == int(mask.sum())

    def test_empty_region(self) -> None:
        target = random_maps(2, 3, 8, 8)
        moving = random_maps(2, 1, 3, 8, 8)
        with pytest.raises(
            EmptyRegionError, match=r"8x8 .*radius 1.0 image pixels; enlarge `region.radius`"
        ):
            align_layer(
                target,
                moving,
                moving,
                g.identity(1, torch.float64),
                g.Grid.centred(64, 64, 8),
                region_radius=1.0,
                families=["rotation"],
                progress=False,
            )


    def test_flat_target_is_nan(self, caplog: pytest.LogCaptureFixture) -> None:
        """A target constant over R has no error: NaN for its sample, a warning, the rest
        measured as usual."""
        target = random_maps(2, 3, 16, 16, seed=4)
        target[1] = 0.25
        moving = random_maps(2, 1, 3, 16, 16, seed=5)
        with caplog.at_level(logging.WARNING, logger="featalign.align"):
            res = align_one_transform(target, moving, "rotation")
        for name in ("none", "oracle", "input", "constant"):
            err = res.errors[:, 0, MEASURES.index(name)]
            assert bool(torch.isfinite(err[0])) and bool(torch.isnan(err[1])), name
        assert "constant over R" in caplog.text


class TestMixing:
    def _oracle_aligned(self, s: int, c: int = 6, seed: int = 0):
        target = random_maps(s, c, 12, 12, seed=seed)
        mask = region_mask(g.Grid.image(12, 12), 5.0)
        return target, mask

    def test_shared_map_is_found(self) -> None:
        target, mask = self._oracle_aligned(8)
        mix = random_maps(6, 6, seed=5) + 3 * torch.eye(6)
        aligned = torch.einsum("dc,scyx->sdyx", torch.linalg.inv(mix), target - 0.5)[:, None]
        err = mixing_error(aligned, target, mask, ridge=1e-8)
        assert err.shape == (8, 1)
        assert float(err.max()) < 1e-6

    def test_samples_of_two_kinds_each_held_out_well(self) -> None:
        """Grey-like samples (features in a 2-D subspace) alternating with colour-like ones:
        a fixed even/odd split would fit on one kind only and fail on the other (it did,
        error 1.8 on exactly aligned features); leave-one-out always trains on both."""
        target, mask = self._oracle_aligned(4)
        basis = random_maps(6, 2, seed=9)  # (6, 2): the 2-D subspace
        grey = torch.einsum("ck,skyx->scyx", basis, target[:, :2])
        target = torch.where((torch.arange(4) % 2 == 0)[:, None, None, None], grey, target)
        err = mixing_error(target[:, None], target, mask, ridge=1e-6)
        assert float(err.max()) < 1e-3, err

    def test_no_leak_from_own_sample(self) -> None:
        """Per-sample random channel permutations: a map fitted on a sample itself would give
        zero error, any shared map fails on held-out samples."""
        target, mask = self._oracle_aligned(8)
        gen = torch.Generator().manual_seed(3)
        perms = [torch.randperm(6, generator=gen) for _ in range(8)]
        aligned = torch.stack([target[i, perms[i]] for i in range(8)])[:, None]
        err = mixing_error(aligned, target, mask, ridge=1e-3)
        assert float(err.min()) > 0.5, err

    def test_in_align_layer_and_few_samples(self, caplog: pytest.LogCaptureFixture) -> None:
        target = random_maps(1, 3, 16, 16)
        moving = target[:, None]
        with caplog.at_level(logging.WARNING, logger="featalign.align"):
            res = align_one_transform(target, moving, "shear")
        assert torch.isnan(res.errors[..., MEASURES.index("mixing")]).all()
        assert "mixing needs at least 2 samples" in caplog.text


class TestMixingControl:
    """The positive control of the evidence issue: it cannot lose to an exact oracle, and it
    finds information that is there but not spatially alignable."""

    def test_never_worse_than_an_exact_oracle_even_underdetermined(self) -> None:
        """32 channels, 3 samples, about 29 pixels each: a leave-one-out fit sees ~58
        observations for 33 parameters per channel. Shrunk towards zero such a fit scored
        worse than the exact inverse warp; shrunk towards the identity it is the identity."""
        target = random_maps(3, 32, 12, 12, seed=4)
        mask = region_mask(g.Grid.image(12, 12), 3.0)
        assert int(mask.sum()) < 33
        for ridge in (1e-3, 1e-1, 10.0):
            err = mixing_error(target[:, None], target, mask, ridge=ridge)
            assert float(err.max()) <= 1e-9, (ridge, err)

    def test_close_to_the_oracle_where_the_oracle_is_nearly_exact(self) -> None:
        """A little independent noise on the oracle-warped maps: the map stays near I, so
        mixing stays within noise of the oracle instead of paying for a noisy fit."""
        target = random_maps(4, 24, 12, 12, seed=6)
        aligned = target + 0.01 * random_maps(4, 24, 12, 12, seed=7)
        mask = region_mask(g.Grid.image(12, 12), 4.0)
        oracle = relative_error(aligned, target, mask)
        mixing = mixing_error(aligned[:, None], target, mask)[:, 0]
        assert float((mixing - oracle).max()) <= 1e-3, (mixing, oracle)

    def test_finds_what_no_warp_can(self) -> None:
        """A 90° rotation whose features also permute their channels (as a rotated filter
        bank does): the oracle and every affine warp fail, a shared 1×1 map undoes it."""
        target = random_maps(4, 6, 16, 16, seed=8).double()
        perm = torch.tensor([3, 0, 5, 1, 2, 4])
        rot = g.rotation(torch.tensor([90.0], dtype=torch.float64))
        moving = g.warp(target, rot[0])[:, perm][:, None]  # exact: 90° maps the grid onto itself
        back = g.warp(moving[:, 0], g.invert(rot)[0])[:, perm.argsort()]
        assert torch.allclose(back, target, atol=1e-12)  # the information is all there
        res = align_layer(
            target, moving, moving, rot, g.Grid.image(16, 16), region_radius=6.0,
            families=["rotation"], starts_per_family=1, dense_steps=0, progress=False,
        )
        errs = {m: res.errors[:, 0, MEASURES.index(m)] for m in ("oracle", "affine", "mixing")}
        assert float(errs["oracle"].min()) > 0.5 and float(errs["affine"].min()) > 0.5, errs
        assert float(errs["mixing"].max()) < 1e-4, errs  # the ridge pulls towards I: ~2e-6
