"""Analysis of learning curves: from raw curves to scaling-law fits.

Front half (curves -> D_J):

* :mod:`~valuescale.analysis.ingest` -- the authors' published archives and our own runs into one
  long curve table; atomic table writer.
* :mod:`~valuescale.analysis.preprocess` -- per-configuration return matrices, truncation,
  post-reset dip removal, isotonic regression.
* :mod:`~valuescale.analysis.thresholds` -- the 20 return thresholds per env.
* :mod:`~valuescale.analysis.crossings` -- D_J with a vectorised seed bootstrap.
* :mod:`~valuescale.analysis.best_config` -- best batch size / learning rate per (σ, N).

Back half: fits of the batch-size and data-efficiency laws and the compute/budget allocation.
"""
