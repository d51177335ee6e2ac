r"""Choosing a solver for :math:`(K + \lambda I) A = Y`: Cholesky for small ``n``, CG above."""

from __future__ import annotations

import torch

from nfm.exceptions import NFMInputError
from nfm.solvers._validation import check_integer
from nfm.solvers.cg import conjugate_gradient_solve
from nfm.solvers.cholesky import cholesky_solve

__all__ = ["AUTO_CHOLESKY_MAX_N", "SOLVERS", "resolve_solver", "solve_kernel_system"]

#: ``solver="auto"`` uses Cholesky up to this many training rows, conjugate gradient above.
AUTO_CHOLESKY_MAX_N = 1000
#: the accepted values of ``solver``.
SOLVERS: tuple[str, ...] = ("auto", "cholesky", "cg")


def resolve_solver(solver: str, n: int) -> str:
    """Turn ``"auto"`` into ``"cholesky"`` (``n <= AUTO_CHOLESKY_MAX_N``) or ``"cg"``.

    Raises
    ------
    NFMInputError
        ``solver`` not one of :data:`SOLVERS`, or ``n`` not an integer >= 0.
    """
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise NFMInputError(f"solver must be 'auto', 'cholesky' or 'cg'; got {solver!r}")
    n = check_integer(n, "n", minimum=0)
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

    ``solver="auto"`` uses :func:`~nfm.solvers.cholesky.cholesky_solve` for
    ``n <= AUTO_CHOLESKY_MAX_N`` and :func:`~nfm.solvers.cg.conjugate_gradient_solve` above
    (``initial`` and ``generator`` are used by CG only, ``overwrite`` by Cholesky only). The
    arguments are checked by the chosen solver (:class:`~nfm.exceptions.NFMInputError`).
    """
    if not isinstance(K, torch.Tensor):
        raise NFMInputError(f"K must be a torch.Tensor; got {type(K).__name__}")
    chosen = resolve_solver(solver, K.shape[0] if K.ndim else 0)
    if chosen == "cholesky":
        return cholesky_solve(K, Y, reg, overwrite=overwrite).coef
    return conjugate_gradient_solve(K, Y, reg, initial=initial, generator=generator).coef
