r"""Preconditioners for conjugate gradients on :math:`(K + \lambda I) A = Y`."""

from __future__ import annotations

import numpy as np
import torch

from nfm.solvers._blas import single_threaded_blas

__all__ = ["NystromPreconditioner"]


def _small_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a small symmetric matrix, single-threaded on CPU.

    Multi-threaded LAPACK ``syevd`` on a small matrix is dominated by thread synchronisation and
    becomes erratic (seconds) on a busy machine; one thread takes milliseconds.
    """
    if A.device.type != "cpu":
        return torch.linalg.eigh(A)
    with single_threaded_blas():
        values, vectors = np.linalg.eigh(A.detach().numpy())
    return torch.from_numpy(values).to(A.dtype), torch.from_numpy(vectors).to(A.dtype)


class NystromPreconditioner:
    r"""Nystrom preconditioner from ``rank`` sampled columns of ``K``.

    From the columns :math:`C = K_{:,S}` and :math:`W = K_{S,S} = R R^T`:
    :math:`B = C R^{-T}`, :math:`B^T B = V \Lambda V^T`, :math:`U = B V \Lambda^{-1/2}`, so that
    :math:`C W^{-1} C^T = U \Lambda U^T` with orthonormal ``U``. It applies (Frangella, Tropp,
    Udell 2023)

    .. math:: P^{-1} = (\lambda_r + \mu)\, U (\Lambda + \mu I)^{-1} U^T + (I - U U^T),

    :math:`\mu = \max(\lambda, 10^{-7} \lambda_1)`: two ``n x rank`` products per
    application. Built in float64 with three ``n x rank^2`` products. With one shift per
    column (a grid of ridges solved together), column ``j`` gets the preconditioner of its
    :math:`\lambda_j`: the sample, ``U`` and :math:`\Lambda` are shared, only :math:`\mu` differs.

    Parameters
    ----------
    K : (n, n) tensor
        Symmetric positive semi-definite kernel matrix.
    reg : float or (c,) tensor
        :math:`\lambda \ge 0`, or one per column of the blocks the preconditioner is applied to.
    rank : int
        Number of sampled columns (at most ``n`` are used).
    generator : torch.Generator
        CPU generator drawing the column sample.
    """

    def __init__(self, K: torch.Tensor, reg: float, rank: int, generator: torch.Generator):
        n = K.shape[0]
        rank = min(rank, n)
        idx = torch.randperm(n, generator=generator)[:rank].to(K.device)
        C = K[:, idx].to(torch.float64)
        W = C[idx]
        shift = torch.finfo(K.dtype).eps * float(W.diagonal().abs().sum()) + 1e-300
        W.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(W)
        if int(info) != 0:
            eigvals, eigvecs = torch.linalg.eigh(W)
            keep = eigvals > max(float(eigvals.max()), 0.0) * 1e-10
            B = C @ (eigvecs[:, keep] / eigvals[keep].sqrt())
        else:
            B = torch.linalg.solve_triangular(chol, C.T, upper=False).T
        del C
        eigvals, eigvecs = _small_eigh(B.T @ B)
        # no positive eigenvalue (K not PSD on the sample): U is empty, P^{-1} = I
        top = float(eigvals.max()) if eigvals.numel() else 0.0
        keep = eigvals > top * 1e-10 if top > 0 else torch.zeros_like(eigvals, dtype=torch.bool)
        lam, vecs = eigvals[keep], eigvecs[:, keep]
        U = B @ (vecs / lam.sqrt())
        lam = (lam - shift).clamp(min=0)
        lam_max = float(lam.max()) if lam.numel() else 0.0
        floor = max(lam_max * 1e-7, 1e-300)
        if isinstance(reg, torch.Tensor):  # one shift per column: scale is (c, rank)
            mu = reg.detach().to("cpu", torch.float64).clamp(min=floor)[:, None]
        else:
            mu = torch.tensor(max(float(reg), floor), dtype=torch.float64)
        self.U = U.to(K.dtype)
        self.U_rows = self.U.T.contiguous()  # (rank, n): the fast layout of the second product
        smallest = float(lam.min()) if lam.numel() else 0.0
        self.scale = ((smallest + mu) / (lam.cpu() + mu) - 1.0).to(K.device, K.dtype)

    def apply(self, R: torch.Tensor) -> torch.Tensor:
        r""":math:`P^{-1} R = R + U\, \mathrm{diag}(\text{scale})\, U^T R` for ``(n, c)`` ``R``
        (``scale`` per column when the preconditioner was built with one shift per column)."""
        # products with few columns are written as (few x n) @ (n x rank) and
        # (few x rank) @ (rank x n) with row-major operands: much faster on CPU
        proj = torch.mm(R.T, self.U).mul_(self.scale)
        return torch.addmm(R.T, proj, self.U_rows).T
