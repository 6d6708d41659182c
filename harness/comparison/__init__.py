"""Paired comparison of two arms of one suite: two models of a run, or this run and a saved baseline.

- :mod:`.stats`: the paired statistics (bootstrap intervals over cases or clusters, McNemar, Holm,
  minimum detectable difference). Pure numpy/scipy.
- :mod:`.statistics`: each metric of a suite as a statistic over per-case columns of both arms.
"""
