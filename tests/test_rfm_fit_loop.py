"""The pure RFM fit loop (nfm.rfm.fit), its selection rules and the metric update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reference_rfm import (
    brute_force_loo_predictions,
    reference_agop,
    reference_gradients,
    reference_kernel,
    reference_kernel_ridge,
)

from nfm.kernels import LaplaceKernel
from nfm.rfm import RFMRegressor
from nfm.rfm.fit import FitSettings, fit_path
from nfm.rfm.metric import MetricUpdate
from nfm.rfm.scoring import regression_scores
from nfm.rfm.selection import (
    Holdout,
    LastIteration,
    LeaveOneOut,
    holdout_split,
    stratified_sample,
)


def _problem(n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sin(2 * X[:, 0]) + 0.1 * X[:, 1]
    return torch.from_numpy(X), torch.from_numpy(y[:, None])


def _settings(rule, regs=(1e-2,), n_iter=2, **kw) -> FitSettings:
    return FitSettings(
        kernel=LaplaceKernel(2.0),
        regs=regs,
        n_iter=n_iter,
        metric_update=MetricUpdate(power=1.0, normalization="max"),
        selection=rule,
        scorer=regression_scores,
        solver="cholesky",
        **kw,
    )


def _reference_path(X, Y, regs, n_iter):
    """Every iteration by the slow references: LOO by refits, AGOP by autograd."""
    M = torch.eye(X.shape[1], dtype=torch.float64)
    out = []
    for _ in range(n_iter + 1):
        K = reference_kernel(X, X, M, "laplace", 2.0).numpy()
        mses = [
            np.mean((Y.numpy() - brute_force_loo_predictions(K, Y.numpy(), r)) ** 2) for r in regs
        ]
        reg = regs[int(np.argmin(mses))]
        coef = torch.from_numpy(reference_kernel_ridge(K, Y.numpy(), reg))
        out.append((M, reg, min(mses)))
        G = reference_agop(reference_gradients(X, X, M, coef, "laplace", 2.0))
        M = G / G.abs().max()
    return out


def test_fit_path_follows_the_reference_iterations():
    X, Y = _problem()
    regs = (1e-3, 1e-1)
    path = fit_path(
        X,
        Y,
        torch.eye(3, dtype=torch.float64),
        _settings(LeaveOneOut(), regs),
        agop_rows=np.arange(40),
        generator=torch.Generator().manual_seed(0),
    )
    expected = _reference_path(X, Y, regs, 2)
    assert [r.iteration for r in path.records] == [0, 1, 2] and path.n_updates == 2
    for record, (M, reg, loo_mse) in zip(path.records, expected, strict=True):
        torch.testing.assert_close(record.M, M, rtol=1e-7, atol=1e-10)
        assert record.reg == reg
        assert record.heldout.mse == pytest.approx(loo_mse, rel=1e-7)
        assert set(record.scores_by_reg) == set(regs)
    best = int(np.argmin([e[2] for e in expected]))
    assert path.best.iteration == best
    torch.testing.assert_close(path.best.M, expected[best][0], rtol=1e-7, atol=1e-10)


def test_the_estimator_records_what_the_loop_returns():
    X, Y = _problem(n=50, seed=1)
    model = RFMRegressor(
        bandwidth=2.0,
        reg=[1e-3, 1e-1],
        n_iter=2,
        metric_power=1.0,
        dtype="float64",
        agop_sample_size=None,
    ).fit(X.numpy(), Y.numpy()[:, 0])
    path = fit_path(
        X,
        Y,
        torch.eye(3, dtype=torch.float64),
        _settings(LeaveOneOut(), (1e-3, 1e-1)),
        agop_rows=np.arange(50),
        generator=torch.Generator().manual_seed(0),
    )
    assert model.best_iter_ == path.best.iteration and model.reg_ == path.best.reg
    np.testing.assert_array_equal(model.M_, path.best.M.numpy())
    np.testing.assert_array_equal(model.dual_coef_, path.best.coef.numpy())
    rows = [r.history_row("loo") for r in path.records]
    strip = ("seconds", "agop_seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in model.history_] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows
    ]


def test_last_iteration_rule_keeps_the_last_and_the_hook_can_stop():
    X, Y = _problem()
    seen = []

    def hook(record, coef):
        seen.append((record.iteration, coef.shape))
        return record.iteration == 1

    path = fit_path(
        X,
        Y,
        torch.eye(3, dtype=torch.float64),
        _settings(LastIteration(), n_iter=4),
        agop_rows=np.arange(40),
        generator=torch.Generator().manual_seed(0),
        on_iteration=hook,
    )
    assert seen == [(0, (40, 1)), (1, (40, 1))]
    assert path.stop_reason == "callback" and path.best.iteration == 1
    assert path.records[-1].heldout is None


def test_holdout_rule_scores_the_validation_rows():
    X, Y = _problem(n=60, seed=2)
    rule = Holdout(X[45:], Y[45:])
    path = fit_path(
        X[:45],
        Y[:45],
        torch.eye(3, dtype=torch.float64),
        _settings(rule, n_iter=0),
        agop_rows=np.arange(45),
        generator=torch.Generator().manual_seed(0),
    )
    K = reference_kernel(X[:45], X[:45], torch.eye(3, dtype=torch.float64), "laplace", 2.0)
    coef = reference_kernel_ridge(K.numpy(), Y[:45].numpy(), 1e-2)
    K_val = reference_kernel(X[45:], X[:45], torch.eye(3, dtype=torch.float64), "laplace", 2.0)
    mse = np.mean((Y[45:].numpy() - K_val.numpy() @ coef) ** 2)
    assert path.records[0].heldout.mse == pytest.approx(mse, rel=1e-8)


def test_a_zero_agop_stops_the_loop():
    X = torch.ones(10, 2, dtype=torch.float64)
    Y = torch.arange(10.0, dtype=torch.float64)[:, None]
    path = fit_path(
        X,
        Y,
        torch.eye(2, dtype=torch.float64),
        _settings(LastIteration(), n_iter=3),
        agop_rows=np.arange(10),
        generator=torch.Generator().manual_seed(0),
    )
    assert path.stop_reason == "zero_agop" and path.n_updates == 0 and len(path.records) == 1


def test_later_iterations_replace_the_best_only_when_strictly_better():
    from nfm.rfm.scoring import Scores

    rule = LeaveOneOut()
    assert rule.improves(Scores(0.5, 1.0), None)
    assert not rule.improves(Scores(0.5, 1.0), Scores(0.5, 1.0))
    assert rule.improves(Scores(0.5, 0.9), Scores(0.5, 1.0))  # tie on score: lower MSE wins
    assert rule.best_reg([Scores(0.2, 1.0), Scores(0.7, 3.0), Scores(0.7, 3.0)]) == 1
    assert LastIteration().improves(Scores(0.0, 9.0), Scores(1.0, 0.0))


@pytest.mark.parametrize("normalization", ["max", "trace", "none"])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_metric_update_against_an_eigendecomposition(normalization, power):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 8))
    G = A @ A.T  # positive definite: its square root is well conditioned
    values, vectors = np.linalg.eigh(G)
    expected = (vectors * np.clip(values, 0, None) ** power) @ vectors.T
    if normalization == "max":
        expected = expected / np.abs(expected).max()
    elif normalization == "trace":
        expected = expected * 5 / np.trace(expected)
    M = MetricUpdate(power=power, normalization=normalization)(torch.from_numpy(G))
    np.testing.assert_allclose(M.numpy(), expected, rtol=1e-9, atol=1e-12)
    diag = MetricUpdate(power=power, normalization="none", diag=True)(torch.from_numpy(G))
    np.testing.assert_allclose(diag.numpy(), np.diag(np.diag(G) ** power), rtol=1e-12)
    assert MetricUpdate(power=power, normalization=normalization)(torch.zeros(5, 5)) is None


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    size=st.integers(1, 120),
    seed=st.integers(0, 1000),
)
@example(counts=[1, 2, 2], size=4, seed=0)  # the remainder once went to a full class
def test_stratified_sample_is_distinct_sorted_and_proportional(counts, size, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    n = labels.size
    idx = stratified_sample(labels, n, size, np.random.default_rng(seed))
    assert np.array_equal(idx, np.unique(idx)) and idx.size == min(size, n)
    got = np.bincount(labels[idx], minlength=len(counts))
    assert (got <= counts).all()
    if len(counts) <= size < n:
        assert (got >= 1).all()
        # within one row of the proportional share, up to rows moved to the one-row guarantee
        share = np.asarray(counts) * size / n
        assert (np.abs(got - share) < 1 + (share < 1).sum()).all()


def test_stratified_sample_with_more_classes_than_rows_is_random():
    labels = np.arange(5)  # five classes of one row each, three rows wanted
    draws = {tuple(stratified_sample(labels, 5, 3, np.random.default_rng(s))) for s in range(20)}
    assert all(len(d) == 3 for d in draws) and len(draws) > 1


def test_holdout_split_sizes_and_errors():
    rng = np.random.default_rng(0)
    train, val = holdout_split(50, 0.2, None, rng, "RFM")
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)
    train, val = holdout_split(3, 0.9, None, rng, "RFM")
    assert len(val) == 1 and len(train) == 2
    with pytest.raises(ValueError, match="at least 3 samples"):
        holdout_split(2, 0.5, None, rng, "RFM")


def test_the_conjugate_gradient_grid_scores_every_ridge_like_the_reference():
    # the CG path solves the whole grid in one block run and scores it with one validation
    # kernel pass: every ridge's holdout R^2 must match a direct float64 reference solve
    X, Y = _problem(n=70, seed=3)
    regs = (1e-2, 1e-1, 1.0)
    rule = Holdout(X[55:], Y[55:])
    settings = FitSettings(
        kernel=LaplaceKernel(2.0),
        regs=regs,
        n_iter=0,
        metric_update=MetricUpdate(power=1.0, normalization="max"),
        selection=rule,
        scorer=regression_scores,
        solver="cg",
        cg_tol=1e-11,
    )
    eye = torch.eye(3, dtype=torch.float64)
    path = fit_path(
        X[:55], Y[:55], eye, settings, agop_rows=np.arange(55), generator=torch.Generator()
    )
    K = reference_kernel(X[:55], X[:55], eye, "laplace", 2.0).numpy()
    K_val = reference_kernel(X[55:], X[:55], eye, "laplace", 2.0).numpy()
    y_val = Y[55:].numpy()
    for reg in regs:
        pred = K_val @ reference_kernel_ridge(K, Y[:55].numpy(), reg)
        r2 = 1 - ((y_val - pred) ** 2).sum() / ((y_val - y_val.mean()) ** 2).sum()
        assert path.records[0].scores_by_reg[reg] == pytest.approx(r2, rel=1e-7, abs=1e-9)
    assert path.records[0].cg_passes is not None
