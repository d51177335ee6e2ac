"""Statistics over datasets: mean ranks with bootstrap intervals, Friedman test, Nemenyi CD.

All functions take a rank matrix ``ranks`` of shape (N datasets, k methods), ranks 1..k within
each row (1 = best, ties averaged), as :func:`rank_matrix` makes from a score matrix.

- **Bootstrap interval of the mean rank** (:func:`bootstrap_mean_ranks`): draw N datasets with
  replacement (a private ``numpy.random.default_rng(seed)``), average their rank rows, repeat
  ``n_boot`` times; the interval is the (2.5, 97.5) percentiles of those means (for
  ``level=0.95``). Ranks are computed once per dataset, before resampling: resampling datasets
  does not change a dataset's ranks.
- **Friedman test** (:func:`friedman_test`, Demsar 2006, eq. without tie correction): with R_j
  the mean rank of method j,

      chi2_F = 12 N / (k (k + 1)) * (sum_j R_j^2 - k (k + 1)^2 / 4),

  p-value from the chi-square distribution with k - 1 degrees of freedom; and Iman and
  Davenport's F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F) with (k - 1, (k - 1)(N - 1)) degrees
  of freedom.
- **Nemenyi critical difference** (:func:`nemenyi_cd`): two mean ranks differ significantly at
  level alpha when they differ by more than

      CD = q_alpha * sqrt(k (k + 1) / (6 N)),   q_alpha = Q_{1-alpha}(k, inf) / sqrt(2),

  Q the studentized range distribution (``scipy.stats.studentized_range``) for k groups and
  infinite degrees of freedom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nfm.exceptions import NFMInputError


def _check_ranks(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=float)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 2:
        raise NFMInputError(
            f"ranks: expected a (datasets, methods) matrix with >= 1 row and >= 2 columns, "
            f"got shape {r.shape}"
        )
    if not np.all(np.isfinite(r)):
        raise NFMInputError("ranks: every entry must be finite (drop incomplete datasets first)")
    return r


def rank_matrix(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Ranks within each row of a (datasets, methods) score matrix; 1 = best, ties averaged."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise NFMInputError(f"scores: expected a 2-d (datasets, methods) matrix, got {s.shape}")
    return rankdata(-s if higher_is_better else s, method="average", axis=1)


@dataclass(frozen=True)
class RankInterval:
    """Mean rank of one method and its bootstrap percentile interval."""

    mean: float
    low: float
    high: float


def bootstrap_mean_ranks(
    ranks: np.ndarray, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> list[RankInterval]:
    """Mean rank per method with a percentile bootstrap interval over datasets.

    Parameters
    ----------
    ranks : array of shape (N, k)
    n_boot : int
        Number of bootstrap resamples of the N datasets.
    level : float
        Interval level; the bounds are the 100 (1 - level) / 2 and 100 (1 + level) / 2
        percentiles of the resampled mean ranks (``numpy.percentile``, linear interpolation).
    seed : int
        Seeds a private generator; same inputs and seed, same intervals.
    """
    r = _check_ranks(ranks)
    if not 0 < level < 1 or n_boot < 1:
        raise NFMInputError(f"level must be in (0, 1) and n_boot >= 1; got {level}, {n_boot}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, r.shape[0], size=(n_boot, r.shape[0]))
    means = r[rows].mean(axis=1)  # (n_boot, k)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return [
        RankInterval(float(m), float(lo), float(hi))
        for m, lo, hi in zip(r.mean(axis=0), low, high, strict=True)
    ]


def bootstrap_difference(
    ranks: np.ndarray,
    first: int,
    second: int,
    *,
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> RankInterval:
    """Mean of rank[first] - rank[second] over datasets, with its bootstrap interval.

    Negative means ``first`` ranks better. The datasets are resampled jointly for both
    methods (paired), exactly as in :func:`bootstrap_mean_ranks`.
    """
    r = _check_ranks(ranks)
    diff = (r[:, first] - r[:, second])[:, None]
    return bootstrap_mean_ranks(
        np.concatenate([diff, np.zeros_like(diff)], axis=1), n_boot=n_boot, level=level, seed=seed
    )[0]


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman's chi-square and Iman-Davenport's F with their p-values."""

    chi2: float
    p_chi2: float
    f_stat: float
    p_f: float
    n_datasets: int
    n_methods: int


def friedman_test(ranks: np.ndarray) -> FriedmanResult:
    """Friedman test on a rank matrix (formulas in the module docstring)."""
    from scipy.stats import chi2, f

    r = _check_ranks(ranks)
    n, k = r.shape
    mean_ranks = r.mean(axis=0)
    chi2_f = 12.0 * n / (k * (k + 1)) * (np.sum(mean_ranks**2) - k * (k + 1) ** 2 / 4.0)
    p_chi2 = float(chi2.sf(chi2_f, k - 1))
    denominator = n * (k - 1) - chi2_f
    if n > 1 and denominator > 0:
        f_f = (n - 1) * chi2_f / denominator
        p_f = float(f.sf(f_f, k - 1, (k - 1) * (n - 1)))
    else:  # every dataset ranks the methods identically (or a single dataset)
        f_f, p_f = float("inf") if n > 1 else float("nan"), 0.0 if n > 1 else float("nan")
    return FriedmanResult(float(chi2_f), p_chi2, float(f_f), p_f, n, k)


def nemenyi_q(n_methods: int, alpha: float = 0.05) -> float:
    """q_alpha = Q_{1-alpha}(k, inf) / sqrt(2) (e.g. 2.343 for k = 3, alpha = 0.05)."""
    from scipy.stats import studentized_range

    if n_methods < 2 or not 0 < alpha < 1:
        raise NFMInputError(f"n_methods must be >= 2 and alpha in (0, 1); got {n_methods}, {alpha}")
    return float(studentized_range.ppf(1 - alpha, n_methods, np.inf) / np.sqrt(2.0))


def nemenyi_cd(n_methods: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Critical difference q_alpha sqrt(k (k + 1) / (6 N)) of the Nemenyi test."""
    if n_datasets < 1:
        raise NFMInputError(f"n_datasets: expected >= 1, got {n_datasets}")
    k = n_methods
    return nemenyi_q(k, alpha) * float(np.sqrt(k * (k + 1) / (6.0 * n_datasets)))


def cd_cliques(mean_ranks: Sequence[float], cd: float) -> list[tuple[int, ...]]:
    """Maximal groups of methods whose mean ranks all lie within ``cd`` of each other.

    Methods are taken in order of mean rank; a group is a run of consecutive methods whose
    largest and smallest mean rank differ by less than ``cd`` (the bars of a CD diagram).
    Groups contained in another group and single methods are left out. Returns tuples of
    indices into ``mean_ranks``, ordered by their best member.
    """
    values = np.asarray(mean_ranks, dtype=float)
    order = np.argsort(values, kind="stable")
    runs = []
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] - values[order[start]] < cd:
            end += 1
        if end > start:
            runs.append((start, end))
    maximal = [
        (s, e)
        for s, e in runs
        if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in runs)
    ]
    return [tuple(int(i) for i in order[s : e + 1]) for s, e in maximal]
