"""Diffeo: normalizing flows in Rust, from Python.

A flow defines a density by pushing a simple base density through an invertible map;
``Flow`` fits one to data by maximum likelihood, evaluates ``log_prob``, draws ``sample``\\ s,
and reads and writes the same model files as the ``diffeo`` command line. ``vi`` fits a flow
to an unnormalized density (reverse KL), ``npe`` a posterior to simulations.

>>> import numpy as np, diffeo
>>> flow = diffeo.Flow.maf(2)
>>> report = flow.fit(np.random.default_rng(0).normal(size=(5000, 2)), steps=500, progress=False)
>>> flow.log_prob(np.zeros((1, 2))).shape
(1,)
"""

from ._diffeo import FitReport, Flow, Posterior, __version__, families, npe, vi

__all__ = ["Flow", "FitReport", "Posterior", "families", "npe", "vi", "__version__"]
