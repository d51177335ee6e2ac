"""Linear algebra shared by the feature-matrix and RFM code: PSD matrix powers, correlations."""

from nfm.linalg.correlation import CorrelationKind, matrix_correlation
from nfm.linalg.matrix_functions import (
    PSDEigh,
    power_from_eigh,
    psd_eigh,
    symmetric_matrix_power,
)

__all__ = [
    "CorrelationKind",
    "PSDEigh",
    "matrix_correlation",
    "power_from_eigh",
    "psd_eigh",
    "symmetric_matrix_power",
]
