"""The Neural Feature Ansatz and FACT: correlations, the best alpha, nulls, per-layer reports."""

from nfm.ansatz.correlation import correlation_column, fit_alpha, nfa_correlation
from nfm.ansatz.fact import FACTReport, compute_fact, fact_report
from nfm.ansatz.null import null_model, reinitialized_copy, shuffled_copy
from nfm.ansatz.report import NFAReport, nfa_report, output_layer_names

__all__ = [
    "FACTReport",
    "NFAReport",
    "compute_fact",
    "correlation_column",
    "fact_report",
    "fit_alpha",
    "nfa_correlation",
    "nfa_report",
    "null_model",
    "output_layer_names",
    "reinitialized_copy",
    "shuffled_copy",
]
