"""The large-n path: the AGOP-split tree (nfm.rfm.partition) and the exact fit's memory check.

References are written independently of the engine: the Laplace kernel from explicit
differences in float64, the tree walked one row at a time.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import nfm.rfm.large_n as large_n
import nfm.rfm.partition as partition
from nfm.exceptions import NFMInputError
from nfm.rfm import RFMClassifier, RFMRegressor
from nfm.rfm.memory import (
    MEMORY_FRACTION,
    ExactFitMemoryError,
    available_memory,
    exact_fit_bytes,
    largest_exact_fit,
    resolve_memory_limit,
    tree_fit_bytes,
)


def _laplace(A: np.ndarray, B: np.ndarray, M: np.ndarray, bandwidth: float) -> np.ndarray:
    diff = A[:, None, :] - B[None, :, :]
    sq = np.einsum("ijk,kl,ijl->ij", diff, M, diff)
    return np.exp(-np.sqrt(np.maximum(sq, 0.0)) / bandwidth)


def _walk(tree, x: np.ndarray) -> int:
    node = 0
    while tree.children[node, 0] >= 0:
        go_left = float(x @ tree.directions[node]) <= tree.thresholds[node]
        node = int(tree.children[node, 0 if go_left else 1])
    return int(tree.leaf_of_node[node])


def _regression(n: int, d: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, np.sin(2.0 * X[:, 0]) + 0.05 * rng.standard_normal(n)


def _tree_regressor(**params) -> RFMRegressor:
    base = {"leaf_size": 60, "n_iter": 1, "dtype": "float64", "random_state": 0}
    return RFMRegressor(**{**base, **params})


# ----------------------------------------------------------------- the tree against references
@pytest.fixture(scope="module")
def fitted_tree():
    X, y = _regression(480)
    return _tree_regressor().fit(X, y), X, y


def test_leaves_hold_the_rows_routed_to_them_in_balanced_halves(fitted_tree):
    model, X, _ = fitted_tree
    tree = model.partition_
    assert tree.n_leaves == 8
    np.testing.assert_array_equal(tree.leaf_sizes, np.full(8, 60))
    routed = tree.apply(X)
    np.testing.assert_array_equal(routed, [_walk(tree, x) for x in X])
    for index, leaf in enumerate(tree.leaves):
        mine = np.sort(X[routed == index], axis=0)
        np.testing.assert_array_equal(np.sort(np.asarray(leaf.estimator.X_fit_), axis=0), mine)


def test_predictions_are_each_rows_leaf_kernel_machine(fitted_tree):
    model, _, _ = fitted_tree
    X_test, _ = _regression(50, seed=5)
    tree = model.partition_
    expected = np.empty(len(X_test))
    for i, x in enumerate(X_test):
        leaf = tree.leaves[_walk(tree, x)].estimator
        K = _laplace(x[None], np.asarray(leaf.X_fit_), np.asarray(leaf.M_), leaf.bandwidth_)
        expected[i] = (K @ np.asarray(leaf.dual_coef_))[0, 0]
    np.testing.assert_allclose(model.predict(X_test), expected, rtol=1e-9, atol=1e-12)


def test_each_leaf_is_kernel_ridge_in_the_root_metric_with_the_root_ridge(fitted_tree):
    model, X, y = fitted_tree
    routed = model.partition_.apply(X)
    for index, leaf in enumerate(model.partition_.leaves):
        est = leaf.estimator
        np.testing.assert_allclose(np.asarray(est.M_), np.asarray(model.M_), rtol=1e-12)
        assert est.reg_ == model.reg_
        Xl = np.asarray(est.X_fit_)
        np.testing.assert_array_equal(Xl, X[routed == index])  # rows in their original order
        K = _laplace(Xl, Xl, np.asarray(est.M_), est.bandwidth_)
        A = np.asarray(est.dual_coef_)[:, 0]
        np.testing.assert_allclose(
            (K + est.reg_ * np.eye(len(Xl))) @ A, y[routed == index], atol=1e-7
        )


def test_splits_follow_the_coordinate_the_target_depends_on(fitted_tree):
    model, _, _ = fitted_tree
    tree = model.partition_
    internal = tree.children[:, 0] >= 0
    # y = sin(2 x0): the local AGOP's top eigenvector is close to e0 at every split
    assert np.all(np.abs(tree.directions[internal][:, 0]) > 0.9)


def test_partitioned_estimator_pickles_and_takes_tensors(fitted_tree):
    model, X, _ = fitted_tree
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X[:20]), model.predict(X[:20]))
    out = model.predict(torch.from_numpy(X[:20]))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), model.predict(X[:20]), rtol=1e-12)
    assert model.transform(X[:3]).shape == (3, X.shape[1])


def test_classifier_leaves_with_one_class_or_missing_classes():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 3))
    y = np.digitize(X[:, 0], [-0.6, 0.6])  # three classes in slabs of x0
    model = RFMClassifier(leaf_size=50, n_iter=1, random_state=0).fit(X, y)
    tree = model.partition_
    constant = [i for i, leaf in enumerate(tree.leaves) if leaf.constant is not None]
    assert constant, "slabs of x0 should give single-class leaves"
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert (proba >= 0).all()
    routed = tree.apply(X)
    for index, leaf in enumerate(tree.leaves):
        rows = routed == index
        seen = np.unique(y[rows]) if leaf.constant is None else [leaf.constant]
        unseen = np.setdiff1d(np.arange(3), seen)
        assert np.all(proba[np.ix_(rows, unseen)] == 0.0)
    assert np.all(model.predict(X) == model.classes_[proba.argmax(axis=1)])
    assert np.mean(model.predict(X) == y) > 0.95
    assert model.decision_function(X).shape == (400, 3)


def test_a_failed_partitioned_fit_leaves_the_estimator_as_fitted(monkeypatch):
    X, y = _regression(240)
    model = _tree_regressor().fit(X, y)
    before = pickle.dumps(model)
    calls = {"n": 0}
    original = partition._leaf_params

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("leaf failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(partition, "_leaf_params", failing)
    with pytest.raises(RuntimeError, match="leaf failed"):
        model.fit(X[::-1], y[::-1])
    assert pickle.dumps(model) == before
    fresh = _tree_regressor()
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="leaf failed"):
        fresh.fit(X, y)
    assert not [k for k in vars(fresh) if k.endswith("_")]


def test_a_callback_is_refused_on_the_partitioned_path():
    X, y = _regression(200)
    with pytest.raises(NFMInputError, match="callback"):
        _tree_regressor(callback=lambda est, it: None).fit(X, y)


def test_leaves_above_1000_rows_solve_by_conjugate_gradients_in_the_root_metric():
    X, y = _regression(2200, d=3, seed=2)
    model = RFMRegressor(leaf_size=1100, n_iter=1, dtype="float64", random_state=0).fit(X, y)
    tree = model.partition_
    assert tree.n_leaves == 2
    routed = tree.apply(X)
    for index, leaf in enumerate(tree.leaves):
        est = leaf.estimator
        assert est.solver_ == "cg" and est.reg_ == model.reg_
        assert est.bandwidth_ == model.bandwidth_
        Xl = np.asarray(est.X_fit_)
        K = _laplace(Xl, Xl, np.asarray(model.M_), est.bandwidth_)
        A = np.asarray(est.dual_coef_)[:, 0]
        target = y[routed == index]
        residual = (K + est.reg_ * np.eye(len(Xl))) @ A - target
        assert np.linalg.norm(residual) <= 1e-3 * np.linalg.norm(target)


class _Params:
    def __init__(self, leaf_size, memory_limit):
        self.leaf_size, self.memory_limit = leaf_size, memory_limit


def _bytes(n: int, d: int = 20, c: int = 2) -> int:
    return sum(exact_fit_bytes(n, d, c, torch.float32))


def test_the_root_is_the_20k_subsample_fit_memory_permitting():
    cpu, f32 = torch.device("cpu"), torch.float32
    unlimited = _Params("auto", None)
    assert large_n.root_size(unlimited, 10**6, 20, 2, 16000, dtype=f32, device=cpu) == 20000
    assert large_n.root_size(unlimited, 18000, 20, 2, 16000, dtype=f32, device=cpu) == 18000
    assert large_n.root_size(unlimited, 10**6, 20, 2, 30000, dtype=f32, device=cpu) == 30000
    tight = _Params("auto", _bytes(17000))
    assert large_n.root_size(tight, 10**6, 20, 2, 16000, dtype=f32, device=cpu) == 17000
    tighter = _Params("auto", _bytes(12000))
    assert large_n.root_size(tighter, 10**6, 20, 2, 16000, dtype=f32, device=cpu) == 16000


def test_auto_leaves_shrink_to_the_largest_that_fits_the_memory_limit():
    cpu, f32 = torch.device("cpu"), torch.float32
    big = large_n.choose_leaf_size(_Params("auto", None), 10**6, 20, 2, dtype=f32, device=cpu)
    assert big == large_n.AUTO_LEAF_SIZE == 16000
    limit = _bytes(5000) + 10
    small = large_n.choose_leaf_size(_Params("auto", limit), 10**6, 20, 2, dtype=f32, device=cpu)
    assert small == 5000
    with pytest.raises(ExactFitMemoryError, match=r"leaf of 16,000 rows .*at most 5,000 rows fit"):
        large_n.choose_leaf_size(_Params(16000, limit), 10**6, 20, 2, dtype=f32, device=cpu)


@settings(max_examples=40, deadline=None)
@given(limit=st.integers(1, 2**36), d=st.integers(1, 50), c=st.integers(1, 5))
def test_largest_exact_fit_is_the_last_size_under_the_limit(limit, d, c):
    n = largest_exact_fit(d, c, torch.float32, limit)
    assert n == 0 or sum(exact_fit_bytes(n, d, c, torch.float32)) <= limit
    assert sum(exact_fit_bytes(n + 1, d, c, torch.float32)) > limit


def test_tree_fit_bytes_are_the_data_twice_plus_the_larger_exact_fit():
    n, d, c = 1_000_000, 20, 2
    got = tree_fit_bytes(n, d, c, 16000, 20000, torch.float32)
    assert got == 2 * n * (d + c) * 4 + sum(exact_fit_bytes(20000, d, c, torch.float32))
    assert got == tree_fit_bytes(n, d, c, 20000, 16000, torch.float32)
    assert 2 * n * (d + c) * 4 + 20000**2 * 4 < got < 4 * 2**30


# ----------------------------------------------------------------- choosing the path
def test_auto_fits_exactly_up_to_the_limit_and_partitions_above(monkeypatch):
    monkeypatch.setattr(large_n, "AUTO_EXACT_MAX_N", 100)
    monkeypatch.setattr(large_n, "AUTO_LEAF_SIZE", 50)
    X, y = _regression(200)
    exact = RFMRegressor(n_iter=0).fit(X[:100], y[:100])
    assert not hasattr(exact, "partition_") and exact.X_fit_.shape == (100, 4)
    tree = RFMRegressor(n_iter=0).fit(X, y)
    assert tree.partition_.n_leaves == 4 and not hasattr(tree, "X_fit_")


def test_an_integer_leaf_size_partitions_only_above_it():
    X, y = _regression(120)
    assert not hasattr(RFMRegressor(n_iter=0, leaf_size=120).fit(X, y), "partition_")
    assert RFMRegressor(n_iter=0, leaf_size=119).fit(X, y).partition_.n_leaves == 2


def test_80000_rows_on_the_exact_path_name_the_memory_and_the_parameter():
    X = np.zeros((80_000, 20), dtype=np.float32)
    X[:, 0] = np.arange(80_000)
    y = np.arange(80_000, dtype=np.float64)
    model = RFMRegressor(leaf_size=None, memory_limit=8 * 2**30)
    with pytest.raises(ExactFitMemoryError) as info:
        model.fit(X, y)
    message = str(info.value)
    assert "80,000 x 80,000 Gram matrix" in message and "4 bytes = 23.8 GiB" in message
    assert "leaf_size" in message and "memory_limit" in message
    assert isinstance(info.value, NFMInputError) and isinstance(info.value, MemoryError)
    assert info.value.required_bytes > 80_000**2 * 4
    assert not [k for k in vars(model) if k.endswith("_")]


def test_a_leaf_that_does_not_fit_names_the_leaf_size():
    X, y = _regression(200)
    with pytest.raises(ExactFitMemoryError, match="leaf of 100 rows"):
        RFMRegressor(leaf_size=100, memory_limit=1000).fit(X, y)


@pytest.mark.parametrize(
    "params",
    [
        {"leaf_size": 5},
        {"leaf_size": 1.5},
        {"leaf_size": "big"},
        {"leaf_size": True},
        {"memory_limit": -1},
        {"memory_limit": "lots"},
        {"memory_limit": float("nan")},
    ],
)
def test_bad_leaf_size_and_memory_limit_are_refused_at_fit(params):
    X, y = _regression(30)
    model = RFMRegressor(n_iter=0, **params)
    with pytest.raises(NFMInputError, match=next(iter(params))):
        model.fit(X, y)


def test_exact_fit_bytes_are_the_gram_matrix_plus_workspace():
    gram32, work32 = exact_fit_bytes(1000, 20, 2, torch.float32)
    gram64, work64 = exact_fit_bytes(1000, 20, 2, torch.float64)
    assert (gram32, gram64) == (4_000_000, 8_000_000)
    assert work64 > 1000 * (20 + 2) * 8
    # float32 adds conjugate gradients' float64 copy of the Gram matrix, capped at 2^24 entries
    assert work32 == work64 + 1000 * 1000 * 8
    big32, big64 = (
        exact_fit_bytes(8000, 20, 2, torch.float32)[1],
        exact_fit_bytes(8000, 20, 2, torch.float64)[1],
    )
    assert big32 == big64 + 2**24 * 8


def test_auto_memory_limit_is_a_share_of_what_the_machine_has():
    available = available_memory(torch.device("cpu"))
    limit = resolve_memory_limit("auto", torch.device("cpu"), "X")
    if available is None:
        assert limit == float("inf")
    else:
        assert available > 0 and limit == pytest.approx(MEMORY_FRACTION * available, rel=0.2)
    assert resolve_memory_limit(None, torch.device("cpu"), "X") == float("inf")


# ----------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.integers(2, 40), elements=st.floats(-1e6, 1e6)))
def test_median_split_puts_the_smaller_half_left_and_never_empties_a_side(values):
    threshold, left = partition._median_split(values)
    assert 1 <= left.sum() <= len(values) - 1
    distinct = np.unique(values)
    if len(distinct) == 1:
        assert left.sum() == len(values) // 2
        return
    assert values[left].max() <= threshold < values[~left].min()
    achievable = [np.sum(values <= v) for v in distinct[:-1]]
    best = min(abs(a - len(values) / 2) for a in achievable)
    assert abs(left.sum() - len(values) / 2) == best


@settings(max_examples=30, deadline=None)
@given(
    depth=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    n=st.integers(1, 60),
)
def test_apply_agrees_with_walking_the_tree_row_by_row(depth, seed, n):
    rng = np.random.default_rng(seed)
    d = 3
    n_internal = 2**depth - 1
    n_nodes = 2 ** (depth + 1) - 1
    children = np.full((n_nodes, 2), -1)
    children[:n_internal, 0] = 2 * np.arange(n_internal) + 1
    children[:n_internal, 1] = 2 * np.arange(n_internal) + 2
    leaf_of_node = np.full(n_nodes, -1)
    leaf_of_node[n_internal:] = np.arange(n_nodes - n_internal)
    tree = partition.PartitionedPredictor(
        directions=rng.standard_normal((n_nodes, d)),
        thresholds=rng.standard_normal(n_nodes),
        children=children,
        leaf_of_node=leaf_of_node,
    )
    X = rng.standard_normal((n, d))
    np.testing.assert_array_equal(tree.apply(X), [_walk(tree, x) for x in X])
