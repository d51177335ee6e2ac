r"""Input feature selection from an AGOP diagonal: the fewest features covering a share of it.

Given non-negative importances :math:`g_1, \dots, g_d` (the diagonal of an AGOP, e.g. of a
fitted Recursive Feature Machine's predictor, :func:`rfm_agop_diagonal`), sort them in
decreasing order :math:`g_{(1)} \ge g_{(2)} \ge \dots` and keep the first

.. math:: k = \min\{k : \textstyle\sum_{i \le k} g_{(i)} \ge c \sum_i g_i\}

features, :math:`c` the ``coverage``. No smaller set of features covers that share (the
:math:`k` largest entries have the largest sum of any :math:`k` entries), so :math:`k` is the
fewest features that do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nfm.exceptions import NFMInputError

__all__ = ["FeatureSelection", "rfm_agop_diagonal", "select_by_coverage"]

#: Relative size below which a negative diagonal entry is taken as rounding noise (set to 0).
NEGATIVE_TOLERANCE = 1e-10


@dataclass(frozen=True)
class FeatureSelection:
    """The features :func:`select_by_coverage` keeps.

    Attributes
    ----------
    indices : (k,) int ndarray
        Column indices of the kept features, most important first.
    coverage : float
        The share of the diagonal that was asked for.
    covered : float
        The share the kept features cover (``>= coverage``).
    n_features_in : int
        Number of features before selection.
    """

    indices: np.ndarray
    coverage: float
    covered: float
    n_features_in: int

    @property
    def n_selected(self) -> int:
        """Number of kept features."""
        return int(self.indices.size)

    def transform(self, X: Any) -> Any:
        """The kept columns of ``X`` (numpy array, tensor or DataFrame), in importance order."""
        if hasattr(X, "iloc"):
            return X.iloc[:, self.indices]
        shape = tuple(X.shape) if hasattr(X, "shape") else None
        if shape is None or len(shape) != 2 or shape[1] != self.n_features_in:
            raise NFMInputError(
                f"X must be a 2-d array with {self.n_features_in} columns; got shape {shape}"
            )
        if isinstance(X, torch.Tensor):
            return X[:, torch.as_tensor(self.indices, device=X.device)]
        return np.asarray(X)[:, self.indices]


def _diagonal_vector(diagonal: Any) -> np.ndarray:
    if isinstance(diagonal, torch.Tensor):
        diagonal = diagonal.detach().to("cpu", torch.float64).numpy()
    try:
        g = np.asarray(diagonal, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise NFMInputError(
            f"diagonal must be a 1-d array of numbers; got {type(diagonal).__name__}"
        ) from exc
    if g.ndim != 1 or g.size == 0:
        raise NFMInputError(f"diagonal must be a non-empty 1-d array; got shape {g.shape}")
    if not np.isfinite(g).all():
        raise NFMInputError("diagonal has NaN or infinite entries")
    scale = float(np.abs(g).max())
    if g.min() < -NEGATIVE_TOLERANCE * scale:
        raise NFMInputError(
            f"diagonal must be non-negative (the diagonal of a PSD matrix); its smallest "
            f"entry is {g.min():.3g} (largest magnitude {scale:.3g})"
        )
    g = np.clip(g, 0.0, None)
    if not g.sum() > 0:
        raise NFMInputError("diagonal is all zero: no feature carries any weight to select by")
    return g


def select_by_coverage(diagonal: Any, coverage: float) -> FeatureSelection:
    r"""The fewest features whose diagonal entries sum to at least ``coverage`` of the total.

    Parameters
    ----------
    diagonal : (d,) array or tensor
        Non-negative importances, e.g. an AGOP diagonal (tiny negative rounding noise, below
        :data:`NEGATIVE_TOLERANCE` of the largest entry, is set to 0).
    coverage : float in (0, 1]
        ``c`` of the module docstring; 1 keeps every feature with a non-zero entry.

    Returns
    -------
    FeatureSelection
        Ties in the diagonal are broken by position (the lower index is kept first).

    Raises
    ------
    NFMInputError
        ``coverage`` outside (0, 1], a diagonal that is not 1-d, empty, not finite, negative
        or all zero.
    """
    if (
        isinstance(coverage, bool)
        or not isinstance(coverage, (int, float, np.integer, np.floating))
        or not math.isfinite(float(coverage))
        or not 0.0 < float(coverage) <= 1.0
    ):
        raise NFMInputError(
            f"coverage must be a number in (0, 1] (the share of the diagonal to keep); "
            f"got {coverage!r}"
        )
    g = _diagonal_vector(diagonal)
    order = np.argsort(-g, kind="stable")
    total = float(g.sum())
    shares = np.cumsum(g[order]) / total
    # a tiny slack: the share of all d features is 1 up to rounding, so coverage=1 is reachable
    k = int(np.searchsorted(shares, float(coverage) * (1.0 - 1e-12), side="left")) + 1
    k = min(k, g.size)
    return FeatureSelection(
        indices=order[:k].copy(),
        coverage=float(coverage),
        covered=float(min(shares[k - 1], 1.0)),
        n_features_in=int(g.size),
    )


def rfm_agop_diagonal(estimator: Any, X: Any = None, *, source: str = "agop") -> np.ndarray:
    r"""The diagonal of a fitted Recursive Feature Machine's AGOP (or of its metric).

    * ``source="agop"``: :math:`\operatorname{diag} G`, :math:`G = \frac1m \sum_{x}
      \sum_c \nabla f_c(x) \nabla f_c(x)^T` the AGOP of the fitted predictor :math:`f` (its
      metric ``M_``, coefficients ``dual_coef_`` and training points ``X_fit_``) over the rows
      of ``X`` (default the training points), computed in float64 with the estimator's kernel
      and its ``centered`` setting;
    * ``source="metric"``: :math:`\operatorname{diag} M`, the metric the predictor uses (the
      normalised power :math:`G^{p}` of the previous iteration's AGOP; the estimator's
      ``feature_importances_`` up to a factor).

    Parameters
    ----------
    estimator : fitted nfm.RFMClassifier or nfm.RFMRegressor
    X : (m, d) array, optional
        Rows to average the gradients over (training rows, not the test set).
    source : {"agop", "metric"}

    Returns
    -------
    (d,) float64 ndarray

    Raises
    ------
    NFMInputError
        An unfitted estimator or one without a single kernel predictor (a partitioned
        large-n fit), an unknown ``source``, ``X`` of the wrong width.
    """
    if source not in ("agop", "metric"):
        raise NFMInputError(f"source must be 'agop' or 'metric'; got {source!r}")
    missing = [a for a in ("M_", "X_fit_", "dual_coef_", "kernel_") if not hasattr(estimator, a)]
    if missing:
        raise NFMInputError(
            f"estimator must be a fitted RFMClassifier or RFMRegressor; "
            f"{type(estimator).__name__} has no {missing} (call fit first)"
        )
    if getattr(estimator, "partition_", None) is not None:
        raise NFMInputError(
            "estimator was fitted as a partition of several kernel machines (partition_); "
            "its AGOP diagonal is not defined by one metric here"
        )
    M = torch.as_tensor(np.asarray(estimator.M_), dtype=torch.float64)
    if source == "metric":
        return torch.diagonal(M).clamp(min=0.0).numpy().copy()
    Z = torch.as_tensor(np.asarray(estimator.X_fit_), dtype=torch.float64)
    coef = torch.as_tensor(np.asarray(estimator.dual_coef_), dtype=torch.float64)
    if X is None:
        rows = Z
    else:
        rows = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        if rows.ndim != 2 or rows.shape[1] != Z.shape[1] or rows.shape[0] == 0:
            raise NFMInputError(
                f"X must be a non-empty 2-d array with {Z.shape[1]} columns (the training "
                f"width); got shape {tuple(rows.shape)}"
            )
        if not torch.isfinite(rows).all():
            raise NFMInputError("X has NaN or infinite entries")
    G = estimator.kernel_.agop(
        rows, Z, M, coef, centered=bool(getattr(estimator, "centered", False))
    )
    return torch.diagonal(G).clamp(min=0.0).numpy().copy()
