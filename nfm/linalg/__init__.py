"""Linear algebra shared by the feature-matrix and RFM code: PSD matrix powers, correlations."""

from nfm.linalg.correlation import CorrelationKind, matrix_correlation
from nfm.linalg.matrix_functions import symmetric_matrix_power

__all__ = ["CorrelationKind", "matrix_correlation", "symmetric_matrix_power"]
