"""Kernel grokking through nfm.rfm at small p: the behaviour, the controls, the records."""

from __future__ import annotations

import numpy as np
import pytest

from nfm.exceptions import NFMInputError
from nfm.grokking import (
    PUBLISHED_RFM_PARAMS,
    feature_block,
    fixed_metric_scores,
    grokking_rfm,
    modular_arithmetic_dataset,
    random_circulant_metric,
    run_kernel_grokking,
    structure_deviation,
)

P, FRACTION = 17, 0.7


@pytest.fixture(scope="module")
def add_data():
    return modular_arithmetic_dataset("add", P, FRACTION, seed=0)


@pytest.fixture(scope="module")
def add_run(add_data):
    return run_kernel_grokking(add_data, n_iter=13)


def test_published_settings_reach_the_estimator():
    est = grokking_rfm(n_iter=7)
    params = est.get_params()
    for key, value in PUBLISHED_RFM_PARAMS.items():
        assert params[key] == value
    assert params["n_iter"] == 7


def test_rfm_groks_addition(add_run):
    test_acc = add_run.column("test_accuracy")
    train_acc = add_run.column("train_accuracy")
    assert len(add_run.history) == 14  # iterations 0..13
    assert np.all(train_acc == 1.0)  # interpolation from the start
    assert test_acc[0] < 0.1  # the plain kernel memorises
    assert test_acc[-1] >= 0.95  # ... and the learned metric generalises
    first = add_run.first_iteration_above(0.5)
    assert first is not None and first >= 3  # a delay, not an immediate jump
    assert np.all(test_acc[:3] < 0.1)


def test_metric_becomes_circulant_and_aligned(add_run):
    rows = add_run.history
    assert np.isnan(rows[0]["circulant_deviation"])  # M_0 = I has a zero off-diagonal block
    first, last = rows[1], rows[-1]
    assert last["structure"] == "circulant"
    assert last["circulant_deviation"] < 0.2 < first["circulant_deviation"]
    assert last["hankel_deviation"] > 0.9
    assert last["alignment"] == pytest.approx(1.0)
    alignment = add_run.column("alignment")
    assert alignment[1] < alignment[-2] < 1.0
    # the records agree with the metrics kept
    block = feature_block(add_run.metrics[-1], P, op="add")
    assert structure_deviation(block).circulant == pytest.approx(last["circulant_deviation"])
    np.testing.assert_allclose(add_run.metrics[-1], add_run.estimator.M_)
    assert add_run.estimator.callback is None


def test_records_match_the_estimator_history(add_run, add_data):
    est = add_run.estimator
    assert [h["iteration"] for h in est.history_] == add_run.column("iteration").tolist()
    prediction = est.predict(add_data.X_test)
    assert np.mean(prediction.argmax(1) == add_data.y_test) == add_run.final_test_accuracy
    assert add_run.seconds > 0 and add_run.seconds_to(0.5) <= add_run.seconds


def test_subtraction_gives_a_hankel_block():
    data = modular_arithmetic_dataset("sub", P, FRACTION, seed=0)
    result = run_kernel_grokking(data, n_iter=10, keep_metrics=False)
    last = result.history[-1]
    assert last["structure"] == "hankel"
    assert last["hankel_deviation"] < 0.25
    assert result.metrics == []


def test_stop_at_test_accuracy(add_data):
    result = run_kernel_grokking(add_data, n_iter=30, stop_at_test_accuracy=0.5)
    assert result.final_test_accuracy >= 0.5
    assert result.column("test_accuracy")[-2] < 0.5
    assert len(result.history) < 31


def test_controls_plain_kernel_and_random_circulant(add_data):
    plain = fixed_metric_scores(add_data)
    assert plain["train_accuracy"] == 1.0
    assert plain["test_accuracy"] < 0.1
    random_scores = [
        fixed_metric_scores(add_data, random_circulant_metric("add", P, seed=s))["test_accuracy"]
        for s in range(3)
    ]
    assert min(random_scores) > 0.5
    assert max(random_scores) >= 0.95


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_random_circulant_metric_structure(op):
    p = 13
    M = random_circulant_metric(op, p, seed=1)
    assert M.shape == (2 * p, 2 * p)
    np.testing.assert_allclose(M, M.T)
    assert np.linalg.eigvalsh(M).min() > -1e-10
    block = structure_deviation(feature_block(M, p, op=op))
    expected = "hankel" if op in ("sub", "div") else "circulant"
    assert block.kind == expected and block.value < 1e-12
    assert structure_deviation(feature_block(M, p, op=op, block="aa")).circulant < 1e-12
    assert not np.allclose(M, random_circulant_metric(op, p, seed=2))


def test_bad_input(add_data):
    with pytest.raises(NFMInputError, match="ModularArithmeticDataset"):
        run_kernel_grokking((add_data.X_train, add_data.y_train))
    with pytest.raises(NFMInputError, match="callback"):
        run_kernel_grokking(add_data, callback=print)
    with pytest.raises(NFMInputError, match="structure"):
        random_circulant_metric("add", 7, structure="toeplitz")
    with pytest.raises(NFMInputError, match="scale"):
        random_circulant_metric("add", 7, scale=0.0)
    with pytest.raises(NFMInputError, match="prime"):
        random_circulant_metric("mul", 9)
