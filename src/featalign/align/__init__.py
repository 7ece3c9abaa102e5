"""Aligning feature maps: the measures of one layer, by concept.

For one layer, how well Γ(T_g f) (features of transformed images, the *moving*
maps) can be brought back onto Γ(f) (features of the originals, the *target*), by
warps of increasing power and by comparison baselines (DESIGN.md, "Measures").

Modules:

* :mod:`~featalign.align.measures` — the seven ``MEASURES``, their one
  ``NORMALISATION`` (the error: a squared relative error), ``relative_error``, the
  region R (``region_mask``), the points of R, the one squared-error reduction, the
  one flat-target guard, sampling at R (the one computation of affine sampling
  positions) and ``warp_loss``.
* :mod:`~featalign.align.starts` — the optimiser's starts: ``SYMMETRY_NAMES``,
  ``grid_symmetries``, ``family_starts``.
* :mod:`~featalign.align.pyramid` — Gaussian blur in feature pixels and the σs of
  the blur pyramid.
* :mod:`~featalign.align.affine` — the ``affine`` measure: ``AffineFit`` and
  ``fit_affine`` (Gauss–Newton, Adam, pyramid levels, starts batched per map).
* :mod:`~featalign.align.dense` — the ``dense`` measure: ``DenseFit``, ``fit_dense``.
* :mod:`~featalign.align.mixing` — the ``mixing`` measure: ``mixing_error``.
* :mod:`~featalign.align.layer` — the per-layer driver: ``ALIGNMENT_DEFAULTS``,
  ``LayerAlignment``, ``align_layer``.
* :mod:`~featalign.align.files` — the ``align`` rule's stage: one layer of a
  features file in, an alignment ``xarray.Dataset`` out (``alignment_dataset``).

Vocabulary: a *problem* is one moving map and its target; ``target_index`` (P,)
names the target (sample) of each problem.

This ``__init__`` imports nothing, on purpose: the workflow's code digests
(:mod:`featalign.provenance`) follow imports, and an importing ``__init__`` would
make every job depend on every module. Import from the modules, with absolute
imports (``from featalign.align.measures import MEASURES``).
"""
