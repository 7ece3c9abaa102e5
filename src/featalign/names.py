"""Names shared by computing and reading results: the transformation families, the
alignment measures, the evaluations of a layer and the recognize stage's alignments.
Apart from the modules that compute with them
(:mod:`featalign.geometry`, :mod:`featalign.align.measures`), so that the jobs that only
read and plot results need no torch (its import is 2-3 s of each such job's start-up)."""

from __future__ import annotations

__all__ = [
    "ALIGNMENTS",
    "EVALUATIONS",
    "EVALUATION_ORDER",
    "FAMILIES",
    "FITTED",
    "MEASURES",
    "PRIMARY_SET",
    "RECOGNITION_EVALUATION",
]

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

#: The two evaluations of a layer (README "Verdicts"), in the order of an alignment file's
#: ``evaluation`` dimension (:mod:`featalign.align.files`).
EVALUATIONS: tuple[str, str] = ("as_built", "dense")

#: The evaluations in display order: dense maps judge the theorem, maps as built show
#: what a spatial transformer on the real network faces.
EVALUATION_ORDER: tuple[str, str] = ("dense", "as_built")

#: The recognize stage's alignments fed to the head after layer k, in the order of the
#: ``alignment`` dimension of a recognition file (:mod:`featalign.recognition.measure`).
ALIGNMENTS: tuple[str, ...] = ("none", "oracle", "affine", "dense", "input")

#: The sample set each alignment is judged on: affine and dense need the align stage's warps.
PRIMARY_SET: dict[str, str] = {
    "none": "recognition",
    "oracle": "recognition",
    "affine": "alignment",
    "dense": "alignment",
    "input": "recognition",
}

#: The alignments the align stage fits (computed on the alignment set only).
FITTED: tuple[str, ...] = ("affine", "dense")

#: The evaluation whose warps the affine and dense alignments use (what an STN on the real
#: network faces).
RECOGNITION_EVALUATION = "as_built"
