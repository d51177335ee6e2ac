r"""Direct solver of :math:`(K + \lambda I) A = Y`: Cholesky factorisation with a jitter ladder.

The factorisation runs in place when allowed (the Gram matrix is then the only ``n x n``
buffer) and can also return :math:`\mathrm{diag}((K + \lambda I)^{-1})` for closed-form
leave-one-out residuals.

Jitter ladder (documented behaviour): if the factorisation of :math:`K + \lambda I` fails, the
solver retries with :math:`K + (\lambda + \epsilon_k \bar K) I`, where :math:`\bar K` is the
mean diagonal of ``K`` and :math:`\epsilon_k` runs through :data:`JITTER_LADDER` (starting at
``1e-10`` in float64 and ``1e-6`` in float32), and emits a
:class:`~nfm.exceptions.NumericalWarning` naming the jitter used. If every rung fails,
:class:`~nfm.exceptions.NFMError` is raised. The system actually solved is
:math:`(K + s I) A = Y` with :math:`s` = :attr:`CholeskyResult.diagonal_shift`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nfm.exceptions import NFMError, NFMInputError, NumericalWarning
from nfm.solvers._blas import single_threaded_blas
from nfm.solvers._validation import as_right_hand_sides, check_kernel_system

__all__ = ["JITTER_LADDER", "CholeskyResult", "cholesky_solve"]

#: relative jitters (times the mean diagonal of K) tried in order when K + reg I is not PD.
JITTER_LADDER: tuple[float, ...] = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)


@dataclass
class CholeskyResult:
    r"""Output of :func:`cholesky_solve`.

    Attributes
    ----------
    coef : (n, c) or (n,) tensor
        The solution :math:`A = (K + s I)^{-1} Y`, :math:`s = \lambda + \text{jitter}`.
    jitter : float
        Absolute jitter added to the diagonal on top of ``reg`` (0 if none was needed).
    diagonal_shift : float
        :math:`s = \lambda + \text{jitter}`, the shift of the system actually solved,
        :math:`(K + s I) A = Y`.
    inverse_diagonal : (n,) tensor or None
        :math:`\mathrm{diag}((K + s I)^{-1})` when requested.
    """

    coef: torch.Tensor
    jitter: float
    diagonal_shift: float
    inverse_diagonal: torch.Tensor | None = None


def _ladder(dtype: torch.dtype) -> tuple[float, ...]:
    start = 1e-6 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10
    return tuple(j for j in JITTER_LADDER if j >= start)


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
        with single_threaded_blas():
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


def _not_positive_definite(n: int, reg: float, dtype: torch.dtype) -> NFMError:
    return NFMError(
        f"K + reg*I (n={n}, reg={reg:g}, dtype={dtype}) is not positive definite even with the "
        f"largest jitter {JITTER_LADDER[-1]:g} x mean diagonal; increase reg or use float64"
    )


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

    With :math:`K + s I = L L^T` (:math:`s = \lambda`, or :math:`\lambda + \text{jitter}` when
    the ladder was used), :math:`A = L^{-T} L^{-1} Y`. The solve is backward stable: the
    computed :math:`A` solves :math:`(K + s I + \Delta) A = Y` with
    :math:`\lVert\Delta\rVert = O(n \epsilon) \lVert K + s I \rVert`.

    Parameters
    ----------
    K : (n, n) tensor
        Symmetric positive semi-definite kernel matrix (only one triangle is read), finite, of a
        floating dtype.
    Y : (n, c) or (n,) tensor
        Right-hand sides (cast to ``K``'s dtype and device).
    reg : float
        :math:`\lambda \ge 0`. ``0`` (interpolation) works when ``K`` is positive definite.
    overwrite : bool
        Allow ``K`` to be destroyed: the factorisation then runs in place, so the Gram matrix is
        the only ``n x n`` buffer. With ``False`` a copy is factored and ``K`` is unchanged.
    inverse_diagonal : bool
        Also return :math:`\mathrm{diag}((K + s I)^{-1})` (``n^3 / 3`` more flops, in
        column blocks), for leave-one-out residuals
        :math:`r_i = a_i / [(K + s I)^{-1}]_{ii}`.
    rebuild : callable, optional
        ``rebuild(K)`` refills ``K`` in place; needed for the jitter ladder when ``overwrite``
        (a failed in-place factorisation leaves ``K`` destroyed). Without it, a failure with
        ``overwrite=True`` raises :class:`~nfm.exceptions.NFMError`.

    Returns
    -------
    CholeskyResult

    Raises
    ------
    NFMInputError
        ``K`` not a finite square floating matrix, ``Y`` not finite or with a different number
        of rows, ``reg`` negative or not finite, ``rebuild`` not callable, or ``overwrite`` with
        a non-contiguous ``K``.
    NFMError
        When :math:`K + s I` is not positive definite for any rung of the ladder.

    Warns
    -----
    NumericalWarning
        When a jitter had to be added.
    """
    reg = check_kernel_system(K, Y, reg)
    if rebuild is not None and not callable(rebuild):
        raise NFMInputError(f"rebuild must be callable or None; got {type(rebuild).__name__}")
    if overwrite and not K.is_contiguous():
        raise NFMInputError(
            f"cholesky_solve(overwrite=True) needs a contiguous K; got strides {K.stride()}"
        )
    Y2, squeeze = as_right_hand_sides(Y, K)
    n = K.shape[0]
    mean_diag = float(K.diagonal().mean()) if n else 1.0
    ladder = _ladder(K.dtype)
    jitters = (0.0, *(j * max(mean_diag, 1e-300) for j in ladder))
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
        raise _not_positive_definite(n, reg, K.dtype)
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
        coef=coef[:, 0] if squeeze else coef,
        jitter=used,
        diagonal_shift=reg + used,
        inverse_diagonal=inverse_diag,
    )
