"""Rank statistics of the tabular benchmark against hand-computed cases and scipy.

Reference values: Demsar (2006), "Statistical comparisons of classifiers over multiple data
sets", Table 5(a): q_0.05 = 1.960, 2.343, 2.569, 2.728, 3.164 for k = 2, 3, 4, 5, 10 methods.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("scipy")

from nfm.exceptions import NFMInputError
from nfm.tabular import stats

# 3 methods x 5 datasets, ties allowed (averaged ranks)
RANKS_3x5 = np.array(
    [
        [1.0, 2.0, 3.0],
        [1.0, 3.0, 2.0],
        [2.0, 1.0, 3.0],
        [1.5, 1.5, 3.0],
        [1.0, 2.0, 3.0],
    ]
)


def test_rank_matrix_orders_and_averages_ties():
    scores = np.array([[0.9, 0.8, 0.7], [0.5, 0.5, 0.1]])
    np.testing.assert_array_equal(
        stats.rank_matrix(scores, higher_is_better=True), [[1, 2, 3], [1.5, 1.5, 3]]
    )
    np.testing.assert_array_equal(
        stats.rank_matrix(scores, higher_is_better=False), [[3, 2, 1], [2.5, 2.5, 1]]
    )


@pytest.mark.parametrize(("k", "q"), [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (10, 3.164)])
def test_nemenyi_q_matches_demsar_table(k, q):
    # the table gives 3 decimals (truncated, e.g. 2.3437 -> 2.343)
    assert stats.nemenyi_q(k) == pytest.approx(q, abs=1e-3)


def test_critical_difference_3_methods_5_datasets_by_hand():
    # CD = q_0.05 sqrt(k (k + 1) / (6 N)) = 2.343 * sqrt(12 / 30)
    assert stats.nemenyi_cd(3, 5) == pytest.approx(2.343 * np.sqrt(12 / 30), abs=1e-3)
    assert stats.nemenyi_cd(3, 5) == pytest.approx(1.4818, abs=1e-3)
    # more datasets, smaller CD, as 1 / sqrt(N)
    assert stats.nemenyi_cd(3, 20) == pytest.approx(stats.nemenyi_cd(3, 5) / 2, rel=1e-12)


def test_friedman_by_hand_when_every_dataset_agrees():
    ranks = np.tile([1.0, 2.0, 3.0], (5, 1))
    result = stats.friedman_test(ranks)
    # chi2 = 12 N / (k (k+1)) (sum R_j^2 - k (k+1)^2 / 4) = 5 * (14 - 12) = 10
    assert result.chi2 == pytest.approx(10.0)
    assert result.p_chi2 == pytest.approx(np.exp(-10.0 / 2))  # chi2 with 2 df: sf = e^{-x/2}
    assert result.f_stat == np.inf and result.p_f == 0.0


def test_friedman_matches_scipy_without_ties():
    from scipy.stats import friedmanchisquare

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(12, 4)) + np.array([0.0, 0.3, 0.6, 0.9])
    ranks = stats.rank_matrix(scores, higher_is_better=True)
    ours = stats.friedman_test(ranks)
    theirs = friedmanchisquare(*scores.T)
    assert ours.chi2 == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.p_chi2 == pytest.approx(theirs.pvalue, rel=1e-10)
    # Iman-Davenport by hand from chi2
    n, k = ranks.shape
    f_f = (n - 1) * ours.chi2 / (n * (k - 1) - ours.chi2)
    assert ours.f_stat == pytest.approx(f_f)


def test_bootstrap_two_datasets_gives_their_ranks_as_bounds():
    # resampling 2 datasets: the mean is row 0 (prob 1/4), the average (1/2) or row 1 (1/4),
    # so the 2.5 and 97.5 percentiles are the two rows' ranks
    ranks = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    intervals = stats.bootstrap_mean_ranks(ranks, n_boot=4000, seed=1)
    assert [i.mean for i in intervals] == pytest.approx([2.0, 1.5, 2.5])
    assert [(i.low, i.high) for i in intervals] == [(1.0, 3.0), (1.0, 2.0), (2.0, 3.0)]


def _exact_bootstrap_means(column: np.ndarray) -> np.ndarray:
    """The means of all n^n equally likely resamples (the exact bootstrap distribution)."""
    n = len(column)
    return np.array([column[list(rows)].mean() for rows in itertools.product(range(n), repeat=n)])


def _is_quantile(means: np.ndarray, value: float, p: float, tol: float) -> bool:
    """P(mean < value) <= p + tol and P(mean <= value) >= p - tol (value is a p-quantile)."""
    eps = 1e-12
    return np.mean(means < value - eps) <= p + tol and np.mean(means <= value + eps) >= p - tol


def test_bootstrap_3x5_matches_the_exact_bootstrap_distribution():
    # 40,000 resamples: the empirical CDF is within ~0.003 of the exact one (4 sigma)
    intervals = stats.bootstrap_mean_ranks(RANKS_3x5, n_boot=40_000, seed=0)
    for j, interval in enumerate(intervals):
        column = RANKS_3x5[:, j]
        means = _exact_bootstrap_means(column)
        assert interval.mean == pytest.approx(column.mean())
        assert _is_quantile(means, interval.low, 0.025, 0.004)
        assert _is_quantile(means, interval.high, 0.975, 0.004)
        assert interval.low <= column.mean() <= interval.high


def test_bootstrap_is_deterministic_and_seeded_locally():
    state = np.random.get_state()  # noqa: NPY002 (checking the legacy global state)
    a = stats.bootstrap_mean_ranks(RANKS_3x5, n_boot=500, seed=7)
    b = stats.bootstrap_mean_ranks(RANKS_3x5, n_boot=500, seed=7)
    assert a == b
    after = np.random.get_state()  # noqa: NPY002
    assert np.all(after[1] == state[1])  # the global numpy state is untouched


def test_bootstrap_difference_is_paired():
    # method 0 is better than method 1 on every dataset by exactly one rank: the difference
    # is -1 in every resample, so the interval is the point -1
    ranks = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    d = stats.bootstrap_difference(ranks, 0, 1, n_boot=300)
    assert (d.mean, d.low, d.high) == (-1.0, -1.0, -1.0)


def test_cd_cliques_by_hand():
    # sorted: a 1.0, b 1.5, c 2.9, d 3.0; CD 1.0 -> {a, b}, {c, d}; CD 2.0 -> {a,b,c}, {b,c,d}
    ranks = [1.0, 1.5, 2.9, 3.0]
    assert stats.cd_cliques(ranks, 1.0) == [(0, 1), (2, 3)]
    assert stats.cd_cliques(ranks, 2.0) == [(0, 1, 2), (1, 2, 3)]
    assert stats.cd_cliques(ranks, 0.2) == [(2, 3)]
    assert stats.cd_cliques(ranks, 0.05) == []
    assert stats.cd_cliques([3.0, 1.0], 5.0) == [(1, 0)]


@pytest.mark.parametrize(
    "ranks", [np.ones(3), np.ones((0, 3)), np.ones((4, 1)), np.array([[1.0, np.nan]])]
)
def test_bad_rank_matrices_raise(ranks):
    with pytest.raises(NFMInputError, match="ranks"):
        stats.bootstrap_mean_ranks(ranks)


def test_bad_sizes_raise():
    with pytest.raises(NFMInputError, match="n_methods"):
        stats.nemenyi_q(1)
    with pytest.raises(NFMInputError, match="n_datasets"):
        stats.nemenyi_cd(3, 0)


def test_critical_difference_figure_draws_every_method():
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from nfm.tabular.plots import plot_critical_difference

    mean_ranks = {"rfm": 1.8, "catboost-es": 2.0, "xrfm": 2.6, "svm-rbf": 3.6}
    fig = plot_critical_difference(mean_ranks, 1.2, n_datasets=10)
    FigureCanvasAgg(fig).draw()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for name, value in mean_ranks.items():
        assert f"{name} ({value:.2f})" in texts
    assert "CD = 1.20" in texts
