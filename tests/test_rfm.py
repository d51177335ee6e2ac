"""RFMRegressor / RFMClassifier: math against references, sklearn compatibility, edge cases."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from reference_rfm import (
    brute_force_loo_predictions,
    reference_agop,
    reference_gradients,
    reference_kernel,
    reference_kernel_ridge,
)
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from nfm import rfm as rfm_module
from nfm.exceptions import NFMInputError, NumericalWarning
from nfm.kernels import GaussianKernel
from nfm.linalg import symmetric_matrix_power
from nfm.rfm.params import DEFAULT_REG_GRID
from nfm.rfm.selection import stratified_sample

# The math tests below pin one reg, metric power 1 and float64, so that they check formulas to
# tight tolerances whatever the library's defaults are (those were chosen on the tabular
# benchmark and are tested separately, in test_defaults_*).
MATH_SETTINGS = {"reg": 1e-3, "metric_power": 1.0, "dtype": "float64"}


def RFMRegressor(**params):
    return rfm_module.RFMRegressor(**{**MATH_SETTINGS, **params})


def RFMClassifier(**params):
    return rfm_module.RFMClassifier(**{**MATH_SETTINGS, **params})


def _regression(n=80, d=4, seed=0, outputs=None):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    if outputs:
        y = np.stack([y * (k + 1) + k for k in range(outputs)], axis=1)
    return X, y


def _classification(n=90, d=4, seed=0, k=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.digitize(X[:, 0] + 0.5 * X[:, 1], np.quantile(X[:, 0] + 0.5 * X[:, 1], [1 / 3, 2 / 3]))
    return X, y % k


# ----------------------------------------------------------------- scikit-learn's own checks
# The defaults (float32, reg grid, leave-one-out) with no expected failure; two more instances
# take the other selection rules, solvers and kernels through the same checks.
@parametrize_with_checks(
    [
        rfm_module.RFMRegressor(),
        rfm_module.RFMClassifier(),
        rfm_module.RFMRegressor(
            n_iter=1, selection="last", reg=1e-2, solver="cg", kernel="gaussian", random_state=0
        ),
        rfm_module.RFMClassifier(
            n_iter=1, selection="holdout", kernel="product_laplace", dtype="float64", random_state=0
        ),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)  # duplicate rows in some checks
        check(estimator)


# ----------------------------------------------------------------- math against references
@pytest.mark.parametrize("kernel", ["laplace", "gaussian"])
def test_zero_iterations_is_kernel_ridge_regression(kernel):
    X, y = _regression()
    X_test, _ = _regression(n=20, seed=1)
    model = RFMRegressor(kernel=kernel, bandwidth=2.0, reg=0.05, n_iter=0).fit(X, y)
    eye = torch.eye(4, dtype=torch.float64)
    K = reference_kernel(torch.from_numpy(X), torch.from_numpy(X), eye, kernel, 2.0).numpy()
    coef = reference_kernel_ridge(K, y, 0.05)
    K_test = reference_kernel(torch.from_numpy(X_test), torch.from_numpy(X), eye, kernel, 2.0)
    np.testing.assert_allclose(model.dual_coef_[:, 0], coef, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(model.predict(X_test), K_test.numpy() @ coef, rtol=1e-7, atol=1e-9)
    assert model.best_iter_ == 0 and model.n_iter_ == 0
    np.testing.assert_array_equal(model.M_, np.eye(4))


def test_classifier_decision_values_are_kernel_ridge_on_one_hot_targets():
    X, y = _classification()
    model = RFMClassifier(bandwidth=3.0, reg=0.1, n_iter=0).fit(X, y)
    t = torch.from_numpy(X)
    K = reference_kernel(t, t, torch.eye(4, dtype=torch.float64), "laplace", 3.0).numpy()
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(
        model.decision_function(X),
        K @ reference_kernel_ridge(K, onehot, 0.1),
        rtol=1e-6,
        atol=1e-8,
    )


@pytest.mark.parametrize("reg", [1e-3, 0.3])
def test_leave_one_out_scores_match_brute_force(reg):
    X, y = _regression(n=40)
    model = RFMRegressor(bandwidth=2.0, reg=reg, n_iter=0, selection="loo").fit(X, y)
    t = torch.from_numpy(X)
    K = reference_kernel(t, t, torch.eye(4, dtype=torch.float64), "laplace", 2.0).numpy()
    loo = brute_force_loo_predictions(K, y, reg)
    np.testing.assert_allclose(model.history_[0]["loo_mse"], np.mean((y - loo) ** 2), rtol=1e-8)


def test_reg_grid_selects_the_best_leave_one_out_reg():
    X, y = _regression(n=50)
    grid = [1e-4, 1e-2, 1.0, 10.0]
    model = RFMRegressor(bandwidth=2.0, reg=grid, n_iter=0).fit(X, y)
    t = torch.from_numpy(X)
    K = reference_kernel(t, t, torch.eye(4, dtype=torch.float64), "laplace", 2.0).numpy()
    mses = [np.mean((y - brute_force_loo_predictions(K, y, r)) ** 2) for r in grid]
    assert model.reg_ == grid[int(np.argmin(mses))]
    assert set(model.history_[0]["scores_by_reg"]) == set(grid)


def test_grokking_convention_metric_is_the_square_root_of_the_centered_agop():
    X, y = _classification(n=60)
    model = RFMClassifier(
        kernel="gaussian",
        bandwidth=2.5,
        reg=0.0,
        n_iter=1,
        metric_power=0.5,
        metric_normalization="none",
        centered=True,
        agop_sample_size=None,
        selection="last",
    ).fit(X, y)
    t = torch.from_numpy(X)
    eye = torch.eye(4, dtype=torch.float64)
    K = reference_kernel(t, t, eye, "gaussian", 2.5).numpy()
    coef = torch.from_numpy(reference_kernel_ridge(K, np.eye(3)[y], 0.0))
    G = GaussianKernel(2.5).agop(t, t, eye, coef, centered=True)
    np.testing.assert_allclose(
        model.M_, symmetric_matrix_power(G, 0.5).numpy(), rtol=1e-6, atol=1e-10
    )


def test_science_convention_metric_is_the_agop_over_its_largest_entry():
    X, y = _regression(n=50)
    model = RFMRegressor(n_iter=1, selection="last", agop_sample_size=None).fit(X, y)
    t = torch.from_numpy(X)
    eye = torch.eye(4, dtype=torch.float64)
    K = reference_kernel(t, t, eye, "laplace", 10.0).numpy()
    coef = torch.from_numpy(reference_kernel_ridge(K, y, 1e-3))[:, None]
    G = reference_agop(reference_gradients(t, t, eye, coef, "laplace", 10.0)).numpy()
    np.testing.assert_allclose(model.M_, G / np.abs(G).max(), rtol=1e-6, atol=1e-10)
    diag_model = RFMRegressor(n_iter=1, selection="last", diag=True).fit(X, y)
    np.testing.assert_allclose(diag_model.M_, np.diag(np.diag(model.M_)), rtol=1e-8, atol=1e-12)


def test_low_rank_target_concentrates_the_metric_and_beats_the_plain_kernel():
    rng = np.random.default_rng(0)
    n, d = 800, 50
    X = rng.standard_normal((n + 500, d))
    y = X[:, 0] * X[:, 1] + np.sin(2 * X[:, 0])
    model = RFMRegressor(n_iter=5, random_state=0).fit(X[:n], y[:n])
    plain = RFMRegressor(n_iter=0).fit(X[:n], y[:n])
    diag = np.diag(model.M_)
    assert diag[:2].sum() / diag.sum() >= 0.9
    assert model.feature_importances_[:2].sum() >= 0.9
    rfm_r2, plain_r2 = model.score(X[n:], y[n:]), plain.score(X[n:], y[n:])
    assert rfm_r2 > 0.8 and plain_r2 < 0.4, (rfm_r2, plain_r2)
    assert model.best_iter_ > 0


# ----------------------------------------------------------------- behaviour
def test_deterministic_under_random_state():
    X, y = _classification(n=120)
    kwargs = {"n_iter": 2, "agop_sample_size": 40, "selection": "holdout"}
    a = RFMClassifier(random_state=3, **kwargs).fit(X, y)
    b = RFMClassifier(random_state=3, **kwargs).fit(X, y)
    np.testing.assert_array_equal(a.M_, b.M_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = RFMClassifier(random_state=4, **kwargs).fit(X, y)
    assert not np.array_equal(a.M_, c.M_)


def test_float32_and_float64_agree():
    X, y = _regression(n=100)
    m64 = RFMRegressor(n_iter=2, reg=1e-2, dtype="float64", random_state=0).fit(X, y)
    m32 = RFMRegressor(n_iter=2, reg=1e-2, dtype="float32", random_state=0).fit(X, y)
    assert m32.dual_coef_.dtype == np.float32
    np.testing.assert_allclose(m32.M_, m64.M_, atol=2e-3)
    np.testing.assert_allclose(m32.predict(X[:20]), m64.predict(X[:20]), atol=5e-3)


def test_callback_sees_each_iteration_and_can_stop():
    X, y = _classification(n=80)
    seen = []

    def callback(estimator, iteration):
        assert estimator.history_[-1]["iteration"] == iteration
        seen.append((iteration, estimator.M_.copy(), (estimator.predict(X) == y).mean()))
        return iteration == 2

    model = RFMClassifier(n_iter=5, selection="last", callback=callback).fit(X, y)
    assert [s[0] for s in seen] == [0, 1, 2]
    assert model.n_iter_ == 2 and len(model.history_) == 3
    np.testing.assert_array_equal(seen[0][1], np.eye(4))
    np.testing.assert_array_equal(seen[2][1], model.M_)


def test_initial_metric_with_zero_iterations_is_a_fixed_metric_kernel_machine():
    X, y = _regression(n=60)
    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 4))
    metric = A @ A.T
    fixed = RFMRegressor(n_iter=0, initial_metric=metric, bandwidth=3.0).fit(X, y)
    root = symmetric_matrix_power(metric, 0.5)
    plain = RFMRegressor(n_iter=0, bandwidth=3.0).fit(X @ root, y)
    np.testing.assert_allclose(fixed.predict(X[:10]), plain.predict(X[:10] @ root), rtol=1e-6)
    np.testing.assert_allclose(fixed.transform(X[:3]), X[:3] @ root, rtol=1e-8)
    with pytest.raises(NFMInputError, match=r"initial_metric must be a \(4, 4\)"):
        RFMRegressor(initial_metric=np.eye(3)).fit(X, y)


def test_holdout_and_iterative_solver_paths():
    X, y = _regression(n=150)
    hold = RFMRegressor(n_iter=2, selection="holdout", random_state=0).fit(X, y)
    assert hold.selection_ == "holdout" and "val_mse" in hold.history_[0]
    assert hold.X_fit_.shape == X.shape  # refitted on all rows
    cg = RFMRegressor(n_iter=0, solver="cg", selection="last").fit(X, y)
    chol = RFMRegressor(n_iter=0, solver="cholesky", selection="last").fit(X, y)
    np.testing.assert_allclose(cg.predict(X[:10]), chol.predict(X[:10]), rtol=1e-4, atol=1e-5)
    fallback = RFMRegressor(n_iter=1, solver="cg", selection="loo").fit(X, y)
    assert fallback.selection_ == "holdout"


def test_classifier_labels_probabilities_and_decision_shapes():
    X, y = _classification(n=90)
    names = np.array(["ant", "bee", "cat"])[y]
    model = RFMClassifier(n_iter=1).fit(X, names)
    proba = model.predict_proba(X)
    assert proba.shape == (90, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(X)) <= set(names)
    np.testing.assert_array_equal(model.classes_[proba.argmax(1)], model.predict(X))
    binary = RFMClassifier(n_iter=1).fit(X, y == 1)
    assert binary.decision_function(X).shape == (90,)
    assert binary.predict_proba(X).shape == (90, 2)


def test_temperature_minimises_the_log_loss_of_brute_force_leave_one_out_values():
    X, y = _classification(n=60, seed=2)
    model = RFMClassifier(n_iter=1, reg=1e-2, random_state=0).fit(X, y)
    # leave-one-out decision values of the selected predictor, by explicit refits
    t = torch.from_numpy(X)
    K = reference_kernel(t, t, torch.from_numpy(model.M_), "laplace", 10.0).numpy()
    loo = brute_force_loo_predictions(K, np.eye(3)[y], model.reg_)

    def log_loss(T):
        z = loo / T
        z = z - z.max(axis=1, keepdims=True)
        return -np.mean(z[np.arange(60), y] - np.log(np.exp(z).sum(axis=1)))

    T = model.temperature_
    assert 1e-4 < T < 1e3  # an interior minimum of the bounded search, not a bound
    for factor in (0.9, 1.1):
        assert log_loss(T) <= log_loss(T * factor) + 1e-9


def test_probabilities_beat_the_uniform_guess_on_held_out_data():
    X, y = _classification(n=150, seed=2)
    model = RFMClassifier(n_iter=1, reg=1e-3, random_state=0).fit(X, y)
    X_test, y_test = _classification(n=300, seed=9)
    log_loss = -np.mean(np.log(model.predict_proba(X_test)[np.arange(300), y_test]))
    assert log_loss < 0.5 * np.log(3), log_loss  # uniform guess: log 3


def test_regressor_output_shapes_follow_y():
    X, y = _regression(n=60)
    assert RFMRegressor(n_iter=1).fit(X, y).predict(X).shape == (60,)
    assert RFMRegressor(n_iter=1).fit(X, y[:, None]).predict(X).shape == (60, 1)
    X2, Y2 = _regression(n=60, outputs=3)
    model = RFMRegressor(n_iter=1).fit(X2, Y2)
    assert model.predict(X2).shape == (60, 3) and model.dual_coef_.shape == (60, 3)


def test_torch_in_torch_out():
    X, y = _regression(n=60)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model = RFMRegressor(n_iter=1).fit(Xt, yt)
    assert isinstance(model.predict(Xt), torch.Tensor)
    assert isinstance(model.M_, torch.Tensor)
    np.testing.assert_allclose(model.predict(X), model.predict(Xt).numpy())
    Xc, yc = _classification(n=60)
    clf = RFMClassifier(n_iter=1).fit(torch.from_numpy(Xc), torch.from_numpy(yc))
    assert isinstance(clf.predict(torch.from_numpy(Xc)), torch.Tensor)
    with pytest.raises(NFMInputError, match="X has 3 features, but RFMRegressor is expecting 4"):
        model.predict(Xt[:, :3])


def test_pipeline_gridsearch_clone_and_pickle():
    X, y = _classification(n=90)
    X_test, y_test = _classification(n=200, seed=5)
    pipe = make_pipeline(StandardScaler(), RFMClassifier(n_iter=1))
    assert pipe.fit(X, y).score(X_test, y_test) > 0.8
    features = Pipeline([("rfm", RFMRegressor(n_iter=1)), ("ridge", Ridge())])
    Xr, yr = _regression(n=60)
    assert features.fit(Xr, yr).predict(Xr).shape == (60,)
    search = GridSearchCV(
        RFMClassifier(n_iter=1), {"reg": [1e-3, 1e-1], "bandwidth": [2.0, 10.0]}, cv=2
    ).fit(X, y)
    assert search.best_params_["reg"] in (1e-3, 1e-1)
    model = RFMClassifier(n_iter=1, reg=[1e-3, 1e-2], random_state=0).fit(X, y)
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "M_")
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))


def test_bandwidth_median_rule():
    X, y = _regression(n=70)
    model = RFMRegressor(bandwidth="median", n_iter=0).fit(X, y)
    t = torch.from_numpy(X)
    dist = torch.cdist(t, t)
    expected = float(dist[torch.triu(torch.ones(70, 70, dtype=torch.bool), 1)].median())
    assert model.bandwidth_ == pytest.approx(expected)


@pytest.mark.parametrize("kernel", ["generalized_laplace", "product_laplace"])
def test_generalized_kernels_fit_and_learn(kernel):
    # two relevant coordinates out of ten: learning the metric must beat the plain kernel
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 10))
    y = X[:, 0] * X[:, 1] + np.sin(2 * X[:, 0])
    train, test = slice(0, 300), slice(300, None)
    model = RFMRegressor(kernel=kernel, exponent=1.0, n_iter=3, bandwidth=5.0).fit(
        X[train], y[train]
    )
    plain = RFMRegressor(kernel=kernel, exponent=1.0, n_iter=0, bandwidth=5.0).fit(
        X[train], y[train]
    )
    rfm_r2, plain_r2 = model.score(X[test], y[test]), plain.score(X[test], y[test])
    assert rfm_r2 > 0.6 and rfm_r2 > plain_r2 + 0.2, (rfm_r2, plain_r2)


def test_stratified_agop_sample_is_random_and_proportional():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    idx = stratified_sample(labels, 1000, 100, rng)
    assert len(np.unique(idx)) == 100
    np.testing.assert_array_equal(np.bincount(labels[idx]), [50, 30, 20])
    assert not np.array_equal(idx, np.arange(100))
    assert len(stratified_sample(None, 50, 10, rng)) == 10
    np.testing.assert_array_equal(stratified_sample(None, 5, 10, rng), np.arange(5))


# ----------------------------------------------------------------- bad input and edge cases
def test_nan_inf_wrong_features_and_empty_data_raise_clear_errors():
    X, y = _regression(n=30)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(NFMInputError, match="NaN"):
        RFMRegressor().fit(bad, y)
    bad[3, 1] = np.inf
    with pytest.raises(NFMInputError, match="infinity"):
        RFMRegressor().fit(bad, y)
    with pytest.raises(NFMInputError, match="NaN"):
        RFMRegressor().fit(torch.from_numpy(np.where(np.isinf(bad), np.nan, bad)), y)
    model = RFMRegressor(n_iter=0).fit(X, y)
    with pytest.raises(NFMInputError, match="X has 5 features, but RFMRegressor is expecting 4"):
        model.predict(np.ones((2, 5)))
    with pytest.raises(NFMInputError, match="0 sample"):
        RFMRegressor().fit(np.ones((0, 4)), np.ones(0))
    with pytest.raises(NFMInputError, match="NaN"):
        RFMRegressor().fit(X, np.where(np.arange(30) == 2, np.nan, y))


def test_one_sample_and_one_class_raise():
    with pytest.raises(NFMInputError, match="at least 2 samples"):
        RFMRegressor().fit(np.ones((1, 3)), np.ones(1))
    with pytest.raises(NFMInputError, match="at least 2 classes"):
        RFMClassifier().fit(np.random.default_rng(0).standard_normal((10, 3)), np.zeros(10))


def test_bad_hyperparameters_are_reported_at_fit_not_init():
    X, y = _regression(n=20)
    bad = [
        {"n_iter": -1},
        {"reg": -1.0},
        {"reg": []},
        {"bandwidth": 0},
        {"bandwidth": "mean"},
        {"kernel": "rbf"},
        {"metric_normalization": "l2"},
        {"selection": "cv"},
        {"metric_power": 0},
        {"validation_fraction": 1.5},
        {"agop_sample_size": 0},
        {"solver": "lu"},
        {"dtype": "float16"},
        {"callback": 3},
        {"selection": "last", "reg": [0.1, 1.0]},
        {"device": "tpu"},
    ]
    for params in bad:
        model = RFMRegressor(**params)  # storing never fails
        with pytest.raises(NFMInputError):
            model.fit(X, y)


def test_constant_features_are_ignored_and_all_constant_data_stops_with_a_warning():
    X, y = _regression(n=60)
    X[:, 2] = 5.0
    model = RFMRegressor(n_iter=2, selection="last").fit(X, y)
    assert np.abs(model.M_[2]).max() <= 1e-12 * np.abs(model.M_).max()
    assert np.abs(model.M_[:, 2]).max() <= 1e-12 * np.abs(model.M_).max()
    with pytest.warns(NumericalWarning, match="AGOP is zero"):
        flat = RFMRegressor(n_iter=3).fit(np.ones((20, 3)), np.arange(20.0))
    assert flat.n_iter_ == 0
    np.testing.assert_allclose(flat.predict(np.ones((2, 3))), flat.predict(np.ones((2, 3)))[0])


def test_duplicate_rows_are_handled():
    X, y = _regression(n=150)
    X = np.vstack([X, X[:5]])
    y = np.concatenate([y, y[:5]])
    X_test, y_test = _regression(n=300, seed=3)
    model = RFMRegressor(n_iter=2, reg=1e-3).fit(X, y)
    assert np.isfinite(model.M_).all() and model.score(X_test, y_test) > 0.8
    assert [row["near_duplicate_pairs"] for row in model.history_] == [5, 5, 5]
    with pytest.warns(NumericalWarning, match="jitter"):
        RFMRegressor(n_iter=0, reg=0.0, kernel="gaussian", bandwidth=3.0).fit(X, y)


# ----------------------------------------------------------------- the library's defaults
def test_defaults_are_the_benchmark_choice():
    params = rfm_module.RFMClassifier().get_params()
    assert params["reg"] == DEFAULT_REG_GRID == (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert params["metric_power"] == 0.5 and params["dtype"] == "float32"
    assert params["kernel"] == "laplace" and params["bandwidth"] == 10.0
    assert params["n_iter"] == 5 and params["selection"] == "loo"


def test_defaults_pick_reg_from_the_grid_and_predict_in_the_input_dtype():
    X, y = _classification(n=120)
    X_test, y_test = _classification(n=300, seed=4)
    model = rfm_module.RFMClassifier(random_state=0).fit(X, y)
    assert model.reg_ in DEFAULT_REG_GRID
    assert model.predict_proba(X).dtype == np.float64
    assert model.predict_proba(X.astype(np.float32)).dtype == np.float32
    assert model.score(X_test, y_test) > 0.85
    Xr, yr = _regression(n=200)
    Xr_test, yr_test = _regression(n=300, seed=4)
    reg = rfm_module.RFMRegressor(random_state=0).fit(Xr, yr)
    assert reg.predict(Xr).dtype == np.float64
    assert reg.score(Xr_test, yr_test) > 0.8
