r"""The RFM metric: its starting value and its update from the AGOP.

:math:`M_0` is the identity or a user matrix; after each predictor fit
:math:`M_{t+1} = \mathrm{normalise}(G^{p})` with :math:`G` the AGOP (or its diagonal) and
``p = metric_power``, where ``normalise`` divides by the largest entry (``"max"``), scales to
trace ``d`` (``"trace"``) or leaves the matrix as it is (``"none"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nfm._utils.arrays import check_finite
from nfm.exceptions import NFMInputError
from nfm.linalg import symmetric_matrix_power

__all__ = ["MetricUpdate", "initial_metric", "metric_root"]


@dataclass(frozen=True)
class MetricUpdate:
    r"""The map :math:`G \mapsto \mathrm{normalise}(G^{p})` (or of :math:`\mathrm{diag}(G)`).

    Attributes
    ----------
    power : float
        :math:`p > 0`.
    normalization : {"max", "none", "trace"}
    diag : bool
        Keep only the diagonal of ``G`` (its negative rounding clamped at 0).
    """

    power: float
    normalization: str
    diag: bool = False

    def __call__(self, G: torch.Tensor) -> torch.Tensor | None:
        """The next metric, or ``None`` when it is zero or not finite (a constant predictor)."""
        if self.diag:
            M = torch.diag(torch.diagonal(G).clamp(min=0).pow(self.power))
        else:
            M = symmetric_matrix_power(G, float(self.power))
        if not bool(torch.isfinite(M).all()):
            return None
        scale = float(M.abs().max())
        if scale == 0.0:
            return None
        if self.normalization == "max":
            M = M / scale
        elif self.normalization == "trace":
            M = M * (M.shape[0] / float(torch.diagonal(M).sum()))
        return M


def initial_metric(
    value: Any, d: int, *, dtype: torch.dtype, device: torch.device, owner: str
) -> torch.Tensor:
    """:math:`M_0`: the identity for ``None``, else ``value`` ((d, d) or its length-d diagonal).

    Raises
    ------
    NFMInputError
        If the shape does not match ``d``, or the matrix is not finite or not symmetric.
    """
    if value is None:
        return torch.eye(d, dtype=dtype, device=device)
    if isinstance(value, torch.Tensor):
        M0 = value.detach().to(device=device, dtype=dtype)
    else:
        M0 = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(device=device, dtype=dtype)
    if M0.ndim == 1:
        M0 = torch.diag(M0)
    if M0.shape != (d, d):
        raise NFMInputError(
            f"{owner}: initial_metric must be a ({d}, {d}) matrix (or a length-{d} diagonal) "
            f"for X with {d} features; got shape {tuple(M0.shape)}"
        )
    check_finite(M0, "initial_metric")
    if not torch.allclose(M0, M0.T, rtol=1e-5, atol=1e-8 * float(M0.abs().max() + 1)):
        raise NFMInputError(f"{owner}: initial_metric must be symmetric")
    return 0.5 * (M0 + M0.T)


def metric_root(M: torch.Tensor) -> torch.Tensor:
    r""":math:`M^{1/2}`, with exact square roots when ``M`` is diagonal."""
    if bool((M == torch.diag(torch.diagonal(M))).all()):
        return torch.diag(torch.diagonal(M).clamp(min=0).sqrt())
    return symmetric_matrix_power(M, 0.5)
