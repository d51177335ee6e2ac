r"""Linear-algebra helpers shared by the feature-matrix and RFM code.

* :func:`symmetric_matrix_power` -- :math:`A^\alpha` of a symmetric PSD matrix through its
  eigendecomposition, eigenvalues clamped at 0 (never a general ``sqrtm``).
* :func:`matrix_correlation` -- the similarity of two matrices under each definition in use
  (Pearson or cosine, with or without the diagonal).

Both accept numpy arrays or torch tensors and return the kind they were given.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from nfm._arrays import array_kind, restore_kind, to_tensor
from nfm.exceptions import NFMInputError

CorrelationKind = Literal["pearson", "cosine"]

__all__ = ["CorrelationKind", "matrix_correlation", "symmetric_matrix_power"]


def _check_square(t: torch.Tensor, name: str) -> None:
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise NFMInputError(f"{name} must be a square matrix; got shape {tuple(t.shape)}")


def symmetric_matrix_power(matrix: Any, power: float) -> Any:
    r"""Power of a symmetric positive semi-definite matrix.

    .. math:: A^\alpha = U \,\mathrm{diag}(\max(\lambda_i, 0)^\alpha)\, U^T,
              \qquad A = U \,\mathrm{diag}(\lambda)\, U^T .

    The matrix is symmetrised first (``(A + A^T) / 2``) and negative eigenvalues, which come
    only from rounding for a PSD input, are clamped to zero. ``power = 0`` gives the projector
    onto the range of ``A`` (zero eigenvalues stay zero).

    Parameters
    ----------
    matrix : (d, d) array or tensor
        A symmetric PSD matrix.
    power : float
        The exponent :math:`\alpha`; must be finite and non-negative.

    Returns
    -------
    (d, d) array or tensor, the same kind, dtype and device as ``matrix``.
    """
    if not np.isfinite(power) or power < 0:
        raise NFMInputError(f"power must be a finite number >= 0; got {power!r}")
    kind = array_kind(matrix)
    a = to_tensor(matrix, "matrix")
    _check_square(a, "matrix")
    if not a.is_floating_point():
        a = a.to(torch.float64)
    if power == 1:
        return restore_kind(0.5 * (a + a.T), kind)
    sym = 0.5 * (a + a.T)
    eigvals, eigvecs = torch.linalg.eigh(sym)
    eigvals = eigvals.clamp(min=0)
    if power == 0:
        tol = eigvals.max().clamp(min=0) * a.shape[0] * torch.finfo(a.dtype).eps
        scaled = (eigvals > tol).to(a.dtype)
    else:
        scaled = eigvals.pow(power)
    result = (eigvecs * scaled) @ eigvecs.T
    return restore_kind(0.5 * (result + result.T), kind)


def matrix_correlation(
    a: Any,
    b: Any,
    *,
    kind: CorrelationKind = "pearson",
    exclude_diagonal: bool = False,
) -> float:
    r"""Similarity of two matrices of the same shape.

    With :math:`u = \mathrm{vec}(A)` and :math:`v = \mathrm{vec}(B)` (only off-diagonal entries
    when ``exclude_diagonal``):

    * ``"pearson"``: :math:`\rho = \frac{(u - \bar u)^T (v - \bar v)}
      {\lVert u - \bar u\rVert \,\lVert v - \bar v\rVert}`,
    * ``"cosine"``: :math:`\cos = \frac{u^T v}{\lVert u\rVert\,\lVert v\rVert}`.

    Both lie in [-1, 1], are symmetric in (A, B) and invariant to positive scaling of either
    matrix. Computed in float64. Returns ``nan`` when a vector has zero norm (after centring for
    Pearson), because the correlation is undefined there.

    Parameters
    ----------
    a, b : (m, n) arrays or tensors
    kind : {"pearson", "cosine"}
    exclude_diagonal : bool
        Drop the diagonal entries (requires square matrices).
    """
    if kind not in ("pearson", "cosine"):
        raise NFMInputError(f"kind must be 'pearson' or 'cosine'; got {kind!r}")
    ta = to_tensor(a, "a").detach().to(device="cpu", dtype=torch.float64)
    tb = to_tensor(b, "b").detach().to(device="cpu", dtype=torch.float64)
    if ta.shape != tb.shape:
        raise NFMInputError(
            f"a and b must have the same shape; got {tuple(ta.shape)} and {tuple(tb.shape)}"
        )
    if exclude_diagonal:
        _check_square(ta, "a")
        mask = ~torch.eye(ta.shape[0], dtype=torch.bool)
        u, v = ta[mask], tb[mask]
    else:
        u, v = ta.reshape(-1), tb.reshape(-1)
    if kind == "pearson":
        u = u - u.mean()
        v = v - v.mean()
    denom = torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v)
    if u.numel() == 0 or float(denom) == 0.0:
        return float("nan")
    return float(torch.clamp((u @ v) / denom, -1.0, 1.0))
