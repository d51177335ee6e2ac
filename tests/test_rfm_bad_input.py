"""Bad input to the RFM estimators: a clear NFMInputError naming the argument, nothing half-fitted.

Every case is checked on a fresh estimator (no fitted attribute appears) and on a previously
fitted one (its fitted state and predictions stay exactly as they were).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm.exceptions import NFMInputError
from nfm.rfm import RFMClassifier, RFMRegressor

pd = pytest.importorskip("pandas")

N, D = 40, 3


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y_class = (X[:, 0] > 0).astype(np.int64)
    y_reg = X[:, 0] - 0.5 * X[:, 1]
    return X, y_class, y_reg


def _fitted_names(est) -> list[str]:
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("__"))


def _make(kind: str):
    if kind == "classifier":
        return RFMClassifier(n_iter=1, random_state=0)
    return RFMRegressor(n_iter=1, random_state=0)


def _y(kind: str):
    _, y_class, y_reg = _data()
    return y_class if kind == "classifier" else y_reg


def _with(X: np.ndarray, row: int, col: int, value: float) -> np.ndarray:
    out = X.copy()
    out[row, col] = value
    return out


X0, _, _ = _data()

# (case id, X, y or None for the task's own y, the argument the message must name, a phrase)
FIT_CASES = [
    ("nan", _with(X0, 3, 1, np.nan), None, "X", "NaN"),
    ("inf", _with(X0, 5, 0, np.inf), None, "X", "infinity"),
    ("nan-tensor", torch.from_numpy(_with(X0, 2, 2, np.nan)), None, "X", "NaN"),
    ("inf-tensor", torch.from_numpy(_with(X0, 2, 2, -np.inf)), None, "X", "infinite"),
    ("no-rows", np.ones((0, D)), np.ones(0), "X", "0 sample"),
    ("no-rows-tensor", torch.ones((0, D)), np.ones(0), "X", "0 sample"),
    ("no-features", np.ones((N, 0)), None, "X", "0 feature"),
    ("one-row", X0[:1], np.ones(1), "X", "at least 2 samples"),
    ("strings", np.array([["a", "b", "c"]] * N), None, "X", "strings"),
    ("numeric-strings", X0.astype(str), None, "X", "strings"),
    ("scipy-sparse", sp.csr_matrix(X0), None, "X", "sparse"),
    ("torch-sparse", torch.from_numpy(X0).to_sparse(), None, "X", "sparse"),
    ("complex", X0.astype(np.complex128), None, "X", "omplex"),
    ("complex-tensor", torch.from_numpy(X0).to(torch.complex64), None, "X", "complex"),
    ("one-dimensional", X0[:, 0], None, "X", "2D array"),
    ("lengths", X0, np.ones(N - 1), "X", "inconsistent numbers of samples"),
    ("y-none", X0, "none", "y", "y to be passed"),
]


def _frame_with_strings() -> pd.DataFrame:
    return pd.DataFrame({"a": ["u", "v"] * (N // 2), "b": X0[:, 0], "c": X0[:, 1]})


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize(
    ("case", "X", "y", "argument", "phrase"), FIT_CASES, ids=[c[0] for c in FIT_CASES]
)
def test_bad_fit_input_raises_a_clear_error_and_fits_nothing(kind, case, X, y, argument, phrase):
    y = _y(kind) if y is None else (None if isinstance(y, str) else y)
    fresh = _make(kind)
    with pytest.raises(NFMInputError, match=phrase) as info:
        fresh.fit(X, y)
    assert isinstance(info.value, ValueError)
    assert argument in str(info.value)
    assert _fitted_names(fresh) == []

    X_ok, _, _ = _data()
    fitted = _make(kind).fit(X_ok, _y(kind))
    before = pickle.dumps(fitted)
    predictions = np.asarray(fitted.predict(X_ok))
    with pytest.raises(NFMInputError, match=phrase):
        fitted.fit(X, y)
    assert pickle.dumps(fitted) == before
    np.testing.assert_array_equal(np.asarray(fitted.predict(X_ok)), predictions)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_a_data_frame_with_a_string_column_is_refused_naming_x(kind):
    est = _make(kind)
    with pytest.raises(NFMInputError, match=r"X.* strings") as info:
        est.fit(_frame_with_strings(), _y(kind))
    assert "OneHotEncoder" in str(info.value)
    assert _fitted_names(est) == []


def test_one_class_is_refused_and_fits_nothing():
    X, _, _ = _data()
    est = RFMClassifier(n_iter=0)
    with pytest.raises(NFMInputError, match="at least 2 classes"):
        est.fit(X, np.zeros(N))
    assert _fitted_names(est) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_regression_targets_with_nan_or_inf_are_refused(bad):
    X, _, y = _data()
    y = y.copy()
    y[7] = bad
    est = RFMRegressor(n_iter=0)
    with pytest.raises(NFMInputError, match=r"y"):
        est.fit(X, y)
    assert _fitted_names(est) == []


def test_string_regression_targets_are_refused_naming_y():
    X, _, _ = _data()
    with pytest.raises(NFMInputError, match=r"RFMRegressor\.fit: y holds strings"):
        RFMRegressor(n_iter=0).fit(X, np.array(["a", "b"] * (N // 2)))


PREDICT_CASES = [
    ("too-many-features", np.ones((4, D + 1)), "X has 4 features, but .* is expecting 3"),
    ("too-few-features-tensor", torch.ones((4, D - 1)), "X has 2 features, but .* is expecting 3"),
    ("nan", _with(X0, 0, 0, np.nan)[:5], "NaN"),
    ("inf-tensor", torch.from_numpy(_with(X0, 1, 0, np.inf)[:5]), "infinite"),
    ("no-rows", np.ones((0, D)), "0 sample"),
    ("strings", X0.astype(str), "strings"),
    ("scipy-sparse", sp.csr_matrix(X0), "sparse"),
    ("torch-sparse", torch.from_numpy(X0).to_sparse(), "sparse"),
    ("complex-tensor", torch.from_numpy(X0).to(torch.complex128), "complex"),
]


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize(("case", "X", "phrase"), PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_bad_predict_input_raises_a_clear_error_naming_x(kind, case, X, phrase):
    X_ok, _, _ = _data()
    fitted = _make(kind).fit(X_ok, _y(kind))
    before = pickle.dumps(fitted)
    methods = ["predict", "transform"] + (
        ["predict_proba", "decision_function"] if kind == "classifier" else []
    )
    for method in methods:
        with pytest.raises(NFMInputError, match=phrase) as info:
            getattr(fitted, method)(X)
        assert "X" in str(info.value)
    assert pickle.dumps(fitted) == before


def test_predict_with_other_feature_names_is_refused():
    frame = pd.DataFrame(X0, columns=["a", "b", "c"])
    fitted = RFMRegressor(n_iter=0).fit(frame, _y("regressor"))
    with pytest.raises(NFMInputError, match="feature names"):
        fitted.predict(frame.rename(columns={"a": "z"}))


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=12),
    d=st.integers(min_value=1, max_value=4),
    data=st.data(),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    as_tensor=st.booleans(),
)
def test_a_non_finite_entry_anywhere_is_refused_before_any_fit(n, d, data, value, as_tensor):
    row = data.draw(st.integers(min_value=0, max_value=n - 1))
    col = data.draw(st.integers(min_value=0, max_value=d - 1))
    X = np.random.default_rng(n * 10 + d).standard_normal((n, d))
    X[row, col] = value
    y = np.arange(n, dtype=np.float64)
    est = RFMRegressor(n_iter=0)
    with pytest.raises(NFMInputError, match="X"):
        est.fit(torch.from_numpy(X) if as_tensor else X, y)
    assert _fitted_names(est) == []


@settings(max_examples=10, deadline=None)
@given(extra=st.integers(min_value=-2, max_value=3).filter(lambda k: k != 0))
def test_any_wrong_feature_count_at_predict_is_refused(extra):
    X, _, y = _data()
    fitted = RFMRegressor(n_iter=0).fit(X, y)
    width = D + extra
    with pytest.raises(NFMInputError, match=f"X has {width} features"):
        fitted.predict(np.ones((3, width)))
