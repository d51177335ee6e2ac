"""The benchmark's methods, their tuning grids, and one fit/predict interface for all of them.

Every method is a :class:`Method`: a name, the package it needs, an ordered list of
configurations per task (the first is the method's usual default; the runner takes the first
``budget`` of them, the same number for every method), and a ``build`` function returning an
object with ``fit(X, y, X_val, y_val)`` and ``predict(X)``. ``X`` is the preprocessed float64
matrix; ``y`` holds class indices 0..k-1 (classification) or the standardised target
(regression); ``predict`` returns the same kind. xrfm (its API requires a validation set), the
early-stopped boosters (``*-es``) and pytabkit's networks use ``X_val, y_val`` inside ``fit``:
it is the same validation part the runner tunes on. ``fit(X, y, None, None)`` is a refit on all
training rows; ``refit_overrides()`` returns what a fit chose on the validation part that the
refit must reuse (boosting rounds, xrfm's iteration count).

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

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None
    ) -> _Adapter:
        if self.uses_validation:
            self.estimator.fit(X, y, X_val, y_val)
        else:
            self.estimator.fit(X, y)
        return self

    def refit_overrides(self) -> Config:
        """What the fit chose on the validation part that a refit must reuse (none here)."""
        return {}

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
        """Fit; with ``X_val=None`` (a refit), run exactly ``params["iters"]`` iterations.

        A refit has no validation part: the validation arguments xrfm's API requires are the
        training rows themselves, and ``return_best_params=False`` makes xrfm keep the model
        after the last of the ``iters`` iterations (no selection on them).
        """
        import torch
        from xrfm import xRFM

        p = self.params
        refit = X_val is None
        if refit:
            X_val, y_val = X, y
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
                "return_best_params": not refit,
                "get_agop_best_model": not refit,
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

    def refit_overrides(self) -> Config:
        """The iteration xrfm kept on the validation part: a refit runs that many iterations.

        xrfm's ``best_iter`` k is the model fitted after k metric updates (0 = the plain
        kernel), which ``iters=k`` without selection reproduces.
        """
        trees = getattr(self.model_, "trees", None) or []
        if len(trees) != 1 or trees[0].get("type") != "leaf":
            return {}
        best = getattr(trees[0]["model"], "best_iter", None)
        return {} if best is None else {"iters": int(best)}

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
    internal_selection : bool
        True for a method whose ``fit(X_fit, y_fit, X_val, y_val)`` makes its own choices on the
        validation part and refits itself where it can (pytabkit's RealMLP, TabM): under the
        ``refit`` protocol the runner does not refit it again.
    """

    name: str
    package: str
    configs: Callable[[Task], list[Config]]
    build: Callable[[Task, Config, int, int], Any]
    tuned: bool = True
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    internal_selection: bool = False


# ---------------------------------------------------------------------- nfm's RFM


def _rfm_configs(task: Task) -> list[Config]:
    # the pre-registered copy of the built-in space (nfm.tabular.registration), so a later
    # change of nfm.rfm.search.default_search_space() cannot change what a run means
    from nfm.tabular.registration import rfm_search_space

    return rfm_search_space()


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


# ------------------------------------------------ peers with early stopping / own selection

MAX_ROUNDS = 1000
"""Upper bound on boosting rounds for the early-stopped boosters."""
EARLY_STOPPING_ROUNDS = 50
"""Rounds without improvement of the validation loss after which boosting stops."""


class _EarlyStoppedBooster:
    """A gradient-boosting model stopped early on the validation part, refittable.

    ``fit(X, y, X_val, y_val)`` boosts up to :data:`MAX_ROUNDS` rounds and stops after
    :data:`EARLY_STOPPING_ROUNDS` rounds without improvement of the library's default
    validation loss (log-loss / squared error), keeping the best round; ``refit_overrides()``
    returns that number of rounds, and ``fit(X_all, y_all, None, None)`` boosts exactly
    ``rounds`` rounds without validation (the refit on all training rows).
    """

    def __init__(self, library: str, task: Task, config: Config, seed: int, threads: int) -> None:
        self.library = library
        self.task = task
        self.config = dict(config)
        self.seed = seed
        self.threads = threads

    def _estimator(self, rounds: int) -> Any:
        params = {k: v for k, v in self.config.items() if k != "rounds"}
        classify = self.task == "classification"
        if self.library == "xgboost":
            import xgboost

            cls = xgboost.XGBClassifier if classify else xgboost.XGBRegressor
            return cls(
                n_estimators=rounds,
                tree_method="hist",
                n_jobs=self.threads,
                random_state=self.seed,
                **params,
            )
        if self.library == "lightgbm":
            import lightgbm

            cls = lightgbm.LGBMClassifier if classify else lightgbm.LGBMRegressor
            return cls(
                n_estimators=rounds,
                n_jobs=self.threads,
                random_state=self.seed,
                verbose=-1,
                **params,
            )
        import catboost

        cls = catboost.CatBoostClassifier if classify else catboost.CatBoostRegressor
        return cls(
            iterations=rounds,
            thread_count=self.threads,
            random_seed=self.seed,
            verbose=False,
            allow_writing_files=False,
            **params,
        )

    def fit(self, X, y, X_val, y_val) -> _EarlyStoppedBooster:
        if X_val is None:  # refit: a fixed number of rounds, no validation
            self.model_ = self._estimator(int(self.config.get("rounds", MAX_ROUNDS)))
            self.model_.fit(X, y)
            self.rounds_ = int(self.config.get("rounds", MAX_ROUNDS))
            return self
        model = self._estimator(MAX_ROUNDS)
        if self.library == "xgboost":
            model.set_params(early_stopping_rounds=EARLY_STOPPING_ROUNDS)
            model.fit(X, y, eval_set=[(X_val, y_val)], verbose=False)
            self.rounds_ = int(model.best_iteration) + 1
        elif self.library == "lightgbm":
            import lightgbm

            stop = lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)
            model.fit(X, y, eval_set=[(X_val, y_val)], callbacks=[stop])
            self.rounds_ = max(int(model.best_iteration_ or MAX_ROUNDS), 1)
        else:
            model.fit(
                X,
                y,
                eval_set=(X_val, y_val),
                early_stopping_rounds=EARLY_STOPPING_ROUNDS,
                use_best_model=True,
            )
            self.rounds_ = int(model.get_best_iteration()) + 1
        self.model_ = model
        return self

    def refit_overrides(self) -> Config:
        return {"rounds": self.rounds_}

    def predict(self, X) -> np.ndarray:
        return np.asarray(self.model_.predict(X)).reshape(len(X), -1)[:, 0]


def _xgb_es_configs(task: Task) -> list[Config]:
    return [
        {"max_depth": 6, "learning_rate": 0.05},
        {"max_depth": 3, "learning_rate": 0.05},
        {"max_depth": 6, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
        {"max_depth": 10, "learning_rate": 0.05, "min_child_weight": 3},
    ]


def _lgbm_es_configs(task: Task) -> list[Config]:
    return [
        {"num_leaves": 31, "learning_rate": 0.05},
        {"num_leaves": 15, "learning_rate": 0.05},
        {"num_leaves": 63, "learning_rate": 0.05, "subsample": 0.8, "subsample_freq": 1},
        {"num_leaves": 7, "learning_rate": 0.05, "min_child_samples": 5},
    ]


def _catboost_es_configs(task: Task) -> list[Config]:
    return [
        {"depth": 6, "learning_rate": 0.08},
        {"depth": 4, "learning_rate": 0.08},
        {"depth": 8, "learning_rate": 0.08},
        {"depth": 6, "learning_rate": 0.08, "l2_leaf_reg": 10.0},
    ]


def _booster_builder(library: str) -> Callable[[Task, Config, int, int], Any]:
    def build(task: Task, config: Config, seed: int, threads: int) -> Any:
        return _EarlyStoppedBooster(library, task, config, seed, threads)

    return build


class _PytabkitAdapter:
    """pytabkit's RealMLP-TD / TabM-D (tuned defaults) given the benchmark's validation part.

    ``fit(X_fit, y_fit, X_val, y_val)`` passes the validation part as pytabkit's own validation
    set (``X_val, y_val``): the network's best epoch is chosen on it. RealMLP is then refitted on
    fit + validation rows for that many epochs (``n_refit=1``, pytabkit's refit); pytabkit has
    no refit for TabM, whose model stays the one trained on the fit part. Inputs are the
    benchmark's preprocessed float matrix (all columns numeric; pytabkit adds its own
    transforms on top), on the CPU, training from scratch (no download).
    """

    def __init__(self, name: str, task: Task, config: Config, seed: int, threads: int) -> None:
        self.name = name
        self.task = task
        self.config = dict(config)
        self.seed = seed
        self.threads = threads

    def fit(self, X, y, X_val, y_val) -> _PytabkitAdapter:
        import pytabkit

        classify = self.task == "classification"
        if self.name == "realmlp":
            cls = pytabkit.RealMLP_TD_Classifier if classify else pytabkit.RealMLP_TD_Regressor
            extra = {"n_refit": 1 if X_val is not None else 0}
        else:
            cls = pytabkit.TabM_D_Classifier if classify else pytabkit.TabM_D_Regressor
            extra = {}
        self.model_ = cls(
            device="cpu",
            random_state=self.seed,
            n_threads=self.threads,
            verbosity=0,
            **extra,
            **self.config,
        )
        X = np.asarray(X, dtype=np.float32)
        if X_val is None:
            self.model_.fit(X, y)
        else:
            self.model_.fit(X, y, np.asarray(X_val, dtype=np.float32), y_val)
        return self

    def refit_overrides(self) -> Config:
        return {}

    def predict(self, X) -> np.ndarray:
        out = np.asarray(self.model_.predict(np.asarray(X, dtype=np.float32)))
        return out.reshape(len(X), -1)[:, 0]


def _pytabkit_configs(task: Task) -> list[Config]:
    return [{}]


def _pytabkit_builder(name: str) -> Callable[[Task, Config, int, int], Any]:
    def build(task: Task, config: Config, seed: int, threads: int) -> Any:
        return _PytabkitAdapter(name, task, config, seed, threads)

    return build


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
        Method(
            "xgboost-es",
            "xgboost",
            _xgb_es_configs,
            _booster_builder("xgboost"),
            True,
            "XGBoost, early stopping on the validation part",
        ),
        Method(
            "lightgbm-es",
            "lightgbm",
            _lgbm_es_configs,
            _booster_builder("lightgbm"),
            True,
            "LightGBM, early stopping on the validation part",
        ),
        Method(
            "catboost-es",
            "catboost",
            _catboost_es_configs,
            _booster_builder("catboost"),
            True,
            "CatBoost, early stopping on the validation part",
        ),
        Method(
            "realmlp",
            "pytabkit",
            _pytabkit_configs,
            _pytabkit_builder("realmlp"),
            False,
            "pytabkit RealMLP-TD, best epoch on the validation part, refit on all rows",
            internal_selection=True,
        ),
        Method(
            "tabm",
            "pytabkit",
            _pytabkit_configs,
            _pytabkit_builder("tabm"),
            False,
            "pytabkit TabM-D, best epoch on the validation part (no refit in pytabkit)",
            internal_selection=True,
        ),
    ]
}

# The methods of the held-out run (``--protocol refit``), fixed with the registration.
HELDOUT_METHODS: tuple[str, ...] = (
    "rfm",
    "rfm-default",
    "xrfm",
    "catboost-es",
    "xgboost-es",
    "lightgbm-es",
    "realmlp",
    "tabm",
    "random-forest",
    "svm-rbf",
    "laplace-krr",
)

QUICK_METHODS: tuple[str, ...] = ("rfm", "rfm-default", "svm-rbf", "random-forest")
# what runs when no method is named: the committed suite's methods (not the defaults study,
# not the methods added for the held-out run)
_ADDED_FOR_HELDOUT = ("xgboost-es", "lightgbm-es", "catboost-es", "realmlp", "tabm")
DEFAULT_METHODS: tuple[str, ...] = tuple(
    m for m in METHODS if m != "rfm-defaults-study" and m not in _ADDED_FOR_HELDOUT
)


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
