"""The one geometry convention of featalign, written once.

**Convention** (used by every module, every file and every figure):

* Pixel centres sit at integer indices; ``(x, y)`` order, x to the right
  (column index), y down (row index).
* Coordinates are *centred*: ``x = col - (W - 1) / 2``, ``y = row - (H - 1) / 2``,
  in units of image pixels.
* An affine transformation is a 2×3 matrix ``[A | b]`` mapping centred source
  coordinates to centred target coordinates, ``x ↦ A x + b`` (direction
  ``tgt_from_src``), and it acts on an image by ``T_g f(x) = f(A⁻¹ (x − b))``.
  With y pointing down, a positive rotation angle turns the picture clockwise
  on screen.
* A feature map of a layer samples the image plane on a lattice: feature pixel
  ``k`` (along one axis) sits at image pixel index ``offset + stride · k``.
  :class:`Grid` holds that lattice; the image itself is ``Grid.image(H, W)``.
  Warping a feature map uses the same ``[A | b]`` as warping the image.
* Sampling is bilinear with zero padding outside the source
  (``torch.nn.functional.grid_sample``, ``align_corners=False``); the
  conversion to torch's normalised coordinates happens in :func:`to_theta`
  and nowhere else.

Example:
    >>> import torch
    >>> m = rotation(torch.tensor([90.0]))
    >>> torch.allclose(m, torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]), atol=1e-6)
    True
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featalign.names import FAMILIES

__all__ = [
    "FAMILIES",
    "Grid",
    "affine",
    "anisotropic_scaling",
    "check_shape",
    "compose",
    "from_family",
    "identity",
    "invert",
    "reflection",
    "rotation",
    "scaling",
    "shear",
    "to_theta",
    "translation",
    "warp",
]



def check_shape(x: torch.Tensor, spec: str, name: str = "tensor") -> dict[str, int]:
    """Check that ``x`` has as many dims as ``spec`` names and that fixed sizes match.

    Args:
        x: the tensor to check.
        spec: space-separated dim names; a name that is an integer fixes that size,
            e.g. ``"B 2 3"``.
        name: the argument's name, for the message.

    Returns:
        A dict from the symbolic dim names to their sizes.

    Raises:
        ValueError: naming the expected and the actual shape.

    Example:
        >>> check_shape(torch.zeros(4, 2, 3), "B 2 3")
        {'B': 4}
    """
    dims = spec.split()
    if x.dim() != len(dims):
        raise ValueError(f"{name} must have shape ({', '.join(dims)}), got {tuple(x.shape)}")
    sizes: dict[str, int] = {}
    for d, n in zip(dims, x.shape):
        if d.isdigit():
            if int(d) != n:
                raise ValueError(
                    f"{name} must have shape ({', '.join(dims)}), got {tuple(x.shape)}"
                )
        elif sizes.setdefault(d, n) != n:
            raise ValueError(
                f"{name} must have shape ({', '.join(dims)}) with equal {d}, got {tuple(x.shape)}"
            )
    return sizes


def _as_tensor(v: torch.Tensor | float | list[float], dtype: torch.dtype | None = None) -> torch.Tensor:
    t = torch.as_tensor(v)
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t.reshape(-1)


def _floats(*vals: torch.Tensor | float | list[float]) -> list[torch.Tensor]:
    """Broadcast scalars/sequences to 1-D tensors of one floating dtype (float64 if any is)."""
    ts = [_as_tensor(v) for v in vals]
    dt = ts[0].dtype
    for t in ts[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return list(torch.broadcast_tensors(*[t.to(dt) for t in ts]))


def _pack(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Stack (B, 2, 2) linear parts and (B, 2) translations into (B, 2, 3)."""
    if b is None:
        b = a.new_zeros(a.shape[0], 2)
    return torch.cat([a, b.unsqueeze(-1)], dim=-1)


def _rot(theta_rad: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta_rad), torch.sin(theta_rad)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def identity(n: int = 1, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The identity transform.

    Returns:
        Matrices of shape (n, 2, 3).
    """
    eye = torch.eye(2, 3, dtype=dtype or torch.get_default_dtype())
    return eye.expand(n, 2, 3).clone()


def translation(tx: torch.Tensor | float, ty: torch.Tensor | float) -> torch.Tensor:
    """Translation by ``(tx, ty)`` pixels (x right, y down).

    Returns:
        Matrices of shape (B, 2, 3), B the broadcast length of ``tx`` and ``ty``.
    """
    tx, ty = _floats(tx, ty)
    a = torch.eye(2, dtype=tx.dtype).expand(tx.shape[0], 2, 2)
    return _pack(a, torch.stack([tx, ty], -1))


def rotation(degrees: torch.Tensor | float) -> torch.Tensor:
    """Rotation about the canvas centre by ``degrees`` (clockwise on screen, y down).

    Multiples of 90° are exact (no rounding residue in the matrix).

    Returns:
        Matrices of shape (B, 2, 3).
    """
    deg = _as_tensor(degrees)
    a = _rot(torch.deg2rad(deg))
    # make grid symmetries exact: cos(90°) is 6e-17, not 0, in floating point. Only
    # angles that are multiples of 90° up to rounding: isclose's default rtol (1e-5 of
    # 90°) snapped -0.0008° to 0° (hypothesis found it in test_property_rotations_add)
    rem = torch.remainder(deg, 90.0)
    quarter = (rem <= 1e-9) | (rem >= 90.0 - 1e-9)
    a = torch.where(quarter[:, None, None], torch.round(a), a)
    return _pack(a)


def reflection(axis_degrees: torch.Tensor | float) -> torch.Tensor:
    """Reflection about a line through the centre at ``axis_degrees`` from the x axis.

    ``0`` mirrors y (an up-down flip, ``torch.flip(dims=[-2])``), ``90`` mirrors x
    (a left-right flip, ``torch.flip(dims=[-1])``), ``45`` swaps x and y (transpose).

    Returns:
        Matrices of shape (B, 2, 3), each with determinant −1.
    """
    deg = _as_tensor(axis_degrees)
    phi = torch.deg2rad(2.0 * deg)
    c, s = torch.cos(phi), torch.sin(phi)
    a = torch.stack([torch.stack([c, s], -1), torch.stack([s, -c], -1)], -2)
    exact = torch.isclose(torch.remainder(2.0 * deg, 90.0), deg.new_zeros(())) | torch.isclose(
        torch.remainder(2.0 * deg, 90.0), deg.new_full((), 90.0)
    )
    a = torch.where(exact[:, None, None], torch.round(a), a)
    return _pack(a)


def scaling(factor: torch.Tensor | float) -> torch.Tensor:
    """Isotropic scaling about the centre by ``factor`` (> 0).

    Returns:
        Matrices of shape (B, 2, 3).

    Raises:
        ValueError: if a factor is not positive.
    """
    s = _as_tensor(factor)
    if bool((s <= 0).any()):
        raise ValueError(f"scaling factors must be positive, got {s.tolist()}")
    a = s[:, None, None] * torch.eye(2, dtype=s.dtype)
    return _pack(a)


def anisotropic_scaling(
    sx: torch.Tensor | float,
    sy: torch.Tensor | float,
    axis_degrees: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Scaling by ``sx`` along an axis at ``axis_degrees`` and ``sy`` across it.

    ``A = R(φ) diag(sx, sy) R(−φ)``.

    Returns:
        Matrices of shape (B, 2, 3).

    Raises:
        ValueError: if a factor is not positive.
    """
    sx, sy, phi = _floats(sx, sy, axis_degrees)
    if bool((sx <= 0).any() or (sy <= 0).any()):
        raise ValueError(f"scaling factors must be positive, got {sx.tolist()}, {sy.tolist()}")
    r = _rot(torch.deg2rad(phi))
    d = torch.diag_embed(torch.stack([sx, sy], -1))
    return _pack(r @ d @ r.transpose(-1, -2))


def shear(k: torch.Tensor | float, axis_degrees: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Shear ``x ↦ x + k y`` along an axis at ``axis_degrees`` (0: horizontal shear).

    Returns:
        Matrices of shape (B, 2, 3), each with determinant 1.
    """
    k, phi = _floats(k, axis_degrees)
    r = _rot(torch.deg2rad(phi))
    s = torch.eye(2, dtype=k.dtype).repeat(k.shape[0], 1, 1)
    s[:, 0, 1] = k
    return _pack(r @ s @ r.transpose(-1, -2))


def affine(
    n: int,
    strength: float,
    generator: torch.Generator | None = None,
    max_condition: float = 4.0,
) -> torch.Tensor:
    """Random general affine maps at a given distance from the identity.

    ``A = expm(strength · N)`` with ``N`` a random 2×2 matrix of unit Frobenius
    norm (Gaussian entries, normalised): ``strength`` is the distance from the
    identity in the Lie algebra, so ``strength = 0`` is the identity, and every
    draw mixes rotation, scaling and shear. The determinant is positive
    (orientation-preserving: reflections are their own family). Draws whose
    condition number exceeds ``max_condition`` are rejected and redrawn.

    Args:
        n: how many maps.
        strength: the distance from the identity, ≥ 0.
        generator: for reproducible draws.
        max_condition: the largest condition number allowed, ≥ 1.

    Returns:
        Matrices of shape (n, 2, 3) in float64, no translation.

    Raises:
        ValueError: on a negative strength, a max_condition below 1, or a
            strength so large that no draw stays within max_condition.
    """
    if strength < 0:
        raise ValueError(f"affine strength must be >= 0, got {strength}")
    if max_condition < 1:
        raise ValueError(f"max_condition must be >= 1, got {max_condition}")
    out: list[torch.Tensor] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * max(n, 1):
            raise ValueError(
                f"affine strength {strength} almost never stays within condition number "
                f"{max_condition}: lower the strength or raise max_condition"
            )
        nrm = torch.randn(2, 2, generator=generator, dtype=torch.float64)
        a = torch.linalg.matrix_exp(strength * nrm / torch.linalg.norm(nrm))
        if float(torch.linalg.cond(a)) <= max_condition:
            out.append(a)
    if not out:
        return torch.zeros(0, 2, 3, dtype=torch.float64)
    return _pack(torch.stack(out))


def from_family(
    family: str,
    magnitude: float,
    *,
    generator: torch.Generator | None = None,
    max_condition: float = 4.0,
) -> torch.Tensor:
    """The transform of a family at a magnitude, as the dataset stage defines it.

    ========================  =================================================
    family                    magnitude
    ========================  =================================================
    ``translation``           shift by ``(m, m)`` pixels (x and y)
    ``rotation``              angle in degrees
    ``reflection``            axis angle in degrees (0: up-down, 90: left-right)
    ``scaling``               factor
    ``anisotropic_scaling``   factor m along x and 1/m along y (area kept)
    ``shear``                 horizontal shear coefficient
    ``affine``                distance from the identity of a random affine map
    ========================  =================================================

    Returns:
        One matrix of shape (2, 3) in float64.

    Raises:
        ValueError: on an unknown family, naming the known ones.
    """
    m = torch.tensor([float(magnitude)], dtype=torch.float64)
    if family == "translation":
        out = translation(m, m)
    elif family == "rotation":
        out = rotation(m)
    elif family == "reflection":
        out = reflection(m)
    elif family == "scaling":
        out = scaling(m)
    elif family == "anisotropic_scaling":
        out = anisotropic_scaling(m, 1.0 / m)
    elif family == "shear":
        out = shear(m)
    elif family == "affine":
        out = affine(1, float(magnitude), generator=generator, max_condition=max_condition)
    else:
        raise ValueError(f"unknown family {family!r}; known families: {', '.join(FAMILIES)}")
    return out[0]


def _homogeneous(m: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    bottom[..., 0, 2] = 1
    return torch.cat([m, bottom], dim=-2)


def compose(*mats: torch.Tensor) -> torch.Tensor:
    """Compose affine maps right to left: ``compose(g, h)`` applies h first, then g.

    Args:
        mats: matrices of shape (..., 2, 3), broadcastable.

    Returns:
        The composition, shape (..., 2, 3).
    """
    if not mats:
        raise ValueError("compose needs at least one matrix")
    out = _homogeneous(mats[0])
    for m in mats[1:]:
        out = out @ _homogeneous(m)
    return out[..., :2, :]


def invert(m: torch.Tensor) -> torch.Tensor:
    """The inverse affine map, ``[A⁻¹ | −A⁻¹ b]``.

    Args:
        m: matrices of shape (..., 2, 3).

    Returns:
        Shape (..., 2, 3).
    """
    a, b = m[..., :2], m[..., 2:]
    ai = torch.linalg.inv(a)
    return torch.cat([ai, -ai @ b], dim=-1)


@dataclass(frozen=True)
class Grid:
    """A sampling lattice on the image plane: where a map's pixels sit in the image.

    Pixel ``(row, col)`` of the map sits at image pixel index
    ``(offset_y + stride * row, offset_x + stride * col)`` of an image of
    ``image_height × image_width`` pixels.

    Attributes:
        height: rows of the map.
        width: columns of the map.
        stride: image pixels between neighbouring map pixels.
        offset_y: image row index of map row 0.
        offset_x: image column index of map column 0.
        image_height: rows of the image whose plane this is.
        image_width: columns of that image.
    """

    height: int
    width: int
    stride: float = 1.0
    offset_y: float = 0.0
    offset_x: float = 0.0
    image_height: int | None = None
    image_width: int | None = None

    @classmethod
    def image(cls, height: int, width: int) -> Grid:
        """The image's own lattice."""
        return cls(height, width, 1.0, 0.0, 0.0, height, width)

    @classmethod
    def centred(cls, image_height: int, image_width: int, stride: int) -> Grid:
        """The lattice of a layer that pools centred ``stride × stride`` blocks."""
        if image_height % stride or image_width % stride:
            raise ValueError(
                f"image size {image_height}x{image_width} is not divisible by stride {stride}"
            )
        off = (stride - 1) / 2
        return cls(
            image_height // stride, image_width // stride, stride, off, off, image_height, image_width
        )

    def _image_size(self) -> tuple[int, int]:
        h = self.image_height if self.image_height is not None else self.height
        w = self.image_width if self.image_width is not None else self.width
        return h, w

    def centred_from_index(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The 3×3 homogeneous map from map pixel indices (col, row) to centred image coordinates."""
        h, w = self._image_size()
        return torch.tensor(
            [
                [self.stride, 0.0, self.offset_x - (w - 1) / 2],
                [0.0, self.stride, self.offset_y - (h - 1) / 2],
                [0.0, 0.0, 1.0],
            ],
            dtype=dtype,
        )

    def normalised_from_index(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The 3×3 homogeneous map from map pixel indices to torch's normalised coordinates
        (``align_corners=False``: index ``k`` ↦ ``(2k + 1) / n − 1``)."""
        return torch.tensor(
            [
                [2.0 / self.width, 0.0, 1.0 / self.width - 1.0],
                [0.0, 2.0 / self.height, 1.0 / self.height - 1.0],
                [0.0, 0.0, 1.0],
            ],
            dtype=dtype,
        )


def to_theta(tgt_from_src: torch.Tensor, src: Grid, tgt: Grid | None = None) -> torch.Tensor:
    """Convert centred-pixel affine maps into torch's ``affine_grid`` ``theta``.

    **Convention**: input ``tgt_from_src`` maps centred image coordinates of the
    source to those of the target (pixels, (x, y) order). The output ``theta``
    maps *normalised target* coordinates to *normalised source* coordinates, as
    ``affine_grid`` expects (``align_corners=False``). Both grids may be feature
    lattices of any stride and offset on the same image plane.

    Args:
        tgt_from_src: shape (B, 2, 3).
        src: the lattice of the map that is sampled.
        tgt: the lattice of the output; defaults to ``src``.

    Returns:
        ``theta`` of shape (B, 2, 3), in the dtype of ``tgt_from_src``.
    """
    check_shape(tgt_from_src, "B 2 3", "tgt_from_src")
    tgt = src if tgt is None else tgt
    src_from_tgt = _homogeneous(invert(tgt_from_src.to(torch.float64)))
    # normalised tgt -> tgt index -> centred -> (inverse map) -> centred src -> src index -> normalised src
    n_s, _ = _normalised_from_centred(src)
    _, n_t_inv = _normalised_from_centred(tgt)
    theta = n_s @ src_from_tgt.cpu() @ n_t_inv
    return theta[..., :2, :].to(tgt_from_src.dtype).to(tgt_from_src.device)


@functools.lru_cache(maxsize=64)
def _normalised_from_centred(grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3×3 map from ``grid``'s centred image coordinates to its normalised ones, and
    its inverse (float64; cached: the optimisers convert matrices every iteration)."""
    dt = torch.float64
    n = grid.normalised_from_index(dt) @ torch.linalg.inv(grid.centred_from_index(dt))
    return n, torch.linalg.inv(n)


def warp(
    maps: torch.Tensor,
    tgt_from_src: torch.Tensor,
    grid: Grid | None = None,
    out_grid: Grid | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Apply affine transforms to images or feature maps: ``out(x) = maps(A⁻¹(x − b))``.

    **Convention**: ``tgt_from_src`` in centred image pixels, (x, y) order;
    bilinear sampling, zero padding outside the source, ``align_corners=False``.

    Args:
        maps: shape (B, C, H, W).
        tgt_from_src: shape (B, 2, 3), or (2, 3) for one map applied to all.
        grid: the lattice of ``maps`` on the image plane; defaults to the image
            lattice ``Grid.image(H, W)``.
        out_grid: the lattice of the output; defaults to ``grid``.
        mode: ``"bilinear"`` or ``"nearest"``.

    Returns:
        Shape (B, C, H_out, W_out).

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> y = warp(x, translation(1.0, 0.0))
        >>> y[0, 0, 0].tolist()
        [0.0, 0.0, 1.0, 2.0]
    """
    dims = check_shape(maps, "B C H W", "maps")
    if tgt_from_src.dim() == 2:
        tgt_from_src = tgt_from_src.expand(dims["B"], 2, 3)
    check_shape(tgt_from_src, "B 2 3", "tgt_from_src")
    if tgt_from_src.shape[0] != dims["B"]:
        raise ValueError(
            f"tgt_from_src has {tgt_from_src.shape[0]} matrices for {dims['B']} maps"
        )
    grid = Grid.image(dims["H"], dims["W"]) if grid is None else grid
    if (grid.height, grid.width) != (dims["H"], dims["W"]):
        raise ValueError(
            f"maps are {dims['H']}x{dims['W']} but the grid says {grid.height}x{grid.width}"
        )
    out_grid = grid if out_grid is None else out_grid
    theta = to_theta(tgt_from_src.to(torch.float64), grid, out_grid).to(maps.dtype).to(maps.device)
    sampling = F.affine_grid(
        theta, [dims["B"], dims["C"], out_grid.height, out_grid.width], align_corners=False
    )
    return F.grid_sample(maps, sampling, mode=mode, padding_mode="zeros", align_corners=False)
