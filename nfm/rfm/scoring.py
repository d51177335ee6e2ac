r"""Scores of a set of predictions, used to select the iteration and the ridge.

* regression: mean squared error :math:`\frac{1}{nc}\sum (Y - P)^2` and the mean over outputs
  of :math:`R^2 = 1 - \mathrm{SSE}/\mathrm{SST}` (0 for a constant output);
* classification (one-hot ``Y``): accuracy of :math:`\arg\max_c P` and the mean squared error.

Higher is better: candidates are ordered by ``(score, -mse)`` (:attr:`Scores.key`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Scores", "classification_scores", "regression_scores"]


@dataclass(frozen=True)
class Scores:
    """A score (R^2 or accuracy; higher is better) and the mean squared error."""

    score: float
    mse: float

    @property
    def key(self) -> tuple[float, float]:
        """The selection order: higher score first, then lower mean squared error."""
        return (self.score, -self.mse)


def regression_scores(Y: torch.Tensor, pred: torch.Tensor) -> Scores:
    """Mean R^2 over the outputs and the mean squared error of ``pred`` for ``Y`` (n, c)."""
    resid = ((Y - pred) ** 2).sum(dim=0)
    total = ((Y - Y.mean(dim=0)) ** 2).sum(dim=0)
    r2 = torch.where(total > 0, 1 - resid / total.clamp(min=1e-300), torch.zeros_like(total))
    return Scores(score=float(r2.mean()), mse=float(resid.sum() / Y.numel()))


def classification_scores(Y: torch.Tensor, pred: torch.Tensor) -> Scores:
    """Accuracy of ``argmax pred`` for the one-hot ``Y`` (n, k) and the mean squared error."""
    acc = float((pred.argmax(dim=1) == Y.argmax(dim=1)).to(torch.float64).mean())
    return Scores(score=acc, mse=float(((Y - pred) ** 2).mean()))
