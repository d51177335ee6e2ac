"""The benchmark's methods, their tuning grids, and one fit/predict interface for all of them.

Every method is a :class:`Method`: a name, the package it needs, an ordered list of
configurations per task (the first is the method's usual default; the runner takes the first
``budget`` of them, the same number for every method), and a ``build`` function returning an
object with ``fit(X, y, X_val, y_val)`` and ``predict(X)``. ``X`` is the preprocessed float64
matrix; ``y`` holds class indices 0..k-1 (classification) or the standardised target
(regression); ``predict`` returns the same kind. Only xrfm uses ``X_val, y_val`` inside ``fit``
(its API requires a validation set; it gets the same validation part used for tuning).

Thread counts: each fit runs with ``threads`` threads for BLAS (threadpoolctl), torch and the
library's own ``n_jobs``-style option, the same number for every method.

Methods whose package is not installed are skipped by :func:`available_methods` with a logged
warning.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nfm.exceptions import NFMInputError
from nfm.tabular.datasets import Task

logger = logging.getLogger(__name__)

Config = dict[str, Any]


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Limit BLAS/OpenMP (threadpoolctl) and torch intra-op threads to ``threads`` in the block."""
    from threadpoolctl import threadpool_limits

    torch_threads = None
    try:
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        torch = None
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        if torch is not None and torch_threads is not None:
            torch.set_num_threads(torch_threads)


class _Adapter:
    """Wraps an estimator with ``fit(X, y)``/``predict(X)`` into the benchmark interface."""

    def __init__(self, estimator: Any, uses_validation: bool = False) -> None:
        self.estimator = estimator
        self.uses_validation = uses_validation

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> _Adapter:
        if self.uses_validation:
            self.estimator.fit(X, y, X_val, y_val)
        else:
            self.estimator.fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.estimator.predict(X)).reshape(len(X), -1)[:, 0]


class LaplaceKernelRidge:
    """Kernel ridge regression with the Euclidean Laplace kernel (the RFM kernel at M = I).

    k(x, z) = exp(-||x - z||_2 / L); coefficients alpha = (K + reg I)^{-1} Y with Y the
    one-hot labels (classification, prediction = argmax) or the target. Scikit-learn's
    ``KernelRidge(kernel="laplacian")`` uses the L1 distance instead, so this small class
    computes the Euclidean kernel itself and solves with ``scipy.linalg.solve``.
    """

    def __init__(self, bandwidth: float = 10.0, reg: float = 1e-3, classify: bool = False) -> None:
        self.bandwidth = bandwidth
        self.reg = reg
        self.classify = classify

    def _kernel(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        sq = (A**2).sum(1)[:, None] + (B**2).sum(1)[None, :] - 2.0 * A @ B.T
        return np.exp(-np.sqrt(np.maximum(sq, 0.0)) / self.bandwidth)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LaplaceKernelRidge:
        import scipy.linalg

        self.X_fit_ = np.asarray(X, dtype=float)
        if self.classify:
            self.n_classes_ = int(np.max(y)) + 1
            targets = np.eye(self.n_classes_)[np.asarray(y, dtype=int)]
        else:
            targets = np.asarray(y, dtype=float).reshape(len(y), -1)
        gram = self._kernel(self.X_fit_, self.X_fit_)
        gram[np.diag_indices_from(gram)] += self.reg
        self.dual_coef_ = scipy.linalg.solve(gram, targets, assume_a="pos")
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self._kernel(np.asarray(X, dtype=float), self.X_fit_) @ self.dual_coef_
        return scores.argmax(1) if self.classify else scores[:, 0]


class _XRFMAdapter:
    """xrfm 0.4.5 behind the benchmark interface (class indices in, class indices out)."""

    def __init__(self, params: Config, task: Task, seed: int, threads: int) -> None:
        self.params = params
        self.task = task
        self.seed = seed
        self.threads = threads

    def fit(self, X, y, X_val, y_val) -> _XRFMAdapter:
        import torch
        from xrfm import xRFM

        p = self.params
        rfm_params = {
            "model": {
                "kernel": p.get("kernel", "l2"),
                "bandwidth": p.get("bandwidth", 10.0),
                "exponent": p.get("exponent", 1.0),
                "diag": p.get("diag", False),
                "bandwidth_mode": "constant",
            },
            "fit": {
                "reg": p.get("reg", 1e-3),
                "iters": p.get("iters", 5),
                "return_best_params": True,
                "get_agop_best_model": True,
                "early_stop_rfm": False,
            },
        }
        classify = self.task == "classification"
        self.model_ = xRFM(
            rfm_params=rfm_params,
            device="cpu",
            tuning_metric="accuracy" if classify else "mse",
            n_threads=self.threads,
            random_state=self.seed,
        )
        if classify:
            y_t = torch.as_tensor(y, dtype=torch.long)
            y_val_t = torch.as_tensor(y_val, dtype=torch.long)
        else:
            y_t = torch.as_tensor(y, dtype=torch.float32)
            y_val_t = torch.as_tensor(y_val, dtype=torch.float32)
        self.model_.fit(
            np.asarray(X, dtype=np.float32), y_t, np.asarray(X_val, dtype=np.float32), y_val_t
        )
        return self

    def predict(self, X) -> np.ndarray:
        out = self.model_.predict(np.asarray(X, dtype=np.float32))
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        out = np.asarray(out).reshape(len(X), -1)
        return out[:, 0].astype(int) if self.task == "classification" else out[:, 0].astype(float)


@dataclass(frozen=True)
class Method:
    """A benchmark method.

    Attributes
    ----------
    name : str
        Column value in the results CSV.
    package : str
        Import name that must be installed.
    configs : callable
        ``configs(task) -> list[dict]``, ordered; the first is the default configuration.
    build : callable
        ``build(task, config, seed, threads) -> object`` with ``fit(X, y, X_val, y_val)`` and
        ``predict(X)``.
    tuned : bool
        False for a fixed configuration (only the first config is used whatever the budget).
    description : str
    """

    name: str
    package: str
    configs: Callable[[Task], list[Config]]
    build: Callable[[Task, Config, int, int], Any]
    tuned: bool = True
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- nfm's RFM


def _rfm_configs(task: Task) -> list[Config]:
    from nfm.rfm.search import default_search_space

    return default_search_space(task)


def _rfm_default_configs(task: Task) -> list[Config]:
    return [{}]


def _build_rfm(task: Task, config: Config, seed: int, threads: int) -> Any:
    from nfm.rfm import RFMClassifier, RFMRegressor

    cls = RFMClassifier if task == "classification" else RFMRegressor
    return _Adapter(cls(**config, random_state=seed))


# The estimator's defaults when the study ran (the Science-code settings). Every candidate is
# stated against them explicitly, so the study means the same whatever the defaults are now.
STUDY_BASE: Config = {"reg": 1e-3, "metric_power": 1.0, "dtype": "float64"}

# Candidate defaults, compared on the validation parts only (``rfm-defaults-study``; run with
# a budget covering all of them). Each entry changes one thing against STUDY_BASE (the last
# ones combine changes that are cheap to combine).
_CANDIDATE_CHANGES: tuple[Config, ...] = (
    {},
    {"dtype": "float32"},
    {"reg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    {"bandwidth": "median"},
    {"kernel": "gaussian", "bandwidth": "median"},
    {"kernel": "product_laplace", "exponent": 1.0},
    {"diag": True},
    {"metric_power": 0.5},
    {"bandwidth": 5.0},
    {"bandwidth": 20.0},
    {"centered": True},
    {"reg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "dtype": "float32"},
    # added after the first study run (validation scores only): combinations of the above
    {"reg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "dtype": "float32", "metric_power": 0.5},
    {"reg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "dtype": "float32", "diag": True},
)
DEFAULT_CANDIDATES: tuple[Config, ...] = tuple(
    {**STUDY_BASE, **change} for change in _CANDIDATE_CHANGES
)

# The recommended defaults: the study candidate with the best mean validation rank on both
# tasks (candidate 12; benchmarks/results/tabular/defaults/study_summary.csv), run as a fixed
# configuration. Everything not listed keeps the estimator's default.
RECOMMENDED_DEFAULTS: Config = {
    "reg": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
    "metric_power": 0.5,
    "dtype": "float32",
}


def _rfm_recommended_configs(task: Task) -> list[Config]:
    return [dict(RECOMMENDED_DEFAULTS)]


def _rfm_study_configs(task: Task) -> list[Config]:
    return [dict(c) for c in DEFAULT_CANDIDATES]


# ---------------------------------------------------------------------- peers


def _xrfm_configs(task: Task) -> list[Config]:
    # xrfm's own defaults first (Laplace "l2" kernel, bandwidth 10, reg 1e-3, full metric),
    # then the diagonal metric, a larger reg and a larger bandwidth
    base = {
        "kernel": "l2",
        "bandwidth": 10.0,
        "exponent": 1.0,
        "diag": False,
        "reg": 1e-3,
        "iters": 5,
    }
    return [
        base,
        {**base, "diag": True},
        {**base, "reg": 1e-1},
        {**base, "bandwidth": 20.0},
    ]


def _build_xrfm(task: Task, config: Config, seed: int, threads: int) -> Any:
    return _XRFMAdapter(config, task, seed, threads)


def _xgb_configs(task: Task) -> list[Config]:
    return [
        {"max_depth": 6, "learning_rate": 0.1},
        {"max_depth": 3, "learning_rate": 0.1},
        {"max_depth": 6, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
        {"max_depth": 10, "learning_rate": 0.1, "min_child_weight": 3},
    ]


def _build_xgb(task: Task, config: Config, seed: int, threads: int) -> Any:
    import xgboost

    cls = xgboost.XGBClassifier if task == "classification" else xgboost.XGBRegressor
    return _Adapter(
        cls(n_estimators=300, tree_method="hist", n_jobs=threads, random_state=seed, **config)
    )


def _lgbm_configs(task: Task) -> list[Config]:
    return [
        {"num_leaves": 31, "learning_rate": 0.05},
        {"num_leaves": 15, "learning_rate": 0.1},
        {"num_leaves": 63, "learning_rate": 0.05, "subsample": 0.8, "subsample_freq": 1},
        {"num_leaves": 7, "learning_rate": 0.1, "min_child_samples": 5},
    ]


def _build_lgbm(task: Task, config: Config, seed: int, threads: int) -> Any:
    import lightgbm

    cls = lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
    return _Adapter(cls(n_estimators=300, n_jobs=threads, random_state=seed, verbose=-1, **config))


def _catboost_configs(task: Task) -> list[Config]:
    return [
        {"depth": 6},
        {"depth": 4},
        {"depth": 8},
        {"depth": 6, "l2_leaf_reg": 10.0},
    ]


def _build_catboost(task: Task, config: Config, seed: int, threads: int) -> Any:
    import catboost

    cls = catboost.CatBoostClassifier if task == "classification" else catboost.CatBoostRegressor
    return _Adapter(
        cls(
            iterations=300,
            thread_count=threads,
            random_seed=seed,
            verbose=False,
            allow_writing_files=False,
            **config,
        )
    )


def _rf_configs(task: Task) -> list[Config]:
    first = "sqrt" if task == "classification" else 1.0
    second = 1.0 if task == "classification" else "sqrt"
    return [
        {"max_features": first},
        {"max_features": 0.5},
        {"max_features": second},
        {"max_features": first, "min_samples_leaf": 3},
    ]


def _build_rf(task: Task, config: Config, seed: int, threads: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
    return _Adapter(cls(n_estimators=300, n_jobs=threads, random_state=seed, **config))


def _hgb_configs(task: Task) -> list[Config]:
    return [
        {"learning_rate": 0.1, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_leaf_nodes": 15},
        {"learning_rate": 0.1, "max_leaf_nodes": 63, "l2_regularization": 1.0},
        {"learning_rate": 0.2, "max_leaf_nodes": 7},
    ]


def _build_hgb(task: Task, config: Config, seed: int, threads: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = (
        HistGradientBoostingClassifier
        if task == "classification"
        else HistGradientBoostingRegressor
    )
    return _Adapter(cls(max_iter=300, early_stopping=False, random_state=seed, **config))


def _svm_configs(task: Task) -> list[Config]:
    return [{"C": 1.0}, {"C": 10.0}, {"C": 0.3}, {"C": 100.0}]


def _build_svm(task: Task, config: Config, seed: int, threads: int) -> Any:
    from sklearn.svm import SVC, SVR

    if task == "classification":
        return _Adapter(SVC(kernel="rbf", gamma="scale", random_state=seed, **config))
    return _Adapter(SVR(kernel="rbf", gamma="scale", **config))


def _krr_configs(task: Task) -> list[Config]:
    return [
        {"bandwidth": 10.0, "reg": 1e-3},
        {"bandwidth": 10.0, "reg": 1e-1},
        {"bandwidth": 10.0, "reg": 1.0},
        {"bandwidth": 5.0, "reg": 1e-2},
    ]


def _build_krr(task: Task, config: Config, seed: int, threads: int) -> Any:
    return _Adapter(LaplaceKernelRidge(classify=task == "classification", **config))


def _mlp_configs(task: Task) -> list[Config]:
    return [
        {"hidden_layer_sizes": (256, 256), "alpha": 1e-4},
        {"hidden_layer_sizes": (128,), "alpha": 1e-3},
        {"hidden_layer_sizes": (256, 256), "alpha": 1e-2},
        {"hidden_layer_sizes": (512, 256, 128), "alpha": 1e-4},
    ]


def _build_mlp(task: Task, config: Config, seed: int, threads: int) -> Any:
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    cls = MLPClassifier if task == "classification" else MLPRegressor
    return _Adapter(
        cls(max_iter=300, early_stopping=True, n_iter_no_change=10, random_state=seed, **config)
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("rfm", "nfm", _rfm_configs, _build_rfm, True, "nfm RFM, built-in search space"),
        Method(
            "rfm-default",
            "nfm",
            _rfm_default_configs,
            _build_rfm,
            False,
            "nfm RFM, the estimator's defaults",
        ),
        Method(
            "rfm-recommended",
            "nfm",
            _rfm_recommended_configs,
            _build_rfm,
            False,
            "nfm RFM, recommended defaults (chosen on validation parts)",
        ),
        Method(
            "rfm-defaults-study",
            "nfm",
            _rfm_study_configs,
            _build_rfm,
            True,
            "nfm RFM, candidate defaults (validation scores in tuning.csv)",
        ),
        Method("xrfm", "xrfm", _xrfm_configs, _build_xrfm, True, "xrfm 0.4.5, iters=5"),
        Method("xgboost", "xgboost", _xgb_configs, _build_xgb, True, "XGBoost, 300 trees"),
        Method("lightgbm", "lightgbm", _lgbm_configs, _build_lgbm, True, "LightGBM, 300 trees"),
        Method("catboost", "catboost", _catboost_configs, _build_catboost, True, "CatBoost, 300"),
        Method("random-forest", "sklearn", _rf_configs, _build_rf, True, "sklearn RF, 300 trees"),
        Method("hist-gb", "sklearn", _hgb_configs, _build_hgb, True, "sklearn HistGB, 300 iters"),
        Method("svm-rbf", "sklearn", _svm_configs, _build_svm, True, "sklearn SVC/SVR, RBF"),
        Method("laplace-krr", "scipy", _krr_configs, _build_krr, True, "Laplace kernel ridge"),
        Method("mlp", "sklearn", _mlp_configs, _build_mlp, True, "sklearn MLP, early stopping"),
    ]
}

QUICK_METHODS: tuple[str, ...] = ("rfm", "rfm-default", "svm-rbf", "random-forest")
# what runs when no method is named: everything except the defaults study
DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m != "rfm-defaults-study")


def _installed(package: str) -> bool:
    if package == "nfm":
        return importlib.util.find_spec("nfm.rfm") is not None
    return importlib.util.find_spec(package) is not None


def available_methods(names: Sequence[str] | None = None) -> list[Method]:
    """The requested methods (all by default) whose packages are installed.

    Unknown names raise :class:`~nfm.exceptions.NFMInputError`; known methods whose package is
    missing are skipped with a logged warning.
    """
    names = list(DEFAULT_METHODS) if not names else list(names)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise NFMInputError(f"methods: unknown {unknown}; available: {', '.join(METHODS)}")
    chosen = []
    for name in names:
        method = METHODS[name]
        if _installed(method.package):
            chosen.append(method)
        else:
            logger.warning("method %s skipped: package %r is not installed", name, method.package)
    return chosen


def method_configs(method: Method, task: Task, budget: int) -> list[Config]:
    """The configurations the runner tries: the first ``budget`` (1 for an untuned method)."""
    configs = method.configs(task)
    return configs[:1] if not method.tuned else configs[: max(1, budget)]
