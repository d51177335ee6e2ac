r"""The classifier's softmax temperature: :math:`p(x) = \mathrm{softmax}(f(x) / T)`.

``T`` minimises the mean log loss of out-of-sample decision values (leave-one-out or holdout
values of the selected predictor) over :math:`T \in [10^{-4}, 10^3]` (bounded scalar search in
:math:`\log T`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["fit_temperature"]


def fit_temperature(values: torch.Tensor, onehot: torch.Tensor) -> float:
    """The temperature minimising the log loss of ``softmax(values / T)`` for ``onehot`` labels.

    Parameters
    ----------
    values : (n, k) tensor
        Decision values.
    onehot : (n, k) tensor
        One-hot targets.
    """
    from scipy.optimize import minimize_scalar

    logits = values.detach().to("cpu", torch.float64)
    labels = onehot.detach().to("cpu", torch.float64).argmax(dim=1)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    result = minimize_scalar(nll, bounds=(math.log(1e-4), math.log(1e3)), method="bounded")
    return float(math.exp(result.x))
