"""Figures (:mod:`nfm.viz.plotting`) and the self-contained HTML report (:mod:`nfm.viz.report`).

Importing :mod:`nfm.viz` loads neither matplotlib nor the report code; import the submodule you
need.
"""
