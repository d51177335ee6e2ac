r"""Effective and stable rank of a PSD matrix (an AGOP or an NFM), from its eigenvalues.

For a symmetric positive semi-definite matrix :math:`A` with eigenvalues
:math:`\lambda_1 \ge \dots \ge \lambda_d \ge 0` (negative rounding noise clamped to 0):

* effective rank (Roy and Vetterli, 2007): :math:`\exp\big(-\sum_i p_i \log p_i\big)` with
  :math:`p_i = \lambda_i / \sum_j \lambda_j`, the exponential of the entropy of the normalised
  spectrum. It is 1 for a rank-1 matrix, :math:`r` for :math:`r` equal non-zero eigenvalues,
  and lies in :math:`[1, \mathrm{rank}(A)]`;
* stable rank: :math:`\mathrm{tr}(A) / \lambda_{\max}(A)`. For :math:`A = W^T W` (an NFM) this
  is :math:`\lVert W\rVert_F^2 / \lVert W\rVert_2^2`, the usual stable rank of the weight. It
  lies in :math:`[1, \mathrm{rank}(A)]` too and is 1 exactly when :math:`A` has rank 1.

Both are ``nan`` for the zero matrix (no direction at all).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nfm._utils.arrays import check_finite, to_tensor
from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError

__all__ = [
    "effective_rank",
    "effective_rank_of_spectrum",
    "psd_spectrum",
    "rank_summary",
    "stable_rank",
]


def psd_spectrum(matrix: Any, name: str = "matrix") -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix in float64, descending, negatives clamped to 0.

    The matrix is symmetrised, :math:`(A + A^T)/2`, before :func:`torch.linalg.eigvalsh`, so
    rounding asymmetry does not matter.

    Raises
    ------
    NFMInputError
        Not a square 2-D array, non-finite entries, or an eigenvalue below
        :math:`-10^{-4} \\lambda_{\\max}`: the matrix is not PSD (float32 rounding of a PSD
        matrix stays far inside this bound).
    """
    t = to_tensor(matrix, name).detach().to("cpu", torch.float64)
    check_square(t, name)
    check_finite(t, name)
    if t.shape[0] == 0:
        raise NFMInputError(f"{name} must not be empty; got shape {tuple(t.shape)}")
    eigenvalues = torch.linalg.eigvalsh((t + t.T) / 2).flip(0)
    top = float(eigenvalues[0]) if eigenvalues.numel() else 0.0
    bottom = float(eigenvalues[-1])
    if bottom < -1e-4 * max(abs(top), 1e-300):
        raise NFMInputError(
            f"{name} must be positive semi-definite; its smallest eigenvalue is {bottom:.3e} "
            f"against a largest of {top:.3e}"
        )
    return eigenvalues.clamp_min(0.0)


def effective_rank_of_spectrum(eigenvalues: torch.Tensor) -> float:
    """Effective rank from non-negative eigenvalues (``nan`` when they sum to 0)."""
    total = float(eigenvalues.sum())
    if not total > 0:
        return math.nan
    p = eigenvalues[eigenvalues > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def _stable_rank_from(eigenvalues: torch.Tensor) -> float:
    top = float(eigenvalues[0])
    if not top > 0:
        return math.nan
    return float(eigenvalues.sum()) / top


def effective_rank(matrix: Any) -> float:
    r"""Effective rank :math:`\exp(-\sum_i p_i \log p_i)`, :math:`p_i = \lambda_i/\sum_j\lambda_j`.

    Parameters
    ----------
    matrix : (d, d) symmetric PSD array or tensor

    Returns
    -------
    float in ``[1, rank]``; ``nan`` for the zero matrix.
    """
    return effective_rank_of_spectrum(psd_spectrum(matrix))


def stable_rank(matrix: Any) -> float:
    r"""Stable rank :math:`\mathrm{tr}(A)/\lambda_{\max}(A)` of a PSD matrix.

    Equal to :math:`\lVert W\rVert_F^2/\lVert W\rVert_2^2` when :math:`A = W^T W`.

    Returns
    -------
    float in ``[1, rank]``; ``nan`` for the zero matrix.
    """
    return _stable_rank_from(psd_spectrum(matrix))


def rank_summary(matrix: Any, *, top: int = 10, name: str = "matrix") -> dict[str, Any]:
    """Trace, top eigenvalues, effective and stable rank of a PSD matrix, in one decomposition.

    Returns
    -------
    dict
        ``trace``, ``lambda_max``, ``top_eigenvalues`` (list of at most ``top`` floats,
        descending), ``effective_rank``, ``stable_rank``, ``d``.
    """
    eigenvalues = psd_spectrum(matrix, name)
    return {
        "d": int(eigenvalues.numel()),
        "trace": float(eigenvalues.sum()),
        "lambda_max": float(eigenvalues[0]),
        "top_eigenvalues": [float(v) for v in eigenvalues[:top]],
        "effective_rank": effective_rank_of_spectrum(eigenvalues),
        "stable_rank": _stable_rank_from(eigenvalues),
    }
