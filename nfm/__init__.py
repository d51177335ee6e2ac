"""nfm: neural feature matrices, AGOP, the Neural Feature Ansatz and Recursive Feature Machines.

The main entry points:

* feature matrices of any PyTorch model: :func:`compute_agop`, :func:`compute_nfm`,
  :func:`nfa_report`, :class:`NFATracker` (figures in :mod:`nfm.viz.plotting`);
* Recursive Feature Machines as scikit-learn estimators: :class:`RFMRegressor`,
  :class:`RFMClassifier` and the tuned :class:`RFMSearchRegressor`, :class:`RFMSearchClassifier`;
* grokking of modular arithmetic: :mod:`nfm.grokking`; the tabular benchmark: :mod:`nfm.tabular`.

The public names are loaded on first use (PEP 562), so ``import nfm`` for feature-matrix work
loads neither scikit-learn, pandas nor matplotlib.

The package, one job per subpackage:

==================  ==========================================================================
``nfm.models``      layer selection, layer adapters and probes (linear, conv patches, attention
                    heads), hooks, restoring a model's state
``nfm.features``    data chunks, the gradient engine, mergeable sums, AGOP and NFM front ends,
                    output selection and the random sketch
``nfm.pruning``     unit / weight importance from AGOP and NFM, prune masks, RFM feature selection
``nfm.probes``      probes, concept directions, steering and neural collapse on hidden states
``nfm.hf``          pretrained Hugging Face transformers offline: loaders, text, output selection,
                    per-block analysis (optional extra ``hf``)
``nfm.distributed`` AGOP sums reduced across torch.distributed ranks, exact shards, DDP/FSDP
``nfm.ansatz``      NFA correlations, the best alpha, per-layer reports
``nfm.tracking``    the NFA tracker and its tidy history
``nfm.diagnostics`` why a model does not learn: signal through depth, ranks, dead units, verdicts
``nfm.linalg``      PSD matrix powers and matrix correlations
``nfm.kernels``     RFM kernels with closed-form input gradients
``nfm.solvers``     kernel ridge solvers (Cholesky, conjugate gradients)
``nfm.rfm``         the RFM fit loop, its estimators and the tuned search
``nfm.training``    a small MLP and a training loop that reports to a tracker
``nfm.viz``         figures and the HTML report
``nfm.datasets``    offline datasets for the main job
``nfm.cli``         the ``nfm`` command line
==================  ==========================================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "INPUT_KEY": "nfm.models.selection",
    "select_layers": "nfm.models.selection",
    "AGOPAccumulator": "nfm.features.accumulator",
    "accumulate_agop": "nfm.features.agop",
    "compute_agop": "nfm.features.agop",
    "compute_nfm": "nfm.features.nfm",
    "GaussianSketch": "nfm.features.outputs",
    "HeadSplit": "nfm.models.adapters.probes",
    "LayerSelectionError": "nfm.exceptions",
    "NFMError": "nfm.exceptions",
    "NFMInputError": "nfm.exceptions",
    "NumericalWarning": "nfm.exceptions",
    "matrix_correlation": "nfm.linalg.correlation",
    "symmetric_matrix_power": "nfm.linalg.matrix_functions",
    "NFAReport": "nfm.ansatz.report",
    "nfa_report": "nfm.ansatz.report",
    "output_layer_names": "nfm.ansatz.report",
    "fit_alpha": "nfm.ansatz.correlation",
    "nfa_correlation": "nfm.ansatz.correlation",
    "NFATracker": "nfm.tracking.tracker",
    "TrackingHistory": "nfm.tracking.history",
    "make_mlp": "nfm.training.mlp",
    "train_classifier": "nfm.training.loop",
    "RFMClassifier": "nfm.rfm.estimators",
    "RFMRegressor": "nfm.rfm.estimators",
    "RFMSearchClassifier": "nfm.rfm.search",
    "RFMSearchRegressor": "nfm.rfm.search",
}

__all__ = [
    "INPUT_KEY",
    "AGOPAccumulator",
    "GaussianSketch",
    "HeadSplit",
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


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nfm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # static type checkers and IDEs see the eager imports
    from nfm.ansatz.correlation import fit_alpha, nfa_correlation
    from nfm.ansatz.report import NFAReport, nfa_report, output_layer_names
    from nfm.exceptions import LayerSelectionError, NFMError, NFMInputError, NumericalWarning
    from nfm.features.accumulator import AGOPAccumulator
    from nfm.features.agop import accumulate_agop, compute_agop
    from nfm.features.nfm import compute_nfm
    from nfm.features.outputs import GaussianSketch
    from nfm.linalg.correlation import matrix_correlation
    from nfm.linalg.matrix_functions import symmetric_matrix_power
    from nfm.models.adapters.probes import HeadSplit
    from nfm.models.selection import INPUT_KEY, select_layers
    from nfm.rfm.estimators import RFMClassifier, RFMRegressor
    from nfm.rfm.search import RFMSearchClassifier, RFMSearchRegressor
    from nfm.tracking.history import TrackingHistory
    from nfm.tracking.tracker import NFATracker
    from nfm.training.loop import train_classifier
    from nfm.training.mlp import make_mlp
