"""nfm: neural feature matrices, AGOP, the Neural Feature Ansatz and Recursive Feature Machines.

The main entry points:

* feature matrices of any PyTorch model: :func:`compute_agop`, :func:`compute_nfm`,
  :func:`nfa_report`, :class:`NFATracker` (figures in :mod:`nfm.plotting`, imported on demand so
  that ``import nfm`` does not load matplotlib);
* Recursive Feature Machines as scikit-learn estimators: :class:`RFMRegressor`,
  :class:`RFMClassifier` and the tuned :class:`RFMSearchRegressor`, :class:`RFMSearchClassifier`;
* grokking of modular arithmetic: :mod:`nfm.grokking`; the tabular benchmark: :mod:`nfm.tabular`.
"""

from nfm.agop import AGOPAccumulator, accumulate_agop, compute_agop, compute_nfm
from nfm.exceptions import LayerSelectionError, NFMError, NFMInputError, NumericalWarning
from nfm.layers import INPUT_KEY, select_layers
from nfm.linalg import matrix_correlation, symmetric_matrix_power
from nfm.model_selection import RFMSearchClassifier, RFMSearchRegressor
from nfm.nfa import NFAReport, fit_alpha, nfa_correlation, nfa_report, output_layer_names
from nfm.rfm import RFMClassifier, RFMRegressor
from nfm.tracking import NFATracker, TrackingHistory
from nfm.training import make_mlp, train_classifier

__version__ = "0.1.0"

__all__ = [
    "INPUT_KEY",
    "AGOPAccumulator",
    "LayerSelectionError",
    "NFAReport",
    "NFATracker",
    "NFMError",
    "NFMInputError",
    "NumericalWarning",
    "RFMClassifier",
    "RFMRegressor",
    "RFMSearchClassifier",
    "RFMSearchRegressor",
    "TrackingHistory",
    "__version__",
    "accumulate_agop",
    "compute_agop",
    "compute_nfm",
    "fit_alpha",
    "make_mlp",
    "matrix_correlation",
    "nfa_correlation",
    "nfa_report",
    "output_layer_names",
    "select_layers",
    "symmetric_matrix_power",
    "train_classifier",
]
