r"""Neural collapse measures of a layer's features: NC1 (variability) and NC2 (geometry).

For features :math:`h_i \in \mathbb{R}^d` with labels in :math:`K` classes, class means
:math:`\mu_k`, the global mean :math:`\mu_G` of all rows and :math:`N` rows
(Papyan, Han and Donoho, PNAS 2020):

.. math::

   \Sigma_W = \frac1N \sum_k \sum_{i: y_i = k} (h_i - \mu_k)(h_i - \mu_k)^T, \qquad
   \Sigma_B = \frac1K \sum_k (\mu_k - \mu_G)(\mu_k - \mu_G)^T,

* **NC1** :math:`= \mathrm{tr}(\Sigma_W \Sigma_B^{+}) / K` (pseudo-inverse, restricted to the
  at most :math:`K - 1` directions spanned by the centred class means): the within-class spread
  measured in units of the spread of the class means; 0 when every row equals its class mean
  (collapse).
* **NC2**, the distance of the centred class means :math:`m_k = \mu_k - \mu_G` from a simplex
  equiangular tight frame: with the Gram matrix :math:`G_{kl} = m_k^T m_l`,

  .. math:: \mathrm{NC2} = \Big\lVert \frac{G}{\lVert G\rVert_F}
            - \frac{I_K - \frac1K \mathbf{1}\mathbf{1}^T}{\sqrt{K-1}} \Big\rVert_F ,

  0 exactly when the :math:`m_k` have equal norms and pairwise cosines :math:`-1/(K-1)`. Its two
  parts are also reported: **equinorm** = std / mean of :math:`\lVert m_k \rVert` and
  **equiangularity** = mean over :math:`k \ne l` of :math:`|\cos(m_k, m_l) + 1/(K-1)|`
  (standard deviations over classes, not over samples: ``ddof=0``).

With two classes of equal size, :math:`m_1 = -m_2` always, so NC2, equinorm and equiangularity
are 0 whatever the features: they say something only for three classes or more (or unequal
class sizes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nfm.exceptions import NFMInputError

__all__ = ["NeuralCollapse", "neural_collapse", "neural_collapse_by_layer"]


@dataclass(frozen=True)
class NeuralCollapse:
    """NC1 and NC2 of one layer's features (see the module docstring)."""

    nc1: float
    nc2: float
    equinorm: float
    equiangularity: float
    n_classes: int
    within_trace: float
    between_trace: float


def _trace_against_pinv(within: np.ndarray, root: np.ndarray, scale: float) -> float:
    r"""tr(Sigma_W Sigma_B^+) with Sigma_B = root^T root, from the SVD of the small ``root``.

    ``root`` is :math:`(K, d)`, the centred class means over :math:`\sqrt K`. Since
    :math:`\sum_k n_k (\mu_k - \mu_G) = 0`, :math:`\Sigma_B` has rank at most :math:`K - 1`:
    the pseudo-inverse keeps at most the :math:`K - 1` largest singular values, and only those
    above the rounding level :math:`\max(K, d)\,\varepsilon\,` ``scale`` (``scale``: the size of
    the raw class means, whose rounding errors the subtraction of :math:`\mu_G` leaves), so
    that rounding noise is never inverted.
    """
    _, singular, vt = np.linalg.svd(root, full_matrices=False)
    K = root.shape[0]
    tolerance = max(root.shape) * np.finfo(np.float64).eps * max(scale, float(singular[0]))
    keep = np.arange(singular.size) < K - 1
    keep &= singular > tolerance
    V, s = vt[keep].T, singular[keep]
    return float(np.sum(np.einsum("dj,de,ej->j", V, within, V) / s**2))


def neural_collapse(features: Any, labels: Any) -> NeuralCollapse:
    """NC1, NC2, equinorm and equiangularity of ``features`` grouped by ``labels``.

    Parameters
    ----------
    features : (n, d) array
    labels : (n,) array with at least 2 classes

    Raises
    ------
    NFMInputError
        Bad shapes, non-finite features, fewer than 2 classes, or class means that all coincide
        (:math:`\\Sigma_B = 0`: NC1 is undefined).
    """
    H = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if H.ndim != 2 or H.shape[0] == 0 or H.shape[1] == 0:
        raise NFMInputError(f"features must be a non-empty (n, d) array; got shape {H.shape}")
    if y.shape != (H.shape[0],):
        raise NFMInputError(f"labels must have shape ({H.shape[0]},); got {y.shape}")
    if not np.isfinite(H).all():
        raise NFMInputError("features hold NaN or infinite values")
    classes = np.unique(y)
    K = classes.size
    if K < 2:
        raise NFMInputError(f"labels must hold at least 2 classes; got {classes.tolist()}")
    global_mean = H.mean(axis=0)
    means = np.stack([H[y == c].mean(axis=0) for c in classes])
    centred = means - global_mean
    within = np.zeros((H.shape[1], H.shape[1]))
    for c, mean in zip(classes, means, strict=True):
        deviation = H[y == c] - mean
        within += deviation.T @ deviation
    within /= H.shape[0]
    between = centred.T @ centred / K
    between_trace = float(np.trace(between))
    rounding = H.shape[1] * np.finfo(np.float64).eps * float(np.abs(means).max())
    if between_trace <= 0 or np.linalg.norm(centred) <= rounding:
        raise NFMInputError("all class means coincide (between-class covariance is 0)")
    scale = float(np.abs(means).max())
    nc1 = _trace_against_pinv(within, centred / np.sqrt(K), scale) / K
    gram = centred @ centred.T
    etf = (np.eye(K) - np.full((K, K), 1.0 / K)) / np.sqrt(K - 1)
    nc2 = float(np.linalg.norm(gram / np.linalg.norm(gram) - etf))
    norms = np.linalg.norm(centred, axis=1)
    equinorm = float(norms.std() / norms.mean())
    with np.errstate(invalid="ignore", divide="ignore"):  # a mean at mu_G: NaN cosines
        cosines = gram / np.outer(norms, norms)
    off = ~np.eye(K, dtype=bool)
    equiangularity = float(np.mean(np.abs(cosines[off] + 1.0 / (K - 1))))
    return NeuralCollapse(
        nc1=nc1,
        nc2=nc2,
        equinorm=equinorm,
        equiangularity=equiangularity,
        n_classes=int(K),
        within_trace=float(np.trace(within)),
        between_trace=between_trace,
    )


def neural_collapse_by_layer(features: Mapping[str, Any], labels: Any) -> dict[str, NeuralCollapse]:
    """:func:`neural_collapse` of each layer's features, in the order of ``features``."""
    if not features:
        raise NFMInputError("features is empty; give at least one layer's features")
    return {name: neural_collapse(X, labels) for name, X in features.items()}
