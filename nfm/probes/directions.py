r"""Concept directions: the top eigenvectors of an RFM probe's AGOP, in hidden-state coordinates.

A fitted RFM probe is a kernel predictor :math:`f(z) = \sum_i a_i k_M(z, z_i)` of the
standardised hidden state :math:`z = S^{-1}(h - \mu)`, :math:`S = \mathrm{diag}(s)`. Its AGOP over
the training rows,

.. math:: G_z = \frac1n \sum_i \sum_c \nabla_z f_c(z_i) \nabla_z f_c(z_i)^T ,

is computed with the kernel's closed-form gradients (:meth:`nfm.kernels.Kernel.agop`). By the
chain rule :math:`\nabla_h f = S^{-1} \nabla_z f`, so the AGOP with respect to the hidden state
itself is

.. math:: G_h = S^{-1} G_z S^{-1} ,

and its top eigenvectors are the directions of hidden-state space along which the probe's
prediction changes most: the concept directions. An eigenvector's sign is arbitrary; each is
oriented so that it points from the mean hidden state of the ``negative`` class to that of the
``positive`` class (a positive inner product with the difference of the class means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nfm.exceptions import NFMInputError
from nfm.probes.probe import FittedProbe

__all__ = ["ConceptDirections", "concept_directions", "probe_agop"]


@dataclass(frozen=True)
class ConceptDirections:
    """Top AGOP eigenvectors of a probe, in hidden-state coordinates.

    Attributes
    ----------
    directions : (k, d) array
        Unit vectors, largest eigenvalue first, oriented from ``negative`` to ``positive``.
    eigenvalues : (k,) array
        Their eigenvalues of :math:`G_h`.
    explained : (k,) array
        Each eigenvalue over the trace of :math:`G_h`.
    agop : (d, d) array
        :math:`G_h`.
    """

    directions: np.ndarray
    eigenvalues: np.ndarray
    explained: np.ndarray
    agop: np.ndarray


def probe_agop(probe: FittedProbe) -> np.ndarray:
    r"""The AGOP :math:`G_h = S^{-1} G_z S^{-1}` of an RFM probe over its training rows.

    Raises
    ------
    NFMInputError
        ``probe`` is not an RFM probe.
    """
    if not isinstance(probe, FittedProbe) or probe.method != "rfm":
        raise NFMInputError(
            "probe must be a FittedProbe with method='rfm' (from fit_probe or probe_blocks); "
            f"got {type(probe).__name__} {getattr(probe, 'method', '')!r}"
        )
    rfm = probe.estimator
    if getattr(rfm, "partition_", None) is not None:
        raise NFMInputError("the RFM probe was fitted as a partition tree; use leaf_size=None")
    as64 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    Z = as64(probe.train_rows)
    G_z = rfm.kernel_.agop(Z, as64(rfm.X_fit_), as64(rfm.M_), as64(rfm.dual_coef_)).numpy()
    inv_scale = 1.0 / probe.standardizer.scale
    G_h = inv_scale[:, None] * G_z * inv_scale[None, :]
    return 0.5 * (G_h + G_h.T)


def concept_directions(
    probe: FittedProbe,
    X: Any,
    y: Any,
    *,
    positive: Any,
    negative: Any,
    k: int = 1,
) -> ConceptDirections:
    """The ``k`` top eigenvectors of the probe's AGOP, oriented from ``negative`` to ``positive``.

    Parameters
    ----------
    probe : FittedProbe
        An RFM probe.
    X : (n, d) array
        Hidden states used for the orientation (the training part).
    y : (n,) array
        Their labels.
    positive, negative : labels
        The classes the directions point to and from.
    k : int
        Number of directions (1 <= k <= d).

    Raises
    ------
    NFMInputError
        Not an RFM probe, bad ``k``, shapes, or a class absent from ``y``.
    """
    G = probe_agop(probe)
    d = G.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise NFMInputError(f"k must be an int in [1, {d}]; got {k!r}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[1] != d or y.shape != (X.shape[0],):
        raise NFMInputError(
            f"X must be (n, {d}) and y (n,) for the orientation; got {X.shape} and {y.shape}"
        )
    for label, name in ((positive, "positive"), (negative, "negative")):
        if not np.any(y == label):
            raise NFMInputError(f"{name}={label!r} is not a label in y")
    values, vectors = np.linalg.eigh(G)
    order = np.argsort(values)[::-1][:k]
    values, vectors = values[order], vectors[:, order].T.copy()
    difference = X[y == positive].mean(axis=0) - X[y == negative].mean(axis=0)
    signs = np.where(vectors @ difference < 0, -1.0, 1.0)
    vectors *= signs[:, None]
    trace = float(np.trace(G))
    explained = values / trace if trace > 0 else np.zeros_like(values)
    return ConceptDirections(directions=vectors, eigenvalues=values, explained=explained, agop=G)
