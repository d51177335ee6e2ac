"""Feature selection from an AGOP diagonal, and the AGOP diagonal of a fitted RFM."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nfm
from nfm.exceptions import NFMInputError
from nfm.pruning import rfm_agop_diagonal, select_by_coverage


@pytest.mark.parametrize(
    ("diagonal", "coverage", "expected"),
    [
        ([1.0, 5.0, 3.0, 1.0], 0.5, [1]),  # 5 / 10 = 0.5 exactly: one feature covers it
        ([1.0, 5.0, 3.0, 1.0], 0.8, [1, 2]),
        ([1.0, 5.0, 3.0, 1.0], 0.81, [1, 2, 0]),  # ties: the lower index first
        ([1.0, 5.0, 3.0, 1.0], 1.0, [1, 2, 0, 3]),
        ([1.0, 0.0, 1.0], 1.0, [0, 2]),  # a zero entry is never needed
        ([2.0], 0.3, [0]),
    ],
)
def test_select_by_coverage_hand_examples(diagonal, coverage, expected):
    chosen = select_by_coverage(np.array(diagonal), coverage)
    assert chosen.indices.tolist() == expected
    assert chosen.n_selected == len(expected) and chosen.n_features_in == len(diagonal)
    assert chosen.covered >= coverage - 1e-12
    assert math.isclose(chosen.covered, sum(diagonal[i] for i in expected) / sum(diagonal))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30).filter(
        lambda v: sum(v) > 1e-3
    ),
    st.floats(0.01, 1.0),
)
def test_select_by_coverage_is_the_fewest_features_that_cover(values, coverage):
    g = np.array(values)
    chosen = select_by_coverage(g, coverage)
    k = chosen.n_selected
    total = g.sum()
    top = np.sort(g)[::-1]
    assert g[chosen.indices].sum() >= coverage * total * (1 - 1e-9)
    if k > 1:  # one fewer feature, even the best k - 1, does not cover the share
        assert top[: k - 1].sum() < coverage * total
    assert (np.diff(g[chosen.indices]) <= 0).all()  # most important first
    assert len(set(chosen.indices.tolist())) == k


def test_transform_keeps_the_selected_columns():
    chosen = select_by_coverage([0.1, 3.0, 0.0, 2.0], 0.9)
    X = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(chosen.transform(X), X[:, [1, 3]])
    torch.testing.assert_close(chosen.transform(torch.as_tensor(X)), torch.as_tensor(X[:, [1, 3]]))
    frame = pd.DataFrame(X, columns=list("abcd"))
    assert list(chosen.transform(frame).columns) == ["b", "d"]
    with pytest.raises(NFMInputError, match="4 columns"):
        chosen.transform(np.ones((3, 5)))


@pytest.mark.parametrize("coverage", [0.0, -0.5, 1.01, math.nan, True, "0.9"])
def test_bad_coverage_is_refused(coverage):
    with pytest.raises(NFMInputError, match=r"coverage must be a number in \(0, 1\]"):
        select_by_coverage([1.0, 2.0], coverage)


@pytest.mark.parametrize(
    ("diagonal", "message"),
    [
        (np.ones((2, 2)), "1-d"),
        (np.array([]), "non-empty"),
        (np.array([1.0, -0.5]), "non-negative"),
        (np.zeros(3), "all zero"),
        (np.array([1.0, np.nan]), "NaN"),
        (["a", "b"], "1-d array of numbers"),
    ],
)
def test_bad_diagonal_is_refused(diagonal, message):
    with pytest.raises(NFMInputError, match=message):
        select_by_coverage(diagonal, 0.9)


def small_problem(n: int = 60, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(int)
    return X, y


def reference_agop_diagonal(est, X: np.ndarray) -> np.ndarray:
    """diag of mean_x sum_c grad f_c(x) grad f_c(x)^T, by autograd on the Laplace predictor.

    f(x) = sum_i a_i exp(-sqrt((x - z_i)^T M (x - z_i)) / L), written from the definition.
    """
    Z = torch.as_tensor(est.X_fit_, dtype=torch.float64)
    M = torch.as_tensor(est.M_, dtype=torch.float64)
    A = torch.as_tensor(est.dual_coef_, dtype=torch.float64).reshape(Z.shape[0], -1)
    L = float(est.bandwidth_)

    def f(x: torch.Tensor) -> torch.Tensor:
        diff = x[None, :] - Z
        s = ((diff @ M) * diff).sum(dim=1)
        return torch.exp(-torch.sqrt(s) / L) @ A

    total = torch.zeros(Z.shape[1], dtype=torch.float64)
    for x in torch.as_tensor(X, dtype=torch.float64):
        J = torch.autograd.functional.jacobian(f, x)  # (c, d)
        total += (J**2).sum(dim=0)
    return (total / X.shape[0]).numpy()


def test_rfm_agop_diagonal_matches_an_autograd_reference():
    X, y = small_problem()
    est = nfm.RFMClassifier(n_iter=2, reg=1e-3, dtype="float64", random_state=0).fit(X, y)
    X_new = np.random.default_rng(5).standard_normal((15, 4))  # not training points
    ours = rfm_agop_diagonal(est, X_new)
    np.testing.assert_allclose(ours, reference_agop_diagonal(est, X_new), rtol=1e-8, atol=1e-14)
    # the default averages over the training points; the metric source reads diag(M_)
    assert rfm_agop_diagonal(est).shape == (4,)
    np.testing.assert_allclose(rfm_agop_diagonal(est, source="metric"), np.diag(est.M_))


def test_a_constant_feature_has_zero_rfm_agop_diagonal():
    X, y = small_problem()
    X[:, 2] = 1.5  # carries nothing: every training point has the same value
    est = nfm.RFMClassifier(n_iter=2, dtype="float64", random_state=0).fit(X, y)
    g = rfm_agop_diagonal(est)
    assert g[2] <= 1e-12 * g.max()
    assert g[0] > 0
    assert 2 not in select_by_coverage(g, 0.999).indices


def test_rfm_agop_diagonal_refuses_bad_input():
    with pytest.raises(NFMInputError, match="call fit first"):
        rfm_agop_diagonal(nfm.RFMClassifier())
    X, y = small_problem()
    est = nfm.RFMClassifier(n_iter=1, random_state=0).fit(X, y)
    with pytest.raises(NFMInputError, match="source must be"):
        rfm_agop_diagonal(est, source="weights")
    with pytest.raises(NFMInputError, match="4 columns"):
        rfm_agop_diagonal(est, np.ones((3, 5)))
    with pytest.raises(NFMInputError, match="NaN"):
        rfm_agop_diagonal(est, np.full((3, 4), np.nan))
