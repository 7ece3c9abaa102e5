"""Known answers and properties of the geometry convention (featalign.geometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from featalign import geometry as g


def smooth_image(n: int = 48, channels: int = 1, seed: int = 0, sigma: float = 3) -> torch.Tensor:
    """A smooth random image (B=1, C, n, n) in float64."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((channels, n, n)), sigma=(0, sigma, sigma))
    return torch.from_numpy(img)[None]


def scipy_warp(img: np.ndarray, tgt_from_src: np.ndarray) -> np.ndarray:
    """The same transform by scipy.ndimage.affine_transform (an independent implementation).

    scipy maps output (row, col) indices to input indices: in = M out + o. Our
    convention maps centred (x, y) source coordinates to the target by A x + b.
    """
    h, w = img.shape
    a, b = tgt_from_src[:, :2], tgt_from_src[:, 2]
    ai = np.linalg.inv(a)
    # (x, y) -> (row, col) is a swap; centre c = ((h-1)/2, (w-1)/2) in (row, col)
    p = np.array([[0, 1], [1, 0]])
    m = p @ ai @ p
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = c - m @ c - m @ (p @ b)
    return ndimage.affine_transform(img, m, offset=offset, order=1, mode="constant", cval=0.0)


def inside_source(shape: tuple[int, int], tgt_from_src: np.ndarray) -> np.ndarray:
    """Target pixels whose source position lies inside the source's pixel centres.

    The two implementations pad differently across the last half pixel (torch
    blends the edge with zero, scipy does not), so they are compared where both
    read real pixels only.
    """
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(float)
    xy = np.stack([cols - (w - 1) / 2, rows - (h - 1) / 2])
    a, b = tgt_from_src[:, :2], tgt_from_src[:, 2]
    src = np.linalg.inv(a) @ (xy.reshape(2, -1) - b[:, None])
    sc, sr = src[0] + (w - 1) / 2, src[1] + (h - 1) / 2
    return ((sc >= 0) & (sc <= w - 1) & (sr >= 0) & (sr <= h - 1)).reshape(h, w)


FAMILY_CASES = [
    ("translation", g.translation(3.25, -1.5)),
    ("rotation", g.rotation(23.0)),
    ("reflection", g.reflection(30.0)),
    ("scaling", g.scaling(1.3)),
    ("anisotropic_scaling", g.anisotropic_scaling(1.25, 0.8, 20.0)),
    ("shear", g.shear(0.3)),
    ("affine", g.affine(1, 0.3, generator=torch.Generator().manual_seed(1))),
]


def assert_float_exact(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float64 rounding.

    grid_sample's normalised coordinates round-trip exactly only on power-of-two
    sizes, so grid symmetries are exact up to ~1e-15 relative, not bit for bit.
    """
    assert a.dtype == torch.float64
    assert (a - b).abs().max().item() <= 1e-12 * max(1.0, b.abs().max().item())


class TestCheckShape:
    def test_smoke(self):
        assert g.check_shape(torch.zeros(2, 3, 4), "B C 4") == {"B": 2, "C": 3}

    def test_exception(self):
        with pytest.raises(ValueError, match=r"maps must have shape \(B, C, H, W\), got \(2, 3\)"):
            g.check_shape(torch.zeros(2, 3), "B C H W", "maps")
        with pytest.raises(ValueError, match="got"):
            g.check_shape(torch.zeros(2, 2, 4), "B 2 3")


class TestConstructors:
    def test_exact_grid_symmetries(self):
        assert torch.equal(g.rotation(90.0)[0, :, :2], torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
        assert torch.equal(g.reflection(0.0)[0, :, :2], torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        assert torch.equal(g.reflection(45.0)[0, :, :2], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def test_determinants(self):
        assert torch.linalg.det(g.reflection(17.0)[0, :, :2]).item() == pytest.approx(-1)
        assert torch.linalg.det(g.shear(0.4, 30.0)[0, :, :2]).item() == pytest.approx(1)
        assert torch.linalg.det(g.anisotropic_scaling(2.0, 0.5, 10.0)[0, :, :2]).item() == (
            pytest.approx(1)
        )

    def test_cardinality(self):
        assert g.rotation(torch.tensor([0.0, 10.0, 20.0])).shape == (3, 2, 3)
        assert g.translation(torch.tensor([1.0, 2.0]), 0.0).shape == (2, 2, 3)
        assert g.identity(5).shape == (5, 2, 3)

    def test_exception(self):
        with pytest.raises(ValueError, match="positive"):
            g.scaling(0.0)
        with pytest.raises(ValueError, match="unknown family 'spin'; known families: translation"):
            g.from_family("spin", 1.0)

    def test_affine_strength_is_distance_from_identity(self):
        gen = torch.Generator().manual_seed(0)
        m = g.affine(100, 0.2, generator=gen)[:, :, :2]
        # ||expm(0.2 N) - I|| ~ 0.2 for unit-norm N
        dist = torch.linalg.matrix_norm(m - torch.eye(2, dtype=m.dtype))
        assert 0.15 < dist.min().item() and dist.max().item() < 0.25

    def test_affine_condition_bounded(self):
        m = g.affine(200, 1.0, generator=torch.Generator().manual_seed(0), max_condition=3.0)
        cond = torch.linalg.cond(m[:, :, :2])
        assert cond.max().item() <= 3.0 + 1e-9
        assert (torch.linalg.det(m[:, :, :2]) > 0).all()

    @pytest.mark.parametrize(
        "family,neutral",
        [("translation", 0), ("rotation", 0), ("scaling", 1), ("anisotropic_scaling", 1),
         ("shear", 0), ("affine", 0)],  # reflections have no identity element
    )
    def test_from_family_identity_magnitude(self, family, neutral):
        m = g.from_family(family, neutral, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(m, g.identity(1, torch.float64)[0])


class TestComposeInvert:
    def test_round_trip(self):
        m = g.compose(g.rotation(30.0), g.translation(2.0, -1.0), g.shear(0.2))
        torch.testing.assert_close(g.compose(m, g.invert(m)), g.identity(1), atol=1e-6, rtol=0)

    def test_order(self):
        # translate first, then rotate by 90: the point (0, 0) goes to (1, 0) then to (0, 1)
        m = g.compose(g.rotation(90.0), g.translation(1.0, 0.0))
        torch.testing.assert_close(m[0, :, 2], torch.tensor([0.0, 1.0]))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.floats(-2, 2, allow_nan=False), min_size=6, max_size=6))
    def test_property_inverse(self, vals):
        m = torch.tensor(vals, dtype=torch.float64).reshape(1, 2, 3)
        det = torch.linalg.det(m[0, :, :2]).item()
        if abs(det) < 1e-2:
            return
        torch.testing.assert_close(
            g.compose(g.invert(m), m), g.identity(1, torch.float64), atol=1e-8, rtol=0
        )
        torch.testing.assert_close(g.invert(g.invert(m)), m, atol=1e-8, rtol=1e-8)

    @settings(max_examples=40, deadline=None)
    @given(st.floats(-180, 180), st.floats(-180, 180))
    def test_property_rotations_add(self, a, b):
        torch.testing.assert_close(
            g.compose(g.rotation(a), g.rotation(b)), g.rotation(a + b), atol=1e-5, rtol=0
        )


class TestWarp:
    def test_smoke(self):
        x = smooth_image()
        assert g.warp(x, g.identity(1, torch.float64)).shape == x.shape

    @pytest.mark.parametrize("batch,channels,size", [(1, 1, 8), (3, 2, 16), (2, 4, 12)])
    def test_cardinality(self, batch, channels, size):
        x = torch.randn(batch, channels, size, size)
        assert g.warp(x, g.rotation(torch.full((batch,), 10.0))).shape == x.shape
        assert g.warp(x, g.rotation(10.0)[0]).shape == x.shape  # one map for all

    def test_exception(self):
        x = torch.randn(2, 1, 8, 8)
        with pytest.raises(ValueError, match="3 matrices for 2 maps"):
            g.warp(x, g.rotation(torch.zeros(3)))
        with pytest.raises(ValueError, match="maps must have shape"):
            g.warp(x[0], g.rotation(0.0))

    def test_identity_exact(self):
        x = smooth_image()
        assert_float_exact(g.warp(x, g.identity(1, torch.float64)), x)

    @pytest.mark.parametrize("k,deg", [(-1, 90.0), (2, 180.0), (1, 270.0), (1, -90.0)])
    def test_rot90_exact(self, k, deg):
        x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
        y = g.warp(x, g.rotation(deg).double()[0])
        assert_float_exact(y, torch.rot90(x, k, dims=(-2, -1)))

    @pytest.mark.parametrize("axis,dims", [(0.0, [-2]), (90.0, [-1])])
    def test_flip_exact(self, axis, dims):
        x = torch.randn(1, 2, 9, 12, dtype=torch.float64)
        assert_float_exact(g.warp(x, g.reflection(axis).double()[0]), torch.flip(x, dims=dims))

    def test_transpose_exact(self):
        x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
        assert_float_exact(g.warp(x, g.reflection(45.0).double()[0]), x.transpose(-1, -2))

    @pytest.mark.parametrize("tx,ty", [(1, 0), (0, 1), (-3, 2), (5, -4)])
    def test_integer_translation_is_shift(self, tx, ty):
        x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
        y = g.warp(x, g.translation(float(tx), float(ty)).double()[0])
        shifted = torch.roll(x, shifts=(ty, tx), dims=(-2, -1))
        inner = (slice(None), slice(None), slice(6, 10), slice(6, 10))
        assert_float_exact(y[inner], shifted[inner])

    def test_ramp_one_pixel(self):
        ramp = torch.arange(10.0, dtype=torch.float64).repeat(10, 1)[None, None]
        y = g.warp(ramp, g.translation(1.0, 0.0).double()[0])
        assert_float_exact(y[0, 0, :, 1:], ramp[0, 0, :, :-1])

    @pytest.mark.parametrize("family,m", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
    def test_agrees_with_scipy(self, family, m, record_property):
        x = smooth_image(48, seed=3)
        m = m.double()
        ours = g.warp(x, m[0])[0, 0].numpy()
        ref = scipy_warp(x[0, 0].numpy(), m[0].numpy())
        inside = inside_source(ours.shape, m[0].numpy())
        assert inside.mean() > 0.6
        err = np.abs(ours - ref)[inside].max()
        record_property("max_abs_diff", float(err))
        print(f"scipy agreement {family}: max |ours - scipy| = {err:.2e}")
        assert err < 1e-5

    def test_round_trip_interior(self):
        x = smooth_image(64, seed=1)
        m = g.compose(g.rotation(20.0), g.scaling(1.1)).double()[0]
        back = g.warp(g.warp(x, m), g.invert(m))
        inner = (slice(None), slice(None), slice(20, 44), slice(20, 44))
        # smooth image: bilinear there and back loses little
        assert (back - x)[inner].abs().max().item() < 0.02 * x.abs().max().item()

    @pytest.mark.parametrize("stride", [2, 4])
    def test_stride_translation_is_feature_shift(self, stride):
        grid = g.Grid.centred(32, 32, stride)
        f = torch.randn(1, 3, grid.height, grid.width, dtype=torch.float64)
        y = g.warp(f, g.translation(float(stride), 0.0).double()[0], grid=grid)
        assert_float_exact(y[..., 1:], f[..., :-1])
        assert_float_exact(y[..., 0], torch.zeros_like(y[..., 0]))

    @pytest.mark.parametrize("stride", [2, 4])
    def test_feature_grid_commutes_with_pooling(self, stride):
        # warping then average pooling ≈ pooling then warping on the feature grid, for
        # a smooth image: the same physical transform on two lattices
        x = smooth_image(64, seed=2, sigma=5)
        m = g.rotation(45.0).double()[0]
        grid = g.Grid.centred(64, 64, stride)
        a = torch.nn.functional.avg_pool2d(g.warp(x, m), stride)
        pooled = torch.nn.functional.avg_pool2d(x, stride)
        inner = (slice(None), slice(None), slice(16 // stride, -16 // stride),
                 slice(16 // stride, -16 // stride))

        def rel(b: torch.Tensor) -> float:
            return ((a - b)[inner].norm() / a[inner].norm()).item()

        right = rel(g.warp(pooled, m, grid=grid))
        # the naive lattice (offset 0, as x[::s] would give) is off by (s-1)/2 pixels
        naive = g.Grid(grid.height, grid.width, stride, 0.0, 0.0, 64, 64)
        wrong = rel(g.warp(pooled, m, grid=naive))
        assert right < 0.06  # pooling and rotation do not commute exactly
        assert wrong > 3 * right

    def test_rot90_on_centred_feature_grid(self):
        grid = g.Grid.centred(32, 32, 4)
        f = torch.randn(1, 2, 8, 8, dtype=torch.float64)
        assert_float_exact(
            g.warp(f, g.rotation(90.0).double()[0], grid=grid), torch.rot90(f, -1, dims=(-2, -1))
        )

    def test_gradcheck(self):
        x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
        # off-centre, so that no sample lands on a pixel centre (a kink of bilinear)
        m = g.compose(g.translation(0.31, 0.17), g.rotation(10.0), g.scaling(1.1))
        m = m.double().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda mm: g.warp(x, mm), (m,))


class TestToTheta:
    def test_identity(self):
        theta = g.to_theta(g.identity(1, torch.float64), g.Grid.image(8, 8))
        torch.testing.assert_close(theta, g.identity(1, torch.float64))

    def test_same_theta_for_centred_strides(self):
        m = g.compose(g.rotation(33.0), g.translation(4.0, -2.0)).double()
        t1 = g.to_theta(m, g.Grid.image(32, 32))
        t4 = g.to_theta(m, g.Grid.centred(32, 32, 4))
        torch.testing.assert_close(t1, t4)

    def test_rectangular_scale(self):
        # a 1-pixel x shift on a W-wide canvas is 2/W in normalised units
        theta = g.to_theta(g.translation(1.0, 0.0).double(), g.Grid.image(10, 20))
        assert theta[0, 0, 2].item() == pytest.approx(-2 / 20)
        assert math.isclose(theta[0, 1, 2].item(), 0.0, abs_tol=1e-12)
