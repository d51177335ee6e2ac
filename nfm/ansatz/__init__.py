"""The Neural Feature Ansatz: NFA correlations, the best alpha, and per-layer reports."""

from nfm.ansatz.correlation import correlation_column, fit_alpha, nfa_correlation
from nfm.ansatz.report import NFAReport, nfa_report, output_layer_names

__all__ = [
    "NFAReport",
    "correlation_column",
    "fit_alpha",
    "nfa_correlation",
    "nfa_report",
    "output_layer_names",
]
