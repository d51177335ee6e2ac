r"""Functions of symmetric matrices: A^alpha of a PSD matrix through its eigendecomposition."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nfm._utils.arrays import array_kind, restore_kind, to_tensor
from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError

__all__ = ["symmetric_matrix_power"]


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
    check_square(a, "matrix")
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
