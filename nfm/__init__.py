"""nfm: neural feature matrices, AGOP, the Neural Feature Ansatz and Recursive Feature Machines."""

from nfm.exceptions import LayerSelectionError, NFMError, NFMInputError, NumericalWarning
from nfm.linalg import matrix_correlation, symmetric_matrix_power

__version__ = "0.1.0"

__all__ = [
    "LayerSelectionError",
    "NFMError",
    "NFMInputError",
    "NumericalWarning",
    "__version__",
    "matrix_correlation",
    "symmetric_matrix_power",
]
