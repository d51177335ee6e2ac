r"""How an RFM chooses its iteration and ridge without a user validation set.

Three rules (the ``selection`` parameter):

* :class:`LeaveOneOut` (``"loo"``): closed-form leave-one-out predictions of kernel ridge,
  :math:`\hat y_{-i} = y_i - a_i / [(K + \lambda I)^{-1}]_{ii}`, from the Cholesky factorisation;
* :class:`Holdout` (``"holdout"``): predictions on an internal split (:func:`holdout_split`;
  the chosen metric and ridge are then refitted on all rows);
* :class:`LastIteration` (``"last"``): no selection; one ridge and the final iteration.

Within an iteration the best ridge is the one with the best held-out scores; across iterations
a later iteration replaces the best one only when its scores are strictly better (so ties keep
the earlier, simpler predictor). Also here: the random row samples the fit needs
(:func:`stratified_sample`, used for the AGOP sample and the holdout split).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from nfm.exceptions import NFMInputError
from nfm.kernels import Kernel
from nfm.rfm.scoring import Scores

__all__ = [
    "REFIT_CG_TOL",
    "SELECTION_CG_TOL",
    "Holdout",
    "LastIteration",
    "LeaveOneOut",
    "SelectionRule",
    "holdout_split",
    "stratified_sample",
]

#: Conjugate-gradient tolerance (float32, float64) of the iterations fitted on the internal
#: holdout split: 100x / 10x the solver's default (1e-4, 1e-7), since these solutions only feed
#: the holdout scores and the AGOP (benchmarks/bench_selection_tolerance.py); the selected
#: predictor is refitted on all rows at REFIT_CG_TOL.
SELECTION_CG_TOL: tuple[float, float] = (1e-2, 1e-6)

#: Conjugate-gradient tolerance (float32, float64) of the refit on all rows. In float32 the
#: true relative residual that conjugate gradients can attain on these Gram matrices is about
#: 1e-4 at n = 8,000 (measured: a solve asked for 1e-4 stalled at 1.04e-4), so the refit asks
#: for 3e-4, which it reaches; float64 keeps the solver's default.
REFIT_CG_TOL: tuple[float, float] = (3e-4, 1e-7)


def stratified_sample(
    labels: np.ndarray | None, n: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    r"""``size`` distinct random row indices out of ``n``, sorted; all rows when ``size >= n``.

    With ``labels``, class ``c`` gets about its share :math:`s_c = n_c \cdot size / n` of rows:
    first :math:`\lfloor s_c \rfloor`, raised to one row per class (taken back from the largest
    quotas if that overshoots), then the remaining rows one at a time to the class furthest
    below its share that still has rows left. With fewer rows than classes, ``size`` distinct
    classes are drawn with probabilities :math:`n_c / n`, one row each.
    """
    if size >= n:
        return np.arange(n)
    if labels is None:
        return np.sort(rng.choice(n, size=size, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts * size / n
    quota = np.floor(shares).astype(int)
    if size < classes.size:  # fewer rows than classes: random classes, weighted by size
        quota = np.zeros_like(counts)
        quota[rng.choice(classes.size, size=size, replace=False, p=counts / n)] = 1
    else:
        quota = np.maximum(quota, 1)
        while quota.sum() > size:  # the one-row guarantee overshot: trim the largest quota
            quota[np.argmax(np.where(quota > 1, quota - shares, -np.inf))] -= 1
    while quota.sum() < size:
        deficit = np.where(quota < counts, shares - quota, -np.inf)
        quota[np.argmax(deficit)] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), size=q, replace=False)
        for cls, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def holdout_split(
    n: int, fraction: float, labels: np.ndarray | None, rng: np.random.Generator, owner: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (training rows, validation rows): ``round(fraction * n)`` rows held out.

    At least one row is held out and at least two are kept; stratified by ``labels`` when given.

    Raises
    ------
    NFMInputError
        With fewer than 3 rows.
    """
    n_val = min(max(round(fraction * n), 1), n - 2)
    if n_val < 1:
        raise NFMInputError(f"{owner}: selection='holdout' needs at least 3 samples; got {n}")
    val = stratified_sample(labels, n, n_val, rng)
    mask = np.ones(n, dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask), val


class SelectionRule(ABC):
    """A selection rule: out-of-sample predictions of a candidate, and which candidate wins."""

    #: the value of the estimator's ``selection_``
    name: ClassVar[str]
    #: prefix of the held-out columns in ``history_`` ("loo", "val"), or None
    history_prefix: ClassVar[str | None] = None
    #: whether the solver must return diag((K + reg I)^{-1})
    needs_inverse_diagonal: ClassVar[bool] = False

    @abstractmethod
    def heldout(
        self,
        *,
        coef: torch.Tensor,
        inverse_diagonal: torch.Tensor | None,
        Y_train: torch.Tensor,
        kernel: Kernel,
        X_train: torch.Tensor,
        M: torch.Tensor,
        block_size: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Out-of-sample predictions of the candidate ``coef`` and their targets (or None)."""

    def heldout_grid(
        self,
        *,
        coefs: Sequence[torch.Tensor],
        inverse_diagonals: Sequence[torch.Tensor | None],
        **kwargs: Any,
    ) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """:meth:`heldout` for every candidate of a ridge grid (same other arguments)."""
        return [
            self.heldout(coef=coef, inverse_diagonal=inv, **kwargs)
            for coef, inv in zip(coefs, inverse_diagonals, strict=True)
        ]

    def best_reg(self, heldout_scores: Sequence[Scores | None]) -> int:
        """Index of the winning ridge among one iteration's candidates."""
        keys = [s.key for s in heldout_scores]  # type: ignore[union-attr]
        return max(range(len(keys)), key=keys.__getitem__)

    def improves(self, new: Scores | None, best: Scores | None) -> bool:
        """Whether an iteration with held-out scores ``new`` replaces the best one so far."""
        return best is None or new.key > best.key  # type: ignore[union-attr]


class LeaveOneOut(SelectionRule):
    r"""Closed-form leave-one-out: :math:`\hat Y_{-i} = Y_i - A_i / [(K + \lambda I)^{-1}]_{ii}`."""

    name = "loo"
    history_prefix = "loo"
    needs_inverse_diagonal = True

    def heldout(self, *, coef, inverse_diagonal, Y_train, **_: Any):
        return Y_train - coef / inverse_diagonal[:, None], Y_train


class Holdout(SelectionRule):
    """Predictions on the internal validation rows ``X_val`` with targets ``Y_val``."""

    name = "holdout"
    history_prefix = "val"

    def __init__(self, X_val: torch.Tensor, Y_val: torch.Tensor) -> None:
        self.X_val = X_val
        self.Y_val = Y_val

    def heldout(self, *, coef, kernel, X_train, M, block_size, **_: Any):
        values = kernel.predictor_values(self.X_val, X_train, M, coef, block_size=block_size)
        return values, self.Y_val

    def heldout_grid(self, *, coefs, kernel, X_train, M, block_size, **_: Any):
        """One pass over the validation kernel for the whole grid (coefficients side by side)."""
        values = kernel.predictor_values(
            self.X_val, X_train, M, torch.cat(list(coefs), dim=1), block_size=block_size
        )
        widths = [coef.shape[1] for coef in coefs]
        return [(part, self.Y_val) for part in torch.split(values, widths, dim=1)]


class LastIteration(SelectionRule):
    """No selection: the single ridge, and every iteration replaces the previous one."""

    name = "last"

    def heldout(self, **_: Any):
        return None

    def best_reg(self, heldout_scores: Sequence[Scores | None]) -> int:
        return 0

    def improves(self, new: Scores | None, best: Scores | None) -> bool:
        return True
