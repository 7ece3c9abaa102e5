"""The STN study: spatial transformers trained at the input, on feature maps, and with
shared localisation, on rotated and scaled MNIST digits (README, "STN study").

``config`` (the ``stn`` section's checks and its plan), ``data`` (digits, the split,
the transformations), ``model`` (the classifier and its placements), ``train`` (one
run: training, measures, result file) and ``summary`` (tables and claims). This
``__init__`` imports nothing, so that a job's code digest covers only what it runs.
"""
