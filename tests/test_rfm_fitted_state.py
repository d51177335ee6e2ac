"""The fitted state of the RFM estimators: atomic fit, CPU storage, pickling."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import nfm.rfm.fit as fit_module
from nfm.exceptions import NFMError, NFMInputError
from nfm.kernels import Kernel
from nfm.rfm import RFMClassifier, RFMRegressor


def _data(n=80, d=4, seed=0, k=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    score = X[:, 0] + 0.5 * X[:, 1]
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, k + 1)[1:-1]))
    return X, y


def _same(a, b) -> bool:
    """Deep equality of fitted attributes (arrays and tensors bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            type(a) is type(b) and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return type(a) is type(b) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def _state(model) -> dict:
    return copy.deepcopy(vars(model))


def _assert_unchanged(model, before: dict, X, outputs: dict) -> None:
    after = vars(model)
    assert after.keys() == before.keys(), set(after) ^ set(before)
    for key in before:
        assert _same(after[key], before[key]), key
    for method, expected in outputs.items():
        np.testing.assert_array_equal(getattr(model, method)(X), expected)


class _FailingSolver:
    """Wraps the Cholesky solver; raises on call number ``fail_at`` (1-based)."""

    def __init__(self, solver, fail_at: int):
        self.solver, self.fail_at, self.calls = solver, fail_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise NFMError("injected solver failure")
        return self.solver(*args, **kwargs)


@pytest.mark.parametrize("fail_at", [1, 4])
def test_refit_failing_in_the_solver_leaves_the_classifier_as_fitted(monkeypatch, fail_at):
    X_a, y_a = _data()
    names = np.array(["ant", "bee", "cat"])[y_a]
    model = RFMClassifier(n_iter=2, reg=[1e-3, 1e-1], random_state=0).fit(X_a, names)
    before = _state(model)
    outputs = {m: getattr(model, m)(X_a) for m in ("predict", "predict_proba", "transform")}
    # B: other features, other classes; the solver fails after validation (call 4: iteration 1)
    X_b, y_b = _data(n=60, d=6, seed=1, k=2)
    failing = _FailingSolver(fit_module.cholesky_solve, fail_at)
    monkeypatch.setattr(fit_module, "cholesky_solve", failing)
    with pytest.raises(NFMError, match="injected"):
        model.fit(X_b, y_b)
    assert failing.calls == fail_at
    _assert_unchanged(model, before, X_a, outputs)
    assert model.n_features_in_ == 4 and list(model.classes_) == ["ant", "bee", "cat"]


def test_refit_failing_in_the_agop_leaves_the_regressor_as_fitted(monkeypatch):
    X_a, _ = _data()
    y_a = np.sin(X_a[:, 0])
    model = RFMRegressor(n_iter=2, random_state=0).fit(X_a, y_a)
    before = _state(model)
    outputs = {"predict": model.predict(X_a)}

    def broken_agop(*args, **kwargs):
        raise RuntimeError("injected AGOP failure")

    monkeypatch.setattr(Kernel, "agop", broken_agop)
    monkeypatch.setattr(type(model.kernel_), "agop", broken_agop)
    X_b = np.random.default_rng(2).standard_normal((50, 7))
    with pytest.raises(RuntimeError, match="injected"):
        model.fit(X_b, X_b[:, :2])  # two outputs, seven features
    _assert_unchanged(model, before, X_a, outputs)
    assert model.n_features_in_ == 4 and model.n_outputs_ == 1


@pytest.mark.parametrize(
    ("estimator", "bad"),
    [
        (RFMClassifier, lambda X: np.zeros(len(X))),  # one class
        (RFMClassifier, lambda X: np.arange(len(X)) / 7.0),  # continuous labels
        (RFMRegressor, lambda X: np.where(np.arange(len(X)) == 3, np.nan, 1.0)),
    ],
)
def test_refit_with_bad_targets_leaves_the_estimator_as_fitted(estimator, bad):
    X_a, y_a = _data()
    model = estimator(n_iter=1, random_state=0).fit(X_a, y_a)
    before = _state(model)
    outputs = {"predict": model.predict(X_a)}
    X_b = np.random.default_rng(3).standard_normal((30, 6))
    with pytest.raises(NFMInputError):
        model.fit(X_b, bad(X_b))
    _assert_unchanged(model, before, X_a, outputs)


def test_refit_on_a_dataframe_then_an_array_forgets_the_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X, columns=list("abcd"))
    model = RFMClassifier(n_iter=1).fit(frame, y)
    assert list(model.feature_names_in_) == list("abcd")
    model.fit(X, y)
    assert not hasattr(model, "feature_names_in_")


def test_a_raising_callback_leaves_the_estimator_as_fitted():
    X, y = _data()
    model = RFMClassifier(n_iter=2, random_state=0).fit(X, y)
    before = _state(model)
    outputs = {"predict_proba": model.predict_proba(X)}

    def callback(estimator, iteration):
        if iteration == 1:
            raise KeyError("stop")

    model.set_params(callback=callback)
    with pytest.raises(KeyError):
        model.fit(X[:50], y[:50])
    model.set_params(callback=None)
    before["callback"] = None
    _assert_unchanged(model, before, X, outputs)


def test_the_callback_gets_a_snapshot_and_the_estimator_changes_only_at_the_end():
    X, y = _data()
    seen = []

    def callback(snapshot, iteration):
        seen.append((snapshot is model, hasattr(model, "M_"), snapshot.predict(X)))

    model = RFMClassifier(n_iter=2, selection="last", reg=1e-2, callback=callback)
    model.fit(X, y)
    assert [s[:2] for s in seen] == [(False, False)] * 3
    np.testing.assert_array_equal(seen[-1][2], model.predict(X))


def _tensors_in(value, path="model"):
    """Every (path, tensor) reachable from a fitted attribute value."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors_in(v, f"{path}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors_in(v, f"{path}[{i}]")
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for k, v in vars(value).items():
            yield from _tensors_in(v, f"{path}.{k}")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_fitted_state_is_on_the_cpu_and_pickles(as_tensor):
    X, y = _data()
    X_in, y_in = (torch.from_numpy(X), torch.from_numpy(y)) if as_tensor else (X, y)
    model = RFMClassifier(n_iter=2, random_state=0).fit(X_in, y_in)
    on_device = [(p, t.device) for p, t in _tensors_in(model) if t.device.type != "cpu"]
    assert on_device == []
    assert isinstance(model.M_, torch.Tensor) == as_tensor
    restored = pickle.loads(pickle.dumps(model))
    for method in ("predict", "predict_proba", "decision_function", "transform"):
        got, expected = getattr(restored, method)(X_in), getattr(model, method)(X_in)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_fitted_arrays_do_not_alias_the_training_data():
    X, _ = _data()
    Xt = torch.from_numpy(X.astype(np.float32))
    model = RFMRegressor(n_iter=1).fit(Xt, torch.from_numpy(np.sin(X[:, 0])))
    query = Xt[:5].clone()
    expected = model.predict(query)
    Xt.mul_(100.0)  # the caller changes its own tensor afterwards
    np.testing.assert_array_equal(model.predict(query).numpy(), expected.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fitted_estimator_unpickles_and_predicts_in_a_cpu_only_process(tmp_path):
    X, y = _data(n=200)
    model = RFMClassifier(n_iter=2, device="cuda", random_state=0).fit(X, y)
    assert [p for p, t in _tensors_in(model) if t.device.type != "cpu"] == []
    assert torch.from_numpy(X).cuda().device.type == "cuda"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", model.predict_proba(X))
    script = textwrap.dedent(
        f"""
        import pickle, numpy as np, torch
        assert not torch.cuda.is_available()
        model = pickle.loads(open({str(path)!r}, "rb").read()).set_params(device="cpu")
        X = np.load({str(tmp_path / "X.npy")!r})
        np.testing.assert_allclose(
            model.predict_proba(X), np.load({str(tmp_path / "expected.npy")!r}), atol=1e-10
        )
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
