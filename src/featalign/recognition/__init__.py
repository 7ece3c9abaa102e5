"""The recognize stage: does warping the feature maps at layer k restore what a classifier
decides? :mod:`~featalign.recognition.measure` computes the decisions (the stage),
:mod:`~featalign.recognition.config` checks the config's ``recognition`` section; their
tables and claims are :mod:`featalign.summary.recognition`'s. Imports nothing, so that a
job's code digest covers only the modules it runs."""
