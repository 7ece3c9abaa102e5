"""Figures of the workflow: errors, excess, verdicts, an example, optimiser gain, training.

Every ``plot_*`` function reads tables or files (never live objects), draws one
figure with seaborn and matplotlib (Agg backend, headless), writes it as a PNG
and a PDF at the given paths (atomically), closes it and returns the closed
:class:`~matplotlib.figure.Figure` so that tests can inspect its axes. Each figure
rule of the workflow runs one script, ``workflow/scripts/figure_<name>.py``, that
calls one of them.

Modules, one figure each, plus the shared style:

* :mod:`featalign.figures.style` — fonts and print size (``RC``), palettes, labels,
  atomic PNG + PDF saving (``save``), lines with interval bands.
* :mod:`featalign.figures.error_vs_magnitude` — ``plot_error_vs_magnitude``: error
  against magnitude per layer and family, one line per measure.
* :mod:`featalign.figures.excess_vs_depth` — ``excess_by_depth`` (the numbers, the
  claims table's estimator) and ``plot_excess_vs_depth``.
* :mod:`featalign.figures.verdict_grid` — ``plot_verdict_grid``: the claims table as
  a grid of verdicts, disagreements marked.
* :mod:`featalign.figures.example_maps` — ``example_panels`` and
  ``default_transform``: the example's feature maps and errors (no drawing).
* :mod:`featalign.figures.example_panel` — ``plot_example_panel``: draws them.
* :mod:`featalign.figures.affine_vs_oracle` — ``plot_affine_vs_oracle``: what the
  optimiser gains over the inverse warp.
* :mod:`featalign.figures.training_curve` — ``plot_training_curve``: the MNIST
  network's training history.

**The excess** shown is :func:`featalign.summary.excess.problem_excess` with the
interval of :func:`featalign.summary.excess.mean_interval`, as in ``claims.csv``.

This file imports nothing, on purpose: the workflow's code digests
(:mod:`featalign.provenance`) follow imports, and a package that imported its
modules would make every figure job depend on every figure. Import from the module.
"""
