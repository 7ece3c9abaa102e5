"""Claim families and the theory's prediction for each.

**Claim families** refine the seven transformation families where the theory
distinguishes cases: ``translation`` holds the shifts by multiples of the
layer's stride (always predicted to align: CNNs are translation covariant),
``translation_substride`` the others (aliasing, not the theorem: no
prediction); ``rotation90`` and ``flip`` hold the exact symmetries of the pixel
grid (multiples of 90°; reflections about the axes and diagonals), split from
``rotation`` and ``reflection``. A network's declared ``invariant_to`` gives the
prediction: a family is predicted to align if it, or a family containing it,
is declared (``rotation`` contains ``rotation90``, ``reflection`` contains
``flip``).

**Deformation size** orders a claim's magnitudes (:func:`deformation`): the
verdict rule (:mod:`featalign.summary.claims`) needs the largest and the
smallest deformation of the sweep, and magnitudes of equal size are pooled.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CLAIM_FAMILIES", "claim_family", "deformation", "predicted", "transform_family"]

#: Claim families in display order (see the module docstring).
CLAIM_FAMILIES: tuple[str, ...] = (
    "translation",
    "translation_substride",
    "rotation90",
    "rotation",
    "flip",
    "reflection",
    "scaling",
    "anisotropic_scaling",
    "shear",
    "affine",
)

#: Which declared invariance implies which claim family aligns.
_IMPLIED_BY = {
    "translation": ("translation",),
    "rotation90": ("rotation90", "rotation"),
    "rotation": ("rotation",),
    "flip": ("flip", "reflection"),
    "reflection": ("reflection",),
    "scaling": ("scaling",),
    "anisotropic_scaling": ("anisotropic_scaling",),
    "shear": ("shear",),
    "affine": ("affine",),
}


def _is_multiple(x: float, step: float, tol: float = 1e-9) -> bool:
    return abs(x / step - round(x / step)) < tol


def claim_family(family: str, magnitude: float, stride: int) -> str:
    """The claim family of one transform at a layer of the given stride.

    Example:
        >>> claim_family("translation", 4, 2), claim_family("translation", 1, 2)
        ('translation', 'translation_substride')
        >>> claim_family("rotation", 270, 1), claim_family("reflection", 30, 1)
        ('rotation90', 'reflection')
    """
    if family == "translation":
        return "translation" if _is_multiple(magnitude, stride) else "translation_substride"
    if family == "rotation" and _is_multiple(magnitude, 90.0):
        return "rotation90"
    if family == "reflection" and _is_multiple(magnitude, 45.0):
        return "flip"
    return family


def transform_family(claim: str) -> str:
    """The transformation family a claim family refines (the inverse of :func:`claim_family`).

    Example:
        >>> transform_family("rotation90"), transform_family("flip"), transform_family("shear")
        ('rotation', 'reflection', 'shear')
    """
    return {
        "translation_substride": "translation",
        "rotation90": "rotation",
        "flip": "reflection",
    }.get(claim, claim)


def predicted(claim: str, invariant_to: Iterable[str]) -> str:
    """The theory's prediction for a claim family: ``aligned``, ``not aligned`` or ``none``.

    Translations by stride multiples are always predicted to align (translation
    covariance); sub-stride shifts carry no prediction.

    Example:
        >>> predicted("rotation90", ["rotation"]), predicted("shear", ["rotation"])
        ('aligned', 'not aligned')
    """
    declared = set(invariant_to)
    if claim == "translation":
        return "aligned"
    if claim == "translation_substride":
        return "none"
    return "aligned" if declared.intersection(_IMPLIED_BY[claim]) else "not aligned"


def deformation(family: str, magnitude: float) -> float:
    """The size of a transform: ``‖A − I‖_F`` of its linear part, or the shift's length.

    The transform is built by :func:`featalign.geometry.from_family`, as the
    dataset stage builds it:

    * ``translation``: the length of the shift ``(m, m)``, ``√2 |m|`` (A = I);
    * ``affine``: the magnitude itself. :func:`featalign.geometry.affine` draws
      ``A = expm(m N)`` with ``‖N‖_F = 1``, so m *is* the distance from the
      identity by definition (in the Lie algebra, ``‖log A‖_F = m``); the
      Frobenius distance ``‖A − I‖_F = m + O(m²)`` depends on the random draw
      ``N`` as well, so it is not a function of the magnitude (and a claim pools
      the draws of one magnitude);
    * every other family: ``‖A − I‖_F``. Reflections all have size 2 (A is
      symmetric orthogonal with eigenvalues ±1), rotations by ±θ the same size
      ``2√2 |sin(θ/2)|``, a scaling m the size ``√2 |m − 1|``.

    Example:
        >>> round(deformation("translation", 2), 4), deformation("shear", -0.5)
        (2.8284, 0.5)
        >>> deformation("reflection", 0), round(deformation("reflection", 30), 12)
        (2.0, 2.0)
        >>> deformation("affine", 0.4)
        0.4
    """
    if family == "affine":
        return float(magnitude)
    import torch  # here, not at the top: the figure jobs that import this need no torch

    from featalign import geometry

    m = geometry.from_family(family, magnitude)
    if family == "translation":
        return float(torch.linalg.norm(m[:, 2]))
    return float(torch.linalg.norm(m[:, :2] - torch.eye(2, dtype=m.dtype)))
