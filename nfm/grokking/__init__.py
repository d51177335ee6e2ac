"""Grokking of modular arithmetic by Recursive Feature Machines and by neural networks.

* :mod:`nfm.grokking.data` -- the tasks (add, sub, mul, div mod p) and the discrete-log order;
* :mod:`nfm.grokking.measures` -- progress measures: circulant / Hankel deviation of a
  feature-matrix block, AGOP alignment, Fourier spectrum;
* :mod:`nfm.grokking.kernel` -- the published kernel setup through :class:`nfm.rfm.RFMRegressor`,
  and its controls (plain kernel, random circulant metric);
* :mod:`nfm.grokking.neural` -- a two-layer quadratic network tracked with
  :class:`nfm.tracking.NFATracker`;
* :mod:`nfm.grokking.plots` -- the figures.

``docs/grokking.md`` has the definitions and the results.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names -> submodule. Loaded lazily (PEP 562) so that ``nfm grokking --help`` and the
# light submodules (data, measures) do not import the estimator, the tracker and matplotlib.
_EXPORTS: dict[str, str] = {
    "FourierSpectrum": "measures",
    "KernelGrokkingResult": "kernel",
    "ModularArithmeticDataset": "data",
    "NeuralGrokkingResult": "neural",
    "OPERATIONS": "data",
    "PUBLISHED_RFM_PARAMS": "kernel",
    "QuadraticActivation": "neural",
    "StructureDeviation": "measures",
    "agop_alignment": "measures",
    "circulant_deviation": "measures",
    "discrete_log": "data",
    "discrete_log_order": "data",
    "feature_block": "measures",
    "feature_order": "data",
    "fixed_metric_scores": "kernel",
    "fourier_spectrum": "measures",
    "grokking_network": "neural",
    "grokking_rfm": "kernel",
    "hankel_deviation": "measures",
    "is_prime": "data",
    "modular_arithmetic_dataset": "data",
    "modular_operation": "data",
    "nearest_circulant": "measures",
    "nearest_hankel": "measures",
    "one_hot_pairs": "data",
    "plot_feature_matrices_over_time": "plots",
    "plot_fourier_spectrum": "plots",
    "plot_grokking_progress": "plots",
    "primitive_root": "data",
    "random_circulant_metric": "kernel",
    "run_kernel_grokking": "kernel",
    "run_neural_grokking": "neural",
    "structure_deviation": "measures",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nfm.grokking' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nfm.grokking.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "OPERATIONS",
    "PUBLISHED_RFM_PARAMS",
    "FourierSpectrum",
    "KernelGrokkingResult",
    "ModularArithmeticDataset",
    "NeuralGrokkingResult",
    "QuadraticActivation",
    "StructureDeviation",
    "agop_alignment",
    "circulant_deviation",
    "discrete_log",
    "discrete_log_order",
    "feature_block",
    "feature_order",
    "fixed_metric_scores",
    "fourier_spectrum",
    "grokking_network",
    "grokking_rfm",
    "hankel_deviation",
    "is_prime",
    "modular_arithmetic_dataset",
    "modular_operation",
    "nearest_circulant",
    "nearest_hankel",
    "one_hot_pairs",
    "plot_feature_matrices_over_time",
    "plot_fourier_spectrum",
    "plot_grokking_progress",
    "primitive_root",
    "random_circulant_metric",
    "run_kernel_grokking",
    "run_neural_grokking",
    "structure_deviation",
]
