r"""Iterative solver of :math:`(K + \lambda I) A = Y`: block preconditioned conjugate gradients.

One ``n x n`` matrix product with the ``n x c`` right-hand sides per iteration
(``O(n^2 c)``), a Nystrom preconditioner
(:class:`~nfm.solvers.preconditioners.NystromPreconditioner`), warm starts from a previous
solution.

The residual :math:`R = Y - (K + \lambda I) A` that CG updates recursively drifts away from the
true one in floating point: in float32 the recursion can report :math:`10^{-6}` while the true
relative residual is :math:`10^{-2}`. So the solver

* accumulates the iterate in float64 (``n x c``, cheap; rounding every float32 update would set
  the accuracy floor) and computes true residuals with float64 accumulation;
* replaces the recursive residual by the true one (residual replacement) when the recursion
  claims convergence, and when it has fallen by :math:`\sqrt{\epsilon}` (float64) or
  :math:`10^{-2}` (float32) since the last replacement, column by column (van der Vorst and
  Ye's reliable updating; a fixed interval is off by default,
  see :data:`nfm.solvers._stopping.RESIDUAL_REPLACEMENT_INTERVAL`: replacing at arbitrary
  points perturbs the recursion, and with a float32 iterate it made the final residual 20x
  worse);
* decides convergence on the true residual of the coefficients as returned (rounded to
  ``K``'s dtype), which is what :attr:`CGResult.relative_residual` reports;
* stops a column that stalls above ``tol`` (the attainable accuracy, the rounding of the
  coefficients, no progress, or a breakdown: :mod:`nfm.solvers._stopping`) and warns
  (:class:`~nfm.exceptions.NumericalWarning`), as it does when ``max_iter`` is reached.

:func:`conjugate_gradient_solve_regs` solves :math:`(K + \lambda_j I) A_j = Y` for a whole
grid of ridges at once: the columns of every system run as independent CG recursions, each with
its own shift, that share one block product :math:`K [P_1, \dots, P_r]` per iteration. A
product of an ``n x n`` matrix with a few columns is bound by reading ``K`` from memory, so on
a CPU one product with ``r c`` columns costs about as much as one with ``c`` (measured by
``benchmarks/bench_rfm_xrfm.py``); the grid then costs about one solve of its hardest member
instead of ``r`` solves, and one preconditioner instead of ``r``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nfm.exceptions import NFMInputError, NumericalWarning
from nfm.solvers._blas import single_threaded_blas
from nfm.solvers._stopping import ColumnStopping
from nfm.solvers._validation import (
    as_right_hand_sides,
    check_integer,
    check_kernel_system,
    check_reg,
)
from nfm.solvers.preconditioners import NystromPreconditioner

__all__ = [
    "FLOAT64_COPY_MAX_ELEMENTS",
    "SYMV_MAX_COLUMNS",
    "CGResult",
    "conjugate_gradient_solve",
    "conjugate_gradient_solve_regs",
    "default_preconditioner_rank",
]

#: at most this many right-hand sides use one BLAS ``symv`` per column (see _symmetric_product).
SYMV_MAX_COLUMNS = 4
#: the default Nystrom rank: ``min(MAX, max(MIN, n // PER_ROWS))`` (see default_preconditioner_rank)
_RANK_MIN, _RANK_MAX, _RANK_PER_ROWS = 50, 300, 16
#: rows per block of the float64-accumulated residual (times n: about 32 MB of float64).
_RESIDUAL_BLOCK_ELEMENTS = 1 << 22
#: a float32 ``K`` of at most this many entries gets one float64 copy per solve for its true
#: residuals (128 MiB of float64 at n = 4,096), instead of a conversion per residual
FLOAT64_COPY_MAX_ELEMENTS = 1 << 24


@dataclass
class CGResult:
    r"""Output of :func:`conjugate_gradient_solve`.

    Attributes
    ----------
    coef : (n, c) or (n,) tensor
        The float64-accumulated iterate :math:`A` rounded to ``K``'s dtype (per column, the
        last iterate, or an earlier verified one when its true residual was smaller).
    n_iter : int
        CG iterations run (one product :math:`K P` each).
    relative_residual : float
        The TRUE residual :math:`\max_c \lVert y_c - (K + \lambda I) a_c\rVert / \lVert y_c\rVert`
        of the returned ``coef``, computed with float64 accumulation.
    converged : bool
        ``relative_residual <= tol``.
    column_residuals : (c,) float64 tensor
        The true relative residual of every column (on CPU).
    stalled : bool
        Some column stopped above ``tol`` before ``max_iter``: attainable accuracy, rounding
        of the coefficients, no progress or breakdown (see :mod:`nfm.solvers._stopping`).
    n_products : int
        All products with ``K``: ``n_iter`` plus the residual recomputations.
    diagonal_shift : float
        :math:`\lambda`: the system solved is :math:`(K + \lambda I) A = Y`.
    """

    coef: torch.Tensor
    n_iter: int
    relative_residual: float
    converged: bool
    column_residuals: torch.Tensor
    stalled: bool
    n_products: int
    diagonal_shift: float


def default_preconditioner_rank(n: int) -> int:
    r"""The Nystrom rank used when none is given: :math:`\min(300, \max(50, \lfloor n/16 \rfloor))`.

    Building the preconditioner costs :math:`O(n r^2)` and each CG iteration :math:`O(n^2)`, so
    at small ``n`` a rank of 300 costs more to build than it saves in iterations; from
    ``n = 4,800`` on the rank is 300, the solver's earlier fixed value.
    """
    return min(_RANK_MAX, max(_RANK_MIN, n // _RANK_PER_ROWS))


def _symmetric_product(K: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``V -> K V`` for the symmetric ``K``, the fastest form for ``V``'s columns.

    The product of an ``n x n`` matrix with a few columns is memory bound. On CPU, for up to
    :data:`SYMV_MAX_COLUMNS` columns, BLAS ``ssymv``/``dsymv`` (one per column, reading one
    triangle of ``K``), single-threaded, is about 1.5x faster than torch's GEMM on two threads
    (n = 12,800, float32, 2 cores); with two BLAS threads it is faster still, but its spinning
    threads then slow down the torch operations that follow (the preconditioner, 3x). Otherwise
    ``K V = (V^T K)^T``, several times faster than ``K @ V`` for few columns on CPU (a
    row-major GEMM with a short inner loop).
    """

    def gemm(V: torch.Tensor) -> torch.Tensor:
        return (V.T @ K).T

    if not (
        K.device.type == "cpu"
        and K.dtype in (torch.float32, torch.float64)
        and K.is_contiguous()
        and not K.requires_grad
    ):
        return gemm
    from scipy.linalg import blas

    symv = blas.ssymv if K.dtype == torch.float32 else blas.dsymv
    column_major = K.numpy().T  # F-contiguous view; its lower triangle is K's upper one

    def product(V: torch.Tensor) -> torch.Tensor:
        if V.shape[1] > SYMV_MAX_COLUMNS:  # e.g. the columns of a ridge grid still running
            return gemm(V)
        out = torch.empty_like(V)
        with single_threaded_blas():
            for j in range(V.shape[1]):
                column = np.ascontiguousarray(V[:, j].numpy())
                out[:, j] = torch.from_numpy(symv(1.0, column_major, column, lower=1))
        return out

    return product


def _true_residual(
    K: torch.Tensor,
    X: torch.Tensor,
    Y64: torch.Tensor,
    shifts: torch.Tensor,
    product: Callable[[torch.Tensor], torch.Tensor],
    K64: torch.Tensor | None = None,
) -> torch.Tensor:
    r""":math:`Y - K X - X \mathrm{diag}(\lambda)` in float64 (column ``j`` shifted by
    ``shifts[j]``; ``K``'s rows converted to float64 block by block, or its float64 copy
    ``K64`` when given)."""
    X64 = X.to(torch.float64)
    if K.dtype == torch.float64:
        R = Y64 - product(X64)
    elif K64 is not None:
        R = Y64 - (X64.T @ K64).T  # = K X for the symmetric K (the fast form for few columns)
    else:
        n = K.shape[0]
        rows = max(1, _RESIDUAL_BLOCK_ELEMENTS // max(n, 1))
        R = Y64.clone()
        X64_rows = X64.T.contiguous()  # (c, n) @ (n, rows): the fast form for few columns
        for i in range(0, n, rows):
            R[i : i + rows] -= (X64_rows @ K[i : i + rows].to(torch.float64).T).T
    return R.sub_(X64 * shifts.to(R))


def _check_options(tol, max_iter, preconditioner_rank, generator) -> None:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise NFMInputError(f"tol must be a real number > 0 or None; got {tol!r}")
    if not (math.isfinite(tol) and tol > 0):
        raise NFMInputError(f"tol must be a finite number > 0; got {tol!r}")
    check_integer(max_iter, "max_iter", minimum=0)
    check_integer(preconditioner_rank, "preconditioner_rank", minimum=0)
    if not isinstance(generator, torch.Generator):
        raise NFMInputError(
            f"generator must be a torch.Generator or None; got {type(generator).__name__}"
        )


def _initial_iterate(initial: object, Y: torch.Tensor, Y2: torch.Tensor) -> torch.Tensor:
    if not isinstance(initial, torch.Tensor):
        raise NFMInputError(f"initial must be a torch.Tensor or None; got {type(initial).__name__}")
    if tuple(initial.shape) not in (tuple(Y.shape), tuple(Y2.shape)):
        raise NFMInputError(
            f"initial must have Y's shape {tuple(Y.shape)}; got shape {tuple(initial.shape)}"
        )
    X = initial.reshape(Y2.shape).to(Y2).clone()
    if not bool(torch.isfinite(X).all()):
        raise NFMInputError("initial must be finite; it has NaN/inf entries")
    return X


def conjugate_gradient_solve(
    K: torch.Tensor,
    Y: torch.Tensor,
    reg: float,
    *,
    initial: torch.Tensor | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner_rank: int | None = None,
    generator: torch.Generator | None = None,
) -> CGResult:
    r"""Block preconditioned conjugate gradients for :math:`(K + \lambda I) A = Y`.

    Each iteration costs one product :math:`K P` with an ``n x c`` block (``O(n^2 c)``); the
    columns run as independent CG recursions sharing the product. Preconditioner: Nystrom of
    rank ``preconditioner_rank``
    (see :class:`~nfm.solvers.preconditioners.NystromPreconditioner`).
    Convergence is decided on the true relative residual
    :math:`\lVert y_c - (K + \lambda I) a_c\rVert / \lVert y_c\rVert` (see the module notes on
    residual replacement and stalls).

    Parameters
    ----------
    K : (n, n) tensor
        Symmetric positive semi-definite, finite, of a floating dtype.
    Y : (n, c) or (n,) tensor
        Right-hand sides (cast to ``K``'s dtype and device).
    reg : float
        :math:`\lambda \ge 0`.
    initial : tensor of ``Y``'s shape, optional
        Warm start (e.g. the previous RFM iteration's coefficients).
    tol : float, optional
        Stop when every column's true relative residual is at most ``tol`` (default ``1e-7`` in
        float64, ``1e-4`` in float32).
    max_iter : int, optional
        Maximum iterations (default ``max(100, min(n, 1000))``).
    preconditioner_rank : int, optional
        Number of sampled columns of the Nystrom preconditioner (0 disables it; default
        :func:`default_preconditioner_rank` of ``n``).
    generator : torch.Generator, optional
        Source of the column sample (CPU generator; default seeded with 0).

    Returns
    -------
    CGResult

    Raises
    ------
    NFMInputError
        Bad ``K``, ``Y`` or ``reg`` (as :func:`~nfm.solvers.cholesky.cholesky_solve`), or a
        bad ``initial``, ``tol``, ``max_iter``, ``preconditioner_rank`` or ``generator``.

    Warns
    -----
    NumericalWarning
        When it stops above ``tol``: ``max_iter`` reached, or stalled.
    """
    reg = check_kernel_system(K, Y, reg)
    initials = None if initial is None else [initial]
    return _solve_grid(K, Y, (reg,), initials, tol, max_iter, preconditioner_rank, generator)[0]


def conjugate_gradient_solve_regs(
    K: torch.Tensor,
    Y: torch.Tensor,
    regs: Sequence[float],
    *,
    initial: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    preconditioner_rank: int | None = None,
    generator: torch.Generator | None = None,
) -> list[CGResult]:
    r"""Solve :math:`(K + \lambda_j I) A_j = Y` for every ridge of a grid in one block CG.

    The ``len(regs) * c`` columns are independent CG recursions, column ``(j, k)`` for
    :math:`(K + \lambda_j I) a = y_k`, that share one block product with ``K`` per iteration
    and one Nystrom sample: the preconditioner of column ``(j, k)`` is that of
    :func:`conjugate_gradient_solve` for :math:`\lambda_j`. Each result is exactly what
    :func:`conjugate_gradient_solve` guarantees for its ridge (true residual, convergence on
    it, stall detection); columns that converged stop while the others continue.

    Parameters
    ----------
    K, Y, tol, max_iter, preconditioner_rank, generator
        As in :func:`conjugate_gradient_solve`.
    regs : sequence of float
        The ridges :math:`\lambda_j \ge 0` (at least one).
    initial : tensor of ``Y``'s shape, or a sequence of them (or None) per ridge, optional
        Warm starts: one shared by every ridge, or one per ridge.

    Returns
    -------
    list of CGResult
        One per ridge, in the order of ``regs``; ``n_iter`` is the iteration at which the last
        of that ridge's columns stopped, ``n_products`` the products of the whole block.

    Raises
    ------
    NFMInputError
        As :func:`conjugate_gradient_solve`, for any ridge or warm start; an empty ``regs``.
    """
    if isinstance(regs, (str, bytes)) or not isinstance(regs, Sequence) or len(regs) == 0:
        raise NFMInputError(f"regs must be a non-empty sequence of numbers >= 0; got {regs!r}")
    first = check_kernel_system(K, Y, regs[0])  # K and Y checked once
    checked = (first, *(check_reg(reg) for reg in regs[1:]))
    if initial is None or isinstance(initial, torch.Tensor):
        initials = None if initial is None else [initial] * len(checked)
    else:
        initials = list(initial)
        if len(initials) != len(checked):
            raise NFMInputError(
                f"initial must be a tensor or one per reg ({len(checked)}); got {len(initials)}"
            )
    return _solve_grid(K, Y, checked, initials, tol, max_iter, preconditioner_rank, generator)


def _solve_grid(
    K: torch.Tensor,
    Y: torch.Tensor,
    regs: tuple[float, ...],
    initials: list[torch.Tensor | None] | None,
    tol: float | None,
    max_iter: int | None,
    preconditioner_rank: int | None,
    generator: torch.Generator | None,
) -> list[CGResult]:
    """Block CG on the ``len(regs) * c`` shifted columns (arguments already checked)."""
    n = K.shape[0]
    if tol is None:
        tol = 1e-4 if K.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-7
    if max_iter is None:
        max_iter = max(100, min(n, 1000))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if preconditioner_rank is None:
        preconditioner_rank = default_preconditioner_rank(n)
    _check_options(tol, max_iter, preconditioner_rank, generator)
    tol = float(tol)
    Y_one, squeeze = as_right_hand_sides(Y, K)
    c, r = Y_one.shape[1], len(regs)
    Y2 = Y_one.repeat(1, r)  # columns (j, k) at j * c + k
    Y64 = Y.reshape(Y_one.shape).to(device=K.device, dtype=torch.float64).repeat(1, r)
    shifts64 = torch.tensor(regs, dtype=torch.float64).repeat_interleave(c).to(K.device)
    shifts = shifts64.to(K.dtype)
    has_shift = any(reg != 0 for reg in regs)
    precond = (
        NystromPreconditioner(K, shifts64.cpu(), preconditioner_rank, generator)
        if preconditioner_rank > 0 and n > 1
        else None
    )
    product = _symmetric_product(K)
    small = K.dtype != torch.float64 and n * n <= FLOAT64_COPY_MAX_ELEMENTS
    K64 = K.to(torch.float64) if small else None

    def apply_system(V: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``(K + diag(shift)) V``, for the listed ``columns`` of the block when given."""
        KV = product(V)
        if not has_shift:
            return KV
        return KV.add_(V * (shifts if columns is None else shifts[columns]))

    y_norm = torch.linalg.vector_norm(Y64, dim=0).clamp(min=torch.finfo(torch.float64).tiny)

    def relative(R_any: torch.Tensor) -> torch.Tensor:
        return (torch.linalg.vector_norm(R_any, dim=0).to(y_norm) / y_norm).cpu()

    n_products = 0

    def verified(X64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(true residual of X64 in float64, its relative norms, those of X64 rounded).

        The rounded iterate's residual is ``R64 + (K + reg I)(X64 - rounded)``: the correction
        is tiny, so its product in working precision is accurate enough.
        """
        nonlocal n_products
        R64 = _true_residual(K, X64, Y64, shifts64, product, K64)
        n_products += 1
        iterate_rel = relative(R64)
        if K.dtype == torch.float64:
            return R64, iterate_rel, iterate_rel
        rounding = X64 - X64.to(K.dtype).to(torch.float64)
        n_products += 1
        returned = R64 + apply_system(rounding.to(K.dtype)).to(torch.float64)
        return R64, iterate_rel, relative(returned)

    def working_residual(X64: torch.Tensor) -> torch.Tensor:
        """``Y - (K + reg I) X64`` in ``K``'s dtype: ``X64 = hi + lo``, two products."""
        nonlocal n_products
        hi = X64.to(K.dtype)
        lo = (X64 - hi.to(torch.float64)).to(K.dtype)
        n_products += 2
        return Y2 - apply_system(hi) - apply_system(lo)

    # the iterate is accumulated in float64 (n x c: cheap); its rounding to K's dtype is the
    # returned coef. Rounding every float32 update instead would set a much higher floor.
    if initials is None:
        X64 = torch.zeros_like(Y64)
        R64 = Y64.clone()
    else:
        parts = [
            torch.zeros_like(Y_one) if start is None else _initial_iterate(start, Y, Y_one)
            for start in initials
        ]
        X64 = torch.cat(parts, dim=1).to(torch.float64)
        R64 = _true_residual(K, X64, Y64, shifts64, product, K64)  # X64 holds K.dtype values: exact
        n_products += 1
    returned_rel = relative(R64)
    R = R64.to(K.dtype)
    stopping = ColumnStopping(returned_rel, tol, K.dtype)
    stopped_at = torch.zeros(Y2.shape[1], dtype=torch.long)

    best_X64 = X64.clone()  # per column, the verified iterate with the smallest residual
    best_rel = returned_rel.clone()

    Z = precond.apply(R) if precond is not None else R
    P = Z.clone()
    rz = (R * Z).sum(dim=0)
    iterations = 0
    paused = torch.zeros_like(stopping.converged)  # claimed convergence, verification deferred
    while iterations < max_iter and stopping.any_active():
        running = stopping.active & ~paused
        live = running.to(P.device)
        if bool(live.all()):
            KP = apply_system(P)
        else:  # stopped or paused columns take no step: multiply only the others
            KP = torch.zeros_like(P)
            KP[:, live] = apply_system(P[:, live].contiguous(), live)
        iterations += 1
        n_products += 1
        stopped_at = torch.where(running, iterations, stopped_at)
        denom = (P * KP).sum(dim=0)
        stopping.breakdown((live & ~(denom > 0)).cpu())
        step = live & (denom > 0)
        alpha = torch.where(step, rz / denom.clamp(min=1e-300), 0.0)
        X64.add_((P * alpha).to(torch.float64))
        R.sub_(KP * alpha)
        recursive_rel = relative(R)
        keep_direction = stopping.active
        request = stopping.residual_request(recursive_rel, iterations, paused)
        paused = paused | stopping.deferred
        if request == "resync" and K.dtype != torch.float64:
            R_work = working_residual(X64)
            if stopping.resync(relative(R_work), recursive_rel):
                columns = stopping.replace.to(R.device)
                R[:, columns] = R_work[:, columns]  # residual replacement
                request = None
            else:  # the recursion is off: decide on an accurate residual
                request = "verify"
        if request is not None:
            R64, iterate_rel, returned_rel = verified(X64)
            refuted = stopping.verify(returned_rel, iterate_rel, recursive_rel, iterations)
            columns = stopping.replace.to(R.device)
            R[:, columns] = R64[:, columns].to(K.dtype)  # residual replacement
            keep_direction = stopping.active & ~refuted
            paused = torch.zeros_like(paused)  # every paused column was verified: resume
            improved = returned_rel < best_rel
            if bool(improved.any()):
                columns = improved.to(X64.device)
                best_X64[:, columns] = X64[:, columns]
                best_rel = torch.where(improved, returned_rel, best_rel)
        Z = precond.apply(R) if precond is not None else R
        rz_new = (R * Z).sum(dim=0)
        beta = torch.where(keep_direction.to(rz.device), rz_new / rz.clamp(min=1e-300), 0.0)
        # a paused column keeps its direction (its residual, hence Z, did not change)
        P = torch.where(paused.to(P.device), P, Z + P * beta)
        rz = rz_new
    X = X64.to(K.dtype)
    if stopping.verified_at == iterations:
        true_rel = stopping.returned_residual  # already the true residual of X
    else:
        true_rel = relative(_true_residual(K, X, Y64, shifts64, product, K64))
        n_products += 1
    # an earlier verified iterate beats the last one (or the last one is not finite)
    better = (best_rel < true_rel) | ~torch.isfinite(true_rel)
    if bool(better.any()):
        columns = better.to(X.device)
        X[:, columns] = best_X64[:, columns].to(K.dtype)
        true_rel = torch.where(better, best_rel, true_rel)
    stalled = stopping.stalled & (true_rel > tol)
    results = []
    for j, reg in enumerate(regs):
        cols = slice(j * c, (j + 1) * c)
        column_rel = true_rel[cols]
        rel_max = float(column_rel.max()) if column_rel.numel() else 0.0
        converged = rel_max <= tol
        is_stalled = bool(stalled[cols].any())
        ran = int(stopped_at[cols].max()) if c else 0
        if not converged:
            why = f"stalled ({stopping.stall_reason})" if is_stalled else "reached max_iter"
            warnings.warn(
                f"conjugate gradient stopped after {ran} iterations with true relative "
                f"residual {rel_max:.3g} > tol {tol:g}: {why} (n={n}, reg={reg:g}, "
                f"dtype={K.dtype}); increase max_iter or reg, loosen tol or use float64",
                NumericalWarning,
                stacklevel=3,
            )
        coef = X[:, cols].contiguous()
        results.append(
            CGResult(
                coef=coef[:, 0] if squeeze else coef,
                n_iter=ran,
                relative_residual=rel_max,
                converged=converged,
                column_residuals=column_rel.clone(),
                stalled=is_stalled,
                n_products=n_products,
                diagonal_shift=reg,
            )
        )
    return results
