r"""Solvers for the kernel ridge system :math:`(K + \lambda I)\, A = Y`.

* :func:`cholesky_solve` -- direct: Cholesky factorisation (in place, so the Gram matrix is the
  only ``n x n`` buffer), optional diagonal of
  :math:`(K + \lambda I)^{-1}` for closed-form leave-one-out residuals, and a jitter ladder when
  :math:`K + \lambda I` is not numerically positive definite.
* :func:`conjugate_gradient_solve` -- iterative: block preconditioned conjugate gradient, one
  ``n x n`` matrix product with the ``n x c`` right-hand sides per pass (``O(n^2 c)``), a Nystrom
  preconditioner built from ``rank`` sampled columns of ``K``, warm started from a previous
  solution.
* :func:`solve_kernel_system` -- picks one (``solver="auto"``: Cholesky up to
  :data:`AUTO_CHOLESKY_MAX_N` rows, conjugate gradient above).

Jitter ladder (documented behaviour): if the factorisation of :math:`K + \lambda I` fails, the
solver retries with :math:`K + (\lambda + \epsilon_k \bar K) I`, where :math:`\bar K` is the
mean diagonal of ``K`` and :math:`\epsilon_k` runs through :data:`JITTER_LADDER` (starting at
``1e-10`` in float64 and ``1e-6`` in float32), and emits a
:class:`~nfm.exceptions.NumericalWarning` naming the jitter used. If every rung fails,
:class:`~nfm.exceptions.NFMError` is raised.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nfm.exceptions import NFMError, NFMInputError, NumericalWarning

__all__ = [
    "AUTO_CHOLESKY_MAX_N",
    "JITTER_LADDER",
    "CGResult",
    "CholeskyResult",
    "cholesky_solve",
    "conjugate_gradient_solve",
    "resolve_solver",
    "solve_kernel_system",
]

logger = logging.getLogger(__name__)

#: relative jitters (times the mean diagonal of K) tried in order when K + reg I is not PD.
JITTER_LADDER: tuple[float, ...] = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
#: ``solver="auto"`` uses Cholesky up to this many training rows, conjugate gradient above.
AUTO_CHOLESKY_MAX_N = 6000


@dataclass
class CholeskyResult:
    """Output of :func:`cholesky_solve`.

    Attributes
    ----------
    coef : (n, c) tensor
        The solution :math:`A = (K + (\\lambda + \\text{jitter}) I)^{-1} Y`.
    jitter : float
        Absolute jitter added to the diagonal on top of ``reg`` (0 if none was needed).
    inverse_diagonal : (n,) tensor or None
        :math:`\\mathrm{diag}((K + (\\lambda + \\text{jitter}) I)^{-1})` when requested.
    """

    coef: torch.Tensor
    jitter: float
    inverse_diagonal: torch.Tensor | None = None


@dataclass
class CGResult:
    """Output of :func:`conjugate_gradient_solve`.

    Attributes
    ----------
    coef : (n, c) tensor
    n_iter : int
        Passes over ``K`` (matrix products) used.
    relative_residual : float
        :math:`\\max_c \\lVert (K + \\lambda I) a_c - y_c\\rVert / \\lVert y_c\\rVert` at exit.
    converged : bool
    """

    coef: torch.Tensor
    n_iter: int
    relative_residual: float
    converged: bool


def _ladder(dtype: torch.dtype) -> tuple[float, ...]:
    start = 1e-6 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
    return tuple(j for j in JITTER_LADDER if j >= start)


def _check_system(K: torch.Tensor, Y: torch.Tensor, reg: float) -> None:
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise NFMInputError(f"K must be a square matrix; got shape {tuple(K.shape)}")
    if Y.shape[0] != K.shape[0]:
        raise NFMInputError(
            f"Y has {Y.shape[0]} rows but K is {K.shape[0]} x {K.shape[1]}; they must match"
        )
    if not math.isfinite(reg) or reg < 0:
        raise NFMInputError(f"reg must be a finite number >= 0; got {reg!r}")


def _factor_in_place(work: torch.Tensor) -> bool:
    """Cholesky-factor the symmetric ``work`` in place; True on success.

    ``work`` is C-contiguous and symmetric, so its transpose is the same matrix in column-major
    order, which LAPACK factors without a copy: afterwards ``work.T`` holds the lower factor
    ``L`` (and zeros above the diagonal).
    """
    info = torch.empty((), dtype=torch.int32, device=work.device)
    column_major = work.T
    torch.linalg.cholesky_ex(column_major, out=(column_major, info))
    return int(info) == 0 and bool(torch.isfinite(column_major.diagonal()).all())


@functools.cache
def _blas_controller():
    """One threadpoolctl controller per process (scipy's and numpy's BLAS are loaded by now).

    Building a controller scans the loaded libraries (about 7 ms); ``threadpool_limits`` does
    that on every call, which added ~0.3 s to a small leave-one-out fit over a reg grid.
    """
    from scipy.linalg import lapack  # noqa: F401  (load scipy's BLAS before the scan)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _single_threaded_blas():
    """Context manager limiting numpy's / scipy's BLAS to one thread."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _inverse_diagonal(factor: torch.Tensor, block: int = 512) -> torch.Tensor:
    r"""``diag((L L^T)^{-1})_i = sum_k (L^{-1})_{ki}^2`` from the lower factor ``L``.

    On CPU the factor is inverted in place by LAPACK ``trtri`` (single-threaded: the
    multi-threaded OpenBLAS call competes with torch's threads and is erratic on busy machines),
    then the squared column norms are summed in row blocks; the factor is destroyed. Elsewhere,
    columns ``[i, j)`` of :math:`L^{-1}` solve the trailing triangle :math:`L_{i:, i:} X = E`.
    Both cost ``n^3 / 3`` flops and ``O(n b)`` extra memory.
    """
    n = factor.shape[0]
    out = torch.empty(n, dtype=factor.dtype, device=factor.device)
    if factor.device.type == "cpu" and factor.dtype in (torch.float32, torch.float64):
        from scipy.linalg import lapack

        trtri = lapack.dtrtri if factor.dtype == torch.float64 else lapack.strtri
        column_major = factor.numpy()  # F-contiguous view of the C-contiguous buffer
        with _single_threaded_blas():
            inverse, info = trtri(column_major, lower=1, overwrite_c=1)
        if info != 0:
            raise NFMError(f"LAPACK trtri failed with info={info}")
        rows = torch.from_numpy(inverse.T)  # C-ordered: upper triangle holds L^{-T}
        for i in range(0, n, block):
            part = torch.triu(rows[i : i + block], diagonal=i)
            out[i : i + block] = (part * part).sum(dim=1)
        return out
    for i in range(0, n, block):
        j = min(n, i + block)
        rhs = torch.zeros((n - i, j - i), dtype=factor.dtype, device=factor.device)
        rhs.diagonal().fill_(1.0)
        cols = torch.linalg.solve_triangular(factor[i:, i:], rhs, upper=False)
        out[i:j] = (cols * cols).sum(dim=0)
    return out


def cholesky_solve(
    K: torch.Tensor,
    Y: torch.Tensor,
    reg: float,
    *,
    overwrite: bool = False,
    inverse_diagonal: bool = False,
    rebuild: Callable[[torch.Tensor], object] | None = None,
) -> CholeskyResult:
    r"""Solve :math:`(K + \lambda I) A = Y` by Cholesky factorisation, with a jitter ladder.

    Parameters
    ----------
    K : (n, n) tensor
        Symmetric positive semi-definite kernel matrix.
    Y : (n, c) or (n,) tensor
        Right-hand sides.
    reg : float
        :math:`\lambda \ge 0`. ``0`` (interpolation) works when ``K`` is positive definite.
    overwrite : bool
        Allow ``K`` to be destroyed: the factorisation then runs in place, so the Gram matrix is
        the only ``n x n`` buffer. With ``False`` a copy is factored and ``K`` is unchanged.
    inverse_diagonal : bool
        Also return :math:`\mathrm{diag}((K + \lambda I)^{-1})` (``n^3 / 3`` more flops, in
        column blocks), for leave-one-out residuals
        :math:`r_i = a_i / [(K+\lambda I)^{-1}]_{ii}`.
    rebuild : callable, optional
        ``rebuild(K)`` refills ``K`` in place; needed for the jitter ladder when ``overwrite``
        (a failed in-place factorisation leaves ``K`` destroyed). Without it, a failure with
        ``overwrite=True`` raises :class:`~nfm.exceptions.NFMError`.

    Returns
    -------
    CholeskyResult

    Warns
    -----
    NumericalWarning
        When a jitter had to be added.
    """
    _check_system(K, Y, reg)
    squeeze = Y.ndim == 1
    Y2 = Y.reshape(Y.shape[0], -1).to(device=K.device, dtype=K.dtype)
    n = K.shape[0]
    mean_diag = float(K.diagonal().mean()) if n else 1.0
    ladder = _ladder(K.dtype)
    jitters = (0.0, *(j * max(mean_diag, 1e-300) for j in ladder))
    if overwrite and not K.is_contiguous():
        raise NFMInputError("cholesky_solve(overwrite=True) needs a contiguous K")
    work = K if overwrite else torch.empty_like(K, memory_format=torch.contiguous_format)
    original_diagonal = K.diagonal().clone()
    used = None
    for attempt, jitter in enumerate(jitters):
        if not overwrite:
            work.copy_(K)
        elif attempt > 0:
            if rebuild is None:
                raise NFMError(
                    f"K + reg*I (n={n}, reg={reg:g}) is not positive definite and K was factored "
                    "in place; pass rebuild= to allow the jitter ladder"
                )
            rebuild(work)
        work.diagonal().copy_(original_diagonal + (reg + jitter))
        if _factor_in_place(work):
            used = jitter
            break
    if used is None:
        raise _fail(n, reg, K.dtype)
    factor = work.T  # lower-triangular, column-major view
    coef = torch.cholesky_solve(Y2, factor)
    inverse_diag = _inverse_diagonal(factor) if inverse_diagonal else None
    if used > 0:
        warnings.warn(
            f"K + reg*I (n={n}, reg={reg:g}) is not numerically positive definite; "
            f"added jitter {used:.3g} to the diagonal (ladder: "
            f"{', '.join(f'{j:g}' for j in ladder)} x mean diagonal {mean_diag:.3g})",
            NumericalWarning,
            stacklevel=2,
        )
    return CholeskyResult(
        coef=coef[:, 0] if squeeze else coef, jitter=used, inverse_diagonal=inverse_diag
    )


def _fail(n: int, reg: float, dtype: torch.dtype) -> NFMError:
    return NFMError(
        f"K + reg*I (n={n}, reg={reg:g}, dtype={dtype}) is not positive definite even with the "
        f"largest jitter {JITTER_LADDER[-1]:g} x mean diagonal; increase reg or use float64"
    )


def _small_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigendecomposition of a small symmetric matrix, single-threaded on CPU.

    Multi-threaded LAPACK ``syevd`` on a small matrix is dominated by thread synchronisation and
    becomes erratic (seconds) on a busy machine; one thread takes milliseconds.
    """
    if A.device.type != "cpu":
        return torch.linalg.eigh(A)
    with _single_threaded_blas():
        values, vectors = np.linalg.eigh(A.detach().numpy())
    return torch.from_numpy(values).to(A.dtype), torch.from_numpy(vectors).to(A.dtype)


class _NystromPreconditioner:
    r"""Nystrom preconditioner from ``rank`` sampled columns of ``K``.

    From the columns :math:`C = K_{:,S}` and :math:`W = K_{S,S} = R R^T`:
    :math:`B = C R^{-T}`, :math:`B^T B = V \Lambda V^T`, :math:`U = B V \Lambda^{-1/2}`, so that
    :math:`C W^{-1} C^T = U \Lambda U^T` with orthonormal ``U``. It applies (Frangella, Tropp,
    Udell 2023)

    .. math:: P^{-1} = (\lambda_r + \mu)\, U (\Lambda + \mu I)^{-1} U^T + (I - U U^T),

    :math:`\mu = \max(\lambda, 10^{-7} \lambda_1)`: two ``n x rank`` products per
    application. Built in float64 with three ``n x rank^2`` products.
    """

    def __init__(self, K: torch.Tensor, reg: float, rank: int, generator: torch.Generator):
        n = K.shape[0]
        rank = min(rank, n)
        idx = torch.randperm(n, generator=generator)[:rank].to(K.device)
        C = K[:, idx].to(torch.float64)
        W = C[idx]
        shift = torch.finfo(K.dtype).eps * float(W.diagonal().sum()) + 1e-300
        W.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(W)
        if int(info) != 0:
            eigvals, eigvecs = torch.linalg.eigh(W)
            keep = eigvals > eigvals.max() * 1e-10
            B = C @ (eigvecs[:, keep] / eigvals[keep].sqrt())
        else:
            B = torch.linalg.solve_triangular(chol, C.T, upper=False).T
        del C
        eigvals, eigvecs = _small_eigh(B.T @ B)
        keep = eigvals > eigvals.max() * 1e-10
        lam, vecs = eigvals[keep], eigvecs[:, keep]
        U = B @ (vecs / lam.sqrt())
        lam = (lam - shift).clamp(min=0)
        lam_max = float(lam.max()) if lam.numel() else 0.0
        mu = max(reg, lam_max * 1e-7, 1e-300)
        self.U = U.to(K.dtype)
        self.U_rows = self.U.T.contiguous()  # (rank, n): the fast layout of the second product
        self.scale = ((lam.min() + mu) / (lam + mu) - 1.0).to(K.dtype)

    def apply(self, R: torch.Tensor) -> torch.Tensor:
        # products with few columns are written as (few x n) @ (n x rank) and
        # (few x rank) @ (rank x n) with row-major operands: much faster on CPU
        proj = torch.mm(R.T, self.U).mul_(self.scale)
        return torch.addmm(R.T, proj, self.U_rows).T


#: at most this many right-hand sides use one BLAS ``symv`` per column (see _symmetric_product).
SYMV_MAX_COLUMNS = 4


def _symmetric_product(K: torch.Tensor, n_columns: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``V -> K V`` for the symmetric ``K``, the fastest form for ``n_columns``.

    The product of an ``n x n`` matrix with a few columns is memory bound. On CPU, for up to
    :data:`SYMV_MAX_COLUMNS` columns, BLAS ``ssymv``/``dsymv`` (one per column, reading one
    triangle of ``K``), single-threaded, is about 1.5x faster than torch's GEMM on two threads
    (n = 12,800, float32, 2 cores); with two BLAS threads it is faster still, but its spinning
    threads then slow down the torch operations that follow (the preconditioner, 3x). Otherwise
    ``K V = (V^T K)^T``, several times faster than ``K @ V`` for few columns on CPU (a
    row-major GEMM with a short inner loop).
    """
    if (
        K.device.type == "cpu"
        and K.dtype in (torch.float32, torch.float64)
        and K.is_contiguous()
        and not K.requires_grad
        and n_columns <= SYMV_MAX_COLUMNS
    ):
        from scipy.linalg import blas

        symv = blas.ssymv if K.dtype == torch.float32 else blas.dsymv
        column_major = K.numpy().T  # F-contiguous view; its lower triangle is K's upper one

        def product(V: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(V)
            with _single_threaded_blas():
                for j in range(V.shape[1]):
                    column = np.ascontiguousarray(V[:, j].numpy())
                    out[:, j] = torch.from_numpy(symv(1.0, column_major, column, lower=1))
            return out

        return product
    return lambda V: (V.T @ K).T


def conjugate_gradient_solve(
    K: torch.Tensor,
    Y: torch.Tensor,
    reg: float,
    *,
    initial: torch.Tensor | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner_rank: int = 300,
    generator: torch.Generator | None = None,
) -> CGResult:
    r"""Block preconditioned conjugate gradient for :math:`(K + \lambda I) A = Y`.

    Each pass costs one product :math:`K P` with an ``n x c`` block (``O(n^2 c)``); the columns
    run as independent CG recursions sharing the product. Preconditioner: Nystrom of
    rank ``preconditioner_rank`` (see :class:`_NystromPreconditioner`).

    Parameters
    ----------
    K : (n, n) tensor
    Y : (n, c) or (n,) tensor
    reg : float
        :math:`\lambda \ge 0`.
    initial : (n, c) tensor, optional
        Warm start (e.g. the previous RFM iteration's coefficients).
    tol : float, optional
        Stop when every column's relative residual is below ``tol`` (default ``1e-7`` in
        float64, ``1e-4`` in float32).
    max_iter : int, optional
        Maximum passes (default ``max(100, min(n, 1000))``).
    preconditioner_rank : int
        Number of sampled columns of the Nystrom preconditioner (0 disables it).
    generator : torch.Generator, optional
        Source of the column sample (CPU generator).

    Returns
    -------
    CGResult
    """
    _check_system(K, Y, reg)
    squeeze = Y.ndim == 1
    Y2 = Y.reshape(Y.shape[0], -1).to(K.dtype)
    n = K.shape[0]
    if tol is None:
        tol = 1e-4 if K.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-7
    if max_iter is None:
        max_iter = max(100, min(n, 1000))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    precond = (
        _NystromPreconditioner(K, reg, preconditioner_rank, generator)
        if preconditioner_rank > 0 and n > 1
        else None
    )

    product = _symmetric_product(K, Y2.shape[1])

    def apply_system(V: torch.Tensor) -> torch.Tensor:
        KV = product(V)
        return KV.add(V, alpha=reg) if reg != 0 else KV

    X = torch.zeros_like(Y2) if initial is None else initial.reshape(Y2.shape).to(Y2).clone()
    R = Y2 - apply_system(X) if initial is not None else Y2.clone()
    y_norm = torch.linalg.vector_norm(Y2, dim=0).clamp(min=torch.finfo(K.dtype).tiny)
    Z = precond.apply(R) if precond is not None else R
    P = Z.clone()
    rz = (R * Z).sum(dim=0)
    passes = 0
    rel = torch.linalg.vector_norm(R, dim=0) / y_norm
    while passes < max_iter and bool((rel > tol).any()):
        KP = apply_system(P)
        passes += 1
        denom = (P * KP).sum(dim=0)
        active = rel > tol
        alpha = torch.where(active & (denom > 0), rz / denom.clamp(min=1e-300), 0.0)
        X.add_(P * alpha)
        R.sub_(KP * alpha)
        rel = torch.linalg.vector_norm(R, dim=0) / y_norm
        Z = precond.apply(R) if precond is not None else R
        rz_new = (R * Z).sum(dim=0)
        beta = torch.where(active, rz_new / rz.clamp(min=1e-300), 0.0)
        P = Z + P * beta
        rz = rz_new
    rel_max = float(rel.max()) if rel.numel() else 0.0
    converged = rel_max <= tol
    if not converged:
        warnings.warn(
            f"conjugate gradient stopped after {passes} passes with relative residual "
            f"{rel_max:.3g} > tol {tol:g} (n={n}, reg={reg:g}); increase max_iter or reg",
            NumericalWarning,
            stacklevel=2,
        )
    coef = X[:, 0] if squeeze else X
    return CGResult(coef=coef, n_iter=passes, relative_residual=rel_max, converged=converged)


def resolve_solver(solver: str, n: int) -> str:
    """Turn ``"auto"`` into ``"cholesky"`` (``n <= AUTO_CHOLESKY_MAX_N``) or ``"cg"``."""
    if solver not in ("auto", "cholesky", "cg"):
        raise NFMInputError(f"solver must be 'auto', 'cholesky' or 'cg'; got {solver!r}")
    if solver == "auto":
        return "cholesky" if n <= AUTO_CHOLESKY_MAX_N else "cg"
    return solver


def solve_kernel_system(
    K: torch.Tensor,
    Y: torch.Tensor,
    reg: float,
    *,
    solver: str = "auto",
    overwrite: bool = False,
    initial: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Solve :math:`(K + \lambda I) A = Y` with the chosen solver; returns ``A``.

    ``solver="auto"`` uses :func:`cholesky_solve` for ``n <= AUTO_CHOLESKY_MAX_N`` and
    :func:`conjugate_gradient_solve` above.
    """
    chosen = resolve_solver(solver, K.shape[0])
    if chosen == "cholesky":
        return cholesky_solve(K, Y, reg, overwrite=overwrite).coef
    return conjugate_gradient_solve(K, Y, reg, initial=initial, generator=generator).coef
