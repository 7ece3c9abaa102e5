"""Names shared by computing and reading results: the transformation families and the
alignment measures. Apart from the modules that compute with them
(:mod:`featalign.geometry`, :mod:`featalign.align.measures`), so that the jobs that only
read and plot results need no torch (its import is 2-3 s of each such job's start-up)."""

from __future__ import annotations

__all__ = ["FAMILIES", "MEASURES"]

#: The transformation families of the theory, in the order of the prediction table.
FAMILIES: tuple[str, ...] = (
    "translation",
    "rotation",
    "reflection",
    "scaling",
    "anisotropic_scaling",
    "shear",
    "affine",
)

#: The seven measures, in the order of the last axis of ``LayerAlignment.errors``
#: (README "Measures").
MEASURES: tuple[str, ...] = ("none", "oracle", "affine", "dense", "mixing", "input", "constant")
