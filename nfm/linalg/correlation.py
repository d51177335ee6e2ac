r"""Similarity of two matrices: Pearson or cosine, with or without the diagonal."""

from __future__ import annotations

from typing import Any, Literal

import torch

from nfm._utils.arrays import to_tensor
from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError

__all__ = ["CorrelationKind", "matrix_correlation"]


CorrelationKind = Literal["pearson", "cosine"]


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
        check_square(ta, "a")
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
