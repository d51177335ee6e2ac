r"""The RFM fit loop: a pure function from tensors and settings to the per-iteration path.

For :math:`t = 0, 1, \dots, n_\mathrm{iter}`:

1. build :math:`K_{M_t}` and solve :math:`(K_{M_t} + \lambda I) A = Y` for every :math:`\lambda`
   of the grid (Cholesky: one factorisation per :math:`\lambda`, :func:`solve_ridge`;
   conjugate gradients: the whole grid in one block run, :func:`solve_ridge_grid`); score each
   on the training rows and, through the selection rule, out of sample (one kernel pass for
   the whole grid); keep the rule's best :math:`\lambda`;
2. the selection rule decides whether this iteration replaces the best predictor so far;
3. unless this was the last iteration: :math:`G` = AGOP of the predictor over the sample rows,
   :math:`M_{t+1} = \mathrm{update}(G)`; a zero AGOP (constant predictor) stops the loop.

:func:`fit_path` touches no estimator: it returns a :class:`FitPath` (every iteration's metric,
chosen ridge and scores, and the selected predictor's coefficients). A hook ``on_iteration``
sees each iteration's predictor and can stop the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nfm.kernels import Kernel
from nfm.rfm.metric import MetricUpdate
from nfm.rfm.scoring import Scores
from nfm.rfm.selection import REFIT_CG_TOL, SelectionRule
from nfm.solvers import (
    cholesky_solve,
    conjugate_gradient_solve,
    conjugate_gradient_solve_regs,
)

__all__ = [
    "FitPath",
    "FitSettings",
    "IterationRecord",
    "RidgeSolution",
    "SelectedPredictor",
    "fit_path",
    "leave_one_out_values",
    "refit",
    "solve_ridge",
    "solve_ridge_grid",
]


@dataclass(frozen=True)
class FitSettings:
    """Everything the loop needs besides the data.

    Attributes
    ----------
    kernel : Kernel
    regs : tuple of float
        The ridge grid (one value for ``LastIteration``).
    n_iter : int
        Metric updates (iterations ``0..n_iter`` are fitted).
    metric_update : MetricUpdate
    selection : SelectionRule
    scorer : callable
        ``scorer(Y, predictions) -> Scores``.
    solver : {"cholesky", "cg"}
    centered : bool
        Centred AGOP.
    block_size : int or None
        Rows per kernel block.
    cg_tol : float or None
        Conjugate-gradient tolerance of the loop's solves (``None``: the solver's default).
    """

    kernel: Kernel
    regs: tuple[float, ...]
    n_iter: int
    metric_update: MetricUpdate
    selection: SelectionRule
    scorer: Callable[[torch.Tensor, torch.Tensor], Scores]
    solver: str
    centered: bool = False
    block_size: int | None = None
    cg_tol: float | None = None


@dataclass
class IterationRecord:
    """One iteration of the path (one row of the estimators' ``history_``)."""

    iteration: int
    M: torch.Tensor
    reg: float
    jitter: float
    cg_passes: int | None
    train: Scores
    heldout: Scores | None
    scores_by_reg: dict[float, float] | None
    near_duplicate_pairs: int
    seconds: float
    agop_seconds: float | None = None

    def history_row(self, prefix: str | None) -> dict[str, Any]:
        """The record as a ``history_`` row (held-out columns named ``{prefix}_mse``, ...)."""
        row: dict[str, Any] = {
            "iteration": self.iteration,
            "reg": self.reg,
            "train_mse": self.train.mse,
            "train_score": self.train.score,
            "jitter": self.jitter,
            "cg_passes": self.cg_passes,
            "near_duplicate_pairs": self.near_duplicate_pairs,
        }
        if self.heldout is not None and prefix is not None:
            row[f"{prefix}_mse"] = self.heldout.mse
            row[f"{prefix}_score"] = self.heldout.score
            row["scores_by_reg"] = dict(self.scores_by_reg or {})
        row["seconds"] = self.seconds
        if self.agop_seconds is not None:
            row["agop_seconds"] = self.agop_seconds
        return row


@dataclass(frozen=True)
class SelectedPredictor:
    """The predictor the selection rule chose, with its out-of-sample values."""

    iteration: int
    M: torch.Tensor
    reg: float
    jitter: float
    coef: torch.Tensor
    train_values: torch.Tensor
    heldout_values: torch.Tensor | None
    heldout_targets: torch.Tensor | None


@dataclass
class FitPath:
    """The outcome of :func:`fit_path`.

    Attributes
    ----------
    records : list of IterationRecord
        Every fitted iteration, in order.
    best : SelectedPredictor
    n_updates : int
        Metric updates performed.
    stop_reason : {"n_iter", "callback", "zero_agop"}
    """

    records: list[IterationRecord] = field(default_factory=list)
    best: SelectedPredictor | None = None
    n_updates: int = 0
    stop_reason: str = "n_iter"


@dataclass(frozen=True)
class RidgeSolution:
    """Coefficients of :math:`(K + (\\lambda + \\text{jitter}) I) A = Y` and solver facts."""

    coef: torch.Tensor
    jitter: float
    inverse_diagonal: torch.Tensor | None
    cg_passes: int | None


def solve_ridge(
    K: torch.Tensor,
    Y: torch.Tensor,
    reg: float,
    *,
    solver: str,
    inverse_diagonal: bool = False,
    rebuild: Callable[[torch.Tensor], object] | None = None,
    initial: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    tol: float | None = None,
) -> RidgeSolution:
    """Solve the kernel ridge system; ``K`` may be destroyed (``rebuild(K)`` refills it).

    ``solver="cholesky"`` factors in place (jitter ladder through ``rebuild``; optional
    diagonal of the inverse); ``"cg"`` runs preconditioned conjugate gradients from
    ``initial``, stopping at ``tol``.
    """
    if solver == "cholesky":
        res = cholesky_solve(
            K, Y, reg, overwrite=True, inverse_diagonal=inverse_diagonal, rebuild=rebuild
        )
        inv = res.inverse_diagonal
        return RidgeSolution(
            coef=res.coef.to(K.device, K.dtype),
            jitter=float(res.jitter),
            inverse_diagonal=inv.to(K.device) if inv is not None else None,
            cg_passes=None,
        )
    res = conjugate_gradient_solve(K, Y, reg, initial=initial, generator=generator, tol=tol)
    return RidgeSolution(coef=res.coef, jitter=0.0, inverse_diagonal=None, cg_passes=res.n_iter)


def solve_ridge_grid(
    K: torch.Tensor,
    Y: torch.Tensor,
    regs: tuple[float, ...],
    *,
    initial: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    tol: float | None = None,
) -> list[RidgeSolution]:
    """Every ridge of the grid by one block conjugate-gradient run (``K`` is kept).

    :func:`nfm.solvers.conjugate_gradient_solve_regs`: one product with ``K`` per iteration
    for all ridges, warm-started from ``initial`` (one coefficient matrix per ridge).
    """
    results = conjugate_gradient_solve_regs(
        K, Y, list(regs), initial=initial, generator=generator, tol=tol
    )
    return [
        RidgeSolution(coef=res.coef, jitter=0.0, inverse_diagonal=None, cg_passes=res.n_iter)
        for res in results
    ]


def _gram_filler(settings: FitSettings, X: torch.Tensor, M: torch.Tensor):
    def fill(out: torch.Tensor) -> torch.Tensor:
        return settings.kernel.gram(X, X, M, out=out, block_size=settings.block_size)

    return fill


@dataclass
class _Candidate:
    reg: float
    solution: RidgeSolution
    train_values: torch.Tensor
    train: Scores
    heldout_values: torch.Tensor | None
    heldout_targets: torch.Tensor | None
    heldout: Scores | None


def fit_path(
    X: torch.Tensor,
    Y: torch.Tensor,
    M0: torch.Tensor,
    settings: FitSettings,
    *,
    agop_rows: np.ndarray,
    generator: torch.Generator,
    on_iteration: Callable[[IterationRecord, torch.Tensor], bool] | None = None,
) -> FitPath:
    """Run the RFM iterations on ``(X, Y)`` from the metric ``M0``.

    Parameters
    ----------
    X : (n, d) tensor
        Training rows (working dtype and device).
    Y : (n, c) tensor
        Regression targets (one-hot for classification).
    M0 : (d, d) tensor
        Starting metric.
    settings : FitSettings
    agop_rows : (m,) int array
        Rows of ``X`` over which each AGOP is averaged.
    generator : torch.Generator
        Source of the conjugate-gradient preconditioner's columns.
    on_iteration : callable, optional
        ``on_iteration(record, coef)`` after each predictor fit (``coef``: that iteration's
        coefficients); a true result stops the loop.

    Returns
    -------
    FitPath
    """
    kernel, selection = settings.kernel, settings.selection
    n = X.shape[0]
    K = torch.empty((n, n), dtype=X.dtype, device=X.device)
    agop_index = torch.as_tensor(agop_rows, device=X.device)
    path = FitPath()
    best_scores: Scores | None = None
    M = M0
    for iteration in range(settings.n_iter + 1):
        start = time.perf_counter()
        rebuild = _gram_filler(settings, X, M)
        if settings.solver == "cg":  # one Gram matrix, the whole grid in one block CG
            _, info = kernel.gram(X, X, M, out=K, block_size=settings.block_size, return_info=True)
            duplicates = info.near_duplicate_pairs
            # cold starts: the previous iteration's coefficients solve another metric's system
            # and saved no iterations (measured), but cost a float64 residual to start from
            solutions = solve_ridge_grid(
                K, Y, settings.regs, generator=generator, tol=settings.cg_tol
            )
        else:  # Cholesky factors K in place: one Gram matrix per ridge
            solutions = []
            for reg in settings.regs:
                _, info = kernel.gram(
                    X, X, M, out=K, block_size=settings.block_size, return_info=True
                )
                duplicates = info.near_duplicate_pairs
                solutions.append(
                    solve_ridge(
                        K,
                        Y,
                        reg,
                        solver="cholesky",
                        inverse_diagonal=selection.needs_inverse_diagonal,
                        rebuild=rebuild,
                    )
                )
        heldouts = selection.heldout_grid(
            coefs=[solution.coef for solution in solutions],
            inverse_diagonals=[solution.inverse_diagonal for solution in solutions],
            Y_train=Y,
            kernel=kernel,
            X_train=X,
            M=M,
            block_size=settings.block_size,
        )
        candidates: list[_Candidate] = []
        for reg, solution, heldout in zip(settings.regs, solutions, heldouts, strict=True):
            train_values = Y - (reg + solution.jitter) * solution.coef  # = K A
            values, targets = heldout if heldout is not None else (None, None)
            candidates.append(
                _Candidate(
                    reg=reg,
                    solution=solution,
                    train_values=train_values,
                    train=settings.scorer(Y, train_values),
                    heldout_values=values,
                    heldout_targets=targets,
                    heldout=settings.scorer(targets, values) if values is not None else None,
                )
            )
        del solutions, heldouts
        chosen = candidates[selection.best_reg([c.heldout for c in candidates])]
        by_reg = (
            {c.reg: c.heldout.score for c in candidates} if chosen.heldout is not None else None
        )
        record = IterationRecord(
            iteration=iteration,
            M=M,
            reg=chosen.reg,
            jitter=chosen.solution.jitter,
            cg_passes=chosen.solution.cg_passes,
            train=chosen.train,
            heldout=chosen.heldout,
            scores_by_reg=by_reg,
            near_duplicate_pairs=duplicates,
            seconds=time.perf_counter() - start,
        )
        if selection.improves(chosen.heldout, best_scores):
            best_scores = chosen.heldout
            path.best = SelectedPredictor(
                iteration=iteration,
                M=M,
                reg=chosen.reg,
                jitter=chosen.solution.jitter,
                coef=chosen.solution.coef,
                train_values=chosen.train_values,
                heldout_values=chosen.heldout_values,
                heldout_targets=chosen.heldout_targets,
            )
        path.records.append(record)
        coef = chosen.solution.coef
        del candidates, chosen
        if on_iteration is not None and on_iteration(record, coef):
            path.stop_reason = "callback"
            break
        if iteration == settings.n_iter:
            break
        agop_start = time.perf_counter()
        G = kernel.agop(
            X[agop_index], X, M, coef, centered=settings.centered, block_size=settings.block_size
        )
        new_M = settings.metric_update(G)
        record.agop_seconds = time.perf_counter() - agop_start
        if new_M is None:
            path.stop_reason = "zero_agop"
            break
        M = new_M
        path.n_updates = iteration + 1
    return path


def refit(
    X: torch.Tensor,
    Y: torch.Tensor,
    M: torch.Tensor,
    reg: float,
    settings: FitSettings,
    *,
    initial: torch.Tensor | None,
    generator: torch.Generator,
) -> RidgeSolution:
    """Solve the ridge system of ``(M, reg)`` on all rows ``X`` (after holdout selection)."""
    n = X.shape[0]
    rebuild = _gram_filler(settings, X, M)
    K = rebuild(torch.empty((n, n), dtype=X.dtype, device=X.device))
    return solve_ridge(
        K,
        Y,
        reg,
        solver=settings.solver,
        rebuild=rebuild,
        initial=initial,
        generator=generator,
        tol=REFIT_CG_TOL[X.dtype == torch.float64],
    )


def leave_one_out_values(
    X: torch.Tensor, Y: torch.Tensor, M: torch.Tensor, reg: float, settings: FitSettings
) -> torch.Tensor:
    r"""Leave-one-out predictions :math:`Y - A / \mathrm{diag}((K + \lambda I)^{-1})` (Cholesky)."""
    n = X.shape[0]
    rebuild = _gram_filler(settings, X, M)
    K = rebuild(torch.empty((n, n), dtype=X.dtype, device=X.device))
    solution = solve_ridge(K, Y, reg, solver="cholesky", inverse_diagonal=True, rebuild=rebuild)
    return Y - solution.coef / solution.inverse_diagonal[:, None]
