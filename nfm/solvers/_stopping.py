r"""When the conjugate-gradient columns stop: converged on the true residual, or stalled.

Each column of the block CG of :mod:`nfm.solvers.cg` runs until it converged (its verified
true relative residual :math:`\lVert y - (K + \lambda I) a\rVert / \lVert y\rVert \le` ``tol``)
or stalled above ``tol``:

* floor: the recursion was refuted -- it claimed convergence, or reported a residual less than
  half the true one (:data:`REFUTING_FACTOR`) -- and the true residual then failed to halve
  within :data:`FLOOR_WINDOW` iterations (verified every :data:`FLOOR_CHECK_INTERVAL`), or was
  refuted again without it halving: the attainable accuracy of the arithmetic;
* rounding: the float64 iterate is at least ten times more accurate than its rounding to the
  working dtype, which still misses ``tol`` -- no iteration can help the returned coefficients;
* no progress: the residual did not fall below :data:`STALL_PROGRESS` times its best value for
  :data:`STALL_WINDOW` iterations;
* breakdown: :math:`p^T (K + \lambda I) p \le 0` (``K`` is not positive semi-definite).

A convergence claim is verified at once only when it is the last running column's; earlier
claims are deferred (the caller pauses those columns) and verified together with it, so a
block of many right-hand sides (a ridge grid) pays one float64 residual per round of claims.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "FLOOR_CHECK_INTERVAL",
    "FLOOR_WINDOW",
    "REFUTING_FACTOR",
    "REPLACEMENT_DROP",
    "RESIDUAL_REPLACEMENT_INTERVAL",
    "ROUNDING_GAP",
    "STALL_PROGRESS",
    "STALL_WINDOW",
    "ColumnStopping",
]

#: the recursive residual is replaced by the true one when it has fallen below this fraction of
#: its largest value since the last replacement (van der Vorst and Ye's reliable updating).
#: None: sqrt(machine epsilon) in float64 (their choice; 1e-2 cost up to 20% more
#: iterations there), 1e-2 in lower precisions (where sqrt(eps) = 3e-4 let the float32
#: recursion drift a thousandfold below the true residual between replacements).
REPLACEMENT_DROP: float | None = None
#: ... and at least every this many iterations (None: only on drops, claims and floor checks).
RESIDUAL_REPLACEMENT_INTERVAL: int | None = None
#: after a refuted convergence claim the true residual must halve within this many iterations.
FLOOR_WINDOW = 50
#: a recursive residual below the true one over this factor refutes the recursion.
REFUTING_FACTOR = 2.0
#: the true residual is verified this often while a refuted claim is pending.
FLOOR_CHECK_INTERVAL = 10
#: rounding stall: the float64 iterate's residual is below this fraction of the rounded one's.
ROUNDING_GAP = 0.1
#: no progress: the residual has not fallen below STALL_PROGRESS x its best value for
#: STALL_WINDOW iterations.
STALL_WINDOW = 500
#: see :data:`STALL_WINDOW`.
STALL_PROGRESS = 0.99


class ColumnStopping:
    """Per-column convergence and stall bookkeeping of block CG (small tensors on CPU).

    Parameters
    ----------
    returned_residual : (c,) tensor
        The true relative residual of the starting coefficients (as they would be returned).
    tol : float
        The convergence tolerance on the true relative residual.
    dtype : torch.dtype
        The working dtype of the recursion (sets the replacement drop).

    Attributes
    ----------
    returned_residual : (c,) tensor
        The last verified true relative residual of the coefficients as returned (rounded to
        the working dtype).
    verified_at : int
        The iteration of that verification.
    converged, stalled : (c,) bool tensors
    stall_reason : str
        Why the first column stalled ("" if none).
    replace : (c,) bool tensor
        The columns whose recursive residual the last request asked to replace.
    deferred : (c,) bool tensor
        The columns whose convergence claim the last request deferred (to be paused).
    """

    def __init__(self, returned_residual: torch.Tensor, tol: float, dtype: torch.dtype):
        self.tol = tol
        if REPLACEMENT_DROP is not None:
            self._drop = REPLACEMENT_DROP
        else:
            self._drop = math.sqrt(torch.finfo(dtype).eps) if dtype == torch.float64 else 1e-2
        self.returned_residual = returned_residual
        self.verified_at = 0
        self.converged = returned_residual <= tol
        self.stalled = torch.zeros_like(self.converged)
        self.stall_reason = ""
        self._peak = returned_residual.clone()  # largest recursive residual since replacement
        self._best = returned_residual.clone()  # reference of the no-progress window
        self._best_at = torch.zeros(returned_residual.shape, dtype=torch.long)
        # after a refutation: the best verified residual since, and when it last halved
        self._floor_best = torch.full_like(returned_residual, math.inf)
        self._floor_since = torch.zeros(returned_residual.shape, dtype=torch.long)
        self._claims = torch.zeros_like(self.converged)
        self.replace = torch.zeros_like(self.converged)
        self.deferred = torch.zeros_like(self.converged)

    @property
    def active(self) -> torch.Tensor:
        """Columns still iterating."""
        return ~self.converged & ~self.stalled

    def any_active(self) -> bool:
        return bool(self.active.any())

    def _stall(self, mask: torch.Tensor, reason: str) -> None:
        mask = mask & self.active
        if bool(mask.any()):
            self.stalled |= mask
            self.stall_reason = self.stall_reason or reason

    def breakdown(self, mask: torch.Tensor) -> None:
        r"""Stop the columns where :math:`p^T (K + \lambda I) p \le 0`."""
        self._stall(mask, "breakdown: p^T (K + reg I) p <= 0, K + reg I is not positive definite")

    def residual_request(
        self, recursive: torch.Tensor, iteration: int, paused: torch.Tensor | None = None
    ) -> str | None:
        """Record the recursive residuals; say whether a true residual is needed now.

        A convergence claim is verified at once only when no other running column is still
        above ``tol``; otherwise the claiming columns are returned in :attr:`deferred`, the
        caller pauses them (no further steps), and they are verified together with the last
        claim (one float64 residual for the whole block instead of one per claim). Paused
        columns do not age towards the no-progress stall.

        Parameters
        ----------
        recursive : (c,) tensor
            The recursively updated relative residuals.
        iteration : int
        paused : (c,) bool tensor, optional
            Columns paused after a deferred claim.

        Returns
        -------
        "verify", "resync" or None
            ``"verify"``: an accurate true residual for decisions (a convergence claim, a floor
            check, the fixed interval); ``"resync"``: one in working precision suffices, to
            replace a recursive residual that fell by the replacement drop. The columns to
            replace are :attr:`replace`.
        """
        if paused is None:
            paused = torch.zeros_like(self.converged)
        progressed = recursive < STALL_PROGRESS * self._best
        self._best = torch.where(progressed & ~paused, recursive, self._best)
        self._best_at = torch.where(progressed | paused, iteration, self._best_at)
        self._stall(
            iteration - self._best_at >= STALL_WINDOW,
            f"the residual made no progress over {STALL_WINDOW} iterations",
        )
        running = self.active & ~paused
        self._peak = torch.where(running, torch.maximum(self._peak, recursive), self._peak)
        claims = running & (recursive <= self.tol)
        floor_checks = running & torch.isfinite(self._floor_best)
        if iteration % FLOOR_CHECK_INTERVAL != 0:
            floor_checks = torch.zeros_like(floor_checks)
        periodic = (
            RESIDUAL_REPLACEMENT_INTERVAL is not None
            and iteration % RESIDUAL_REPLACEMENT_INTERVAL == 0
        )
        drops = running & (recursive <= self._drop * self._peak)
        self.deferred = torch.zeros_like(claims)
        others = running & ~claims
        if not periodic and not bool(floor_checks.any()) and bool(others.any()):
            self.deferred = claims  # verified later, with the last claim
            claims = torch.zeros_like(claims)
            drops = drops & ~self.deferred
        else:
            claims = claims | (self.active & paused)
        self._claims = claims
        self.replace = running if periodic else claims | floor_checks | drops
        if periodic or bool((claims | floor_checks).any()):
            return "verify"
        return "resync" if bool(drops.any()) else None

    def resync(self, iterate_residual: torch.Tensor, recursive_residual: torch.Tensor) -> bool:
        """Offer working-precision true residuals for the :attr:`replace` columns.

        Returns True (accepted, no decision taken) when they agree with the recursion within
        :data:`REFUTING_FACTOR`; False when the recursion is off, and an accurate
        verification should decide.
        """
        off = self.replace & (iterate_residual > REFUTING_FACTOR * recursive_residual)
        if bool(off.any()):
            return False
        self._peak = torch.where(self.replace, iterate_residual, self._peak)
        return True

    def verify(
        self,
        returned_residual: torch.Tensor,
        iterate_residual: torch.Tensor,
        recursive_residual: torch.Tensor,
        iteration: int,
    ) -> torch.Tensor:
        """Take accurate true residuals of every column; converge or stall the columns.

        Parameters
        ----------
        returned_residual : (c,) tensor
            True relative residual of the coefficients rounded to the working dtype.
        iterate_residual : (c,) tensor
            True relative residual of the float64 iterate.
        recursive_residual : (c,) tensor
            What the recursion reported for the same iterate.
        iteration : int

        Returns
        -------
        (c,) bool tensor
            The columns whose recursion was refuted. They join :attr:`replace` (the columns
            whose recursive residual is replaced by the true one), and their search
            directions restart from it (a stale direction made the true residual jump
            tenfold).
        """
        active = self.active
        self.returned_residual = returned_residual
        self.verified_at = iteration
        self.converged |= active & (returned_residual <= self.tol)
        self._stall(
            iterate_residual <= ROUNDING_GAP * returned_residual,
            "the float64 iterate is far more accurate than its rounding to the working dtype, "
            "which cannot attain tol",
        )
        pending = torch.isfinite(self._floor_best)
        halved = pending & (returned_residual <= 0.5 * self._floor_best)
        lying = active & (iterate_residual > REFUTING_FACTOR * recursive_residual)
        refuted = (self._claims | lying) & ~self.converged
        self._stall(
            (pending & ~halved) & (refuted | (iteration - self._floor_since >= FLOOR_WINDOW)),
            "the true residual refuted the recursively updated one and then did not halve "
            f"within {FLOOR_WINDOW} iterations: the attainable accuracy",
        )
        start = halved | (refuted & ~pending)
        best = torch.where(pending, torch.minimum(self._floor_best, returned_residual), math.inf)
        self._floor_best = torch.where(start, returned_residual, best)
        self._floor_since = torch.where(start, iteration, self._floor_since)
        self.replace = self.replace | refuted
        self._peak = torch.where(self.replace, iterate_residual, self._peak)
        self._claims = torch.zeros_like(self._claims)
        return refuted
