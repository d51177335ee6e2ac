"""Tests of the built-in tuned RFM mode (nfm.rfm.search)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("nfm.rfm")

from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from nfm.exceptions import NFMInputError
from nfm.rfm import RFMClassifier, RFMRegressor
from nfm.rfm.search import (
    RFMSearchClassifier,
    RFMSearchRegressor,
    default_search_space,
)

SPACE = [
    {"bandwidth": 10.0, "reg": 1e-3},
    {"bandwidth": 2.0, "reg": 1e-1, "diag": True},
]
COMMON = {"n_iter": 1}


def _classification(n: int = 90):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 5))
    y = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "yes", "no")
    return X, y


def _regression(n: int = 90):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 4))
    return X, np.sin(X[:, 0]) + 0.1 * rng.normal(size=n)


def test_default_search_space_is_fresh_and_valid():
    space = default_search_space("classification")
    assert len(space) >= 4 and space[0]["kernel"] == "laplace"
    space[0]["bandwidth"] = -1
    assert default_search_space("classification")[0]["bandwidth"] == 10.0
    with pytest.raises(NFMInputError, match="task"):
        default_search_space("ranking")


def test_classifier_picks_best_validation_candidate_by_hand():
    X, y = _classification()
    search = RFMSearchClassifier(SPACE, estimator_params=COMMON, random_state=0).fit(X, y)
    # the same split and candidates, by hand
    fit_rows, val_rows = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=0, stratify=y
    )
    fit_rows, val_rows = np.sort(fit_rows), np.sort(val_rows)
    scores = [
        RFMClassifier(**COMMON, **c, random_state=0)
        .fit(X[fit_rows], y[fit_rows])
        .score(X[val_rows], y[val_rows])
        for c in SPACE
    ]
    results = search.cv_results_
    np.testing.assert_allclose(results["split0_test_score"], scores)
    np.testing.assert_allclose(results["mean_test_score"], scores)
    np.testing.assert_array_equal(results["std_test_score"], 0.0)
    assert results["params"] == SPACE
    np.testing.assert_array_equal(results["rank_test_score"], rankdata(-np.asarray(scores), "min"))
    assert (results["mean_fit_time"] > 0).all()
    assert search.best_index_ == int(np.argmax(scores))
    assert search.best_params_ == SPACE[search.best_index_]
    assert search.best_score_ == pytest.approx(max(scores))
    # refit on all rows with the chosen parameters
    ref = RFMClassifier(**COMMON, **search.best_params_, random_state=0).fit(X, y)
    np.testing.assert_array_equal(search.predict(X), ref.predict(X))
    assert list(search.classes_) == ["no", "yes"]
    proba = search.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert search.n_features_in_ == 5


def test_regressor_search_and_no_refit():
    X, y = _regression()
    search = RFMSearchRegressor(SPACE, estimator_params=COMMON, refit=False, random_state=3).fit(
        X, y
    )
    assert isinstance(search.best_estimator_, RFMRegressor)
    # without refit the kept model was fitted on the internal training part only (72 rows)
    assert search.best_estimator_.X_fit_.shape[0] == 72
    assert search.predict(X).shape == (90,)
    assert search.score(X, y) > 0.5
    assert search.transform(X).shape == (90, 4)
    assert search.feature_importances_.shape == (4,)


def test_clone_pickle_and_determinism():
    X, y = _classification()
    search = RFMSearchClassifier(SPACE, estimator_params=COMMON, random_state=0)
    assert clone(search).get_params()["search_space"] == SPACE
    fitted = search.fit(X, y)
    again = clone(search).fit(X, y)
    np.testing.assert_array_equal(fitted.predict(X), again.predict(X))
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))


def test_bad_input():
    X, y = _classification()
    with pytest.raises(NFMInputError, match="search_space"):
        RFMSearchClassifier([]).fit(X, y)
    with pytest.raises(NFMInputError, match="validation_fraction"):
        RFMSearchClassifier(SPACE, validation_fraction=1.5).fit(X, y)
    with pytest.raises(Exception, match="not fitted"):
        RFMSearchRegressor().predict(X)


def test_a_failing_refit_leaves_the_fitted_search_as_it_was():
    X, y = _classification()
    search = RFMSearchClassifier(SPACE, estimator_params=COMMON, random_state=0).fit(X, y)
    before = search.predict_proba(X)
    results = {k: np.array(v, copy=True) for k, v in search.cv_results_.items()}
    search.set_params(search_space=[*SPACE, {"kernel": "rbf"}])
    with pytest.raises(NFMInputError, match="kernel must be one of"):
        search.fit(X[:, :3], y)
    assert search.n_features_in_ == 5 and search.best_params_ == SPACE[search.best_index_]
    np.testing.assert_array_equal(search.predict_proba(X), before)
    for key, value in results.items():
        np.testing.assert_array_equal(search.cv_results_[key], value)


def test_search_accepts_tensors():
    torch = pytest.importorskip("torch")
    X, y = _regression()
    search = RFMSearchRegressor(SPACE, estimator_params=COMMON, random_state=0)
    search.fit(torch.from_numpy(X), torch.from_numpy(y))
    assert isinstance(search.predict(torch.from_numpy(X)), torch.Tensor)
    assert search.cv_results_["split0_test_score"].shape == (2,)
