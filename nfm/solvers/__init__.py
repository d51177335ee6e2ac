r"""Solvers for the kernel ridge system :math:`(K + \lambda I)\, A = Y`.

==========================================  ===================================================
:mod:`nfm.solvers.cholesky`                 direct: in-place Cholesky, jitter ladder,
                                            :math:`\mathrm{diag}((K + \lambda I)^{-1})` for
                                            leave-one-out residuals
:mod:`nfm.solvers.cg`                       iterative: block preconditioned conjugate
                                            gradients, ``O(n^2 c)`` per iteration, residual
                                            replacement, convergence on the true residual;
                                            a whole ridge grid in one block run
:mod:`nfm.solvers.preconditioners`          the Nystrom preconditioner of CG
:mod:`nfm.solvers.dispatch`                 ``solver="auto"``: Cholesky up to
                                            :data:`AUTO_CHOLESKY_MAX_N` rows, CG above
==========================================  ===================================================

Both solvers return the system they actually solved: ``(K + s I) A = Y`` with
``s = result.diagonal_shift`` (``reg``, plus the jitter of the Cholesky ladder when it was used).
"""

from nfm.solvers.cg import (
    CGResult,
    conjugate_gradient_solve,
    conjugate_gradient_solve_regs,
    default_preconditioner_rank,
)
from nfm.solvers.cholesky import JITTER_LADDER, CholeskyResult, cholesky_solve
from nfm.solvers.dispatch import AUTO_CHOLESKY_MAX_N, resolve_solver, solve_kernel_system

__all__ = [
    "AUTO_CHOLESKY_MAX_N",
    "JITTER_LADDER",
    "CGResult",
    "CholeskyResult",
    "cholesky_solve",
    "conjugate_gradient_solve",
    "conjugate_gradient_solve_regs",
    "default_preconditioner_rank",
    "resolve_solver",
    "solve_kernel_system",
]
