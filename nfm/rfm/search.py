"""The tuned RFM mode: a small built-in search over kernel, bandwidth, reg and diag.

:class:`RFMSearchClassifier` and :class:`RFMSearchRegressor` fit one
:class:`~nfm.rfm.RFMClassifier` / :class:`~nfm.rfm.RFMRegressor` per candidate of a search space
on an internal, stratified training part, score each on the held-out validation part
(accuracy; for regression R^2, which orders candidates as the validation MSE does), and refit the
best candidate on all the data. Within each candidate, the estimator still selects its own best
iteration (and reg, when configured) by its ``selection`` rule, e.g. closed-form leave-one-out.

The default search space, :func:`default_search_space`, is the one the tabular benchmark tunes
over (``docs/tabular-benchmark.md``), so the library's tuned mode is the benchmark's.

Example
-------
>>> from nfm.rfm.search import RFMSearchClassifier
>>> search = RFMSearchClassifier(random_state=0).fit(X, y)       # doctest: +SKIP
>>> search.best_params_, search.predict(X_new)                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from nfm.exceptions import NFMInputError
from nfm.rfm.estimators import DEFAULT_REG_GRID

Candidate = dict[str, Any]

# Ridge values searched inside every candidate by the estimator's own closed-form leave-one-out
# selection (``reg`` given as a sequence), at every iteration.
REG_GRID: tuple[float, ...] = DEFAULT_REG_GRID

# Ordered; the benchmark takes the first `budget` of them. Chosen from the validation scores of
# the defaults study (benchmarks/results/tabular/defaults/tuning.csv, never the test parts): the
# leave-one-out reg grid, the diagonal metric and the square-root metric each ranked better than
# the fixed defaults; float32 gave the same validation accuracy in about 60% of the time.
_SEARCH_SPACE: tuple[Candidate, ...] = (
    {
        "kernel": "laplace",
        "bandwidth": 10.0,
        "reg": REG_GRID,
        "metric_power": 1.0,
        "dtype": "float32",
    },
    {
        "kernel": "laplace",
        "bandwidth": 10.0,
        "reg": REG_GRID,
        "metric_power": 1.0,
        "diag": True,
        "dtype": "float32",
    },
    {
        "kernel": "laplace",
        "bandwidth": 10.0,
        "reg": REG_GRID,
        "metric_power": 0.5,
        "dtype": "float32",
    },
    {
        "kernel": "laplace",
        "bandwidth": 20.0,
        "reg": REG_GRID,
        "metric_power": 1.0,
        "dtype": "float32",
    },
)


def default_search_space(task: str = "classification") -> list[Candidate]:
    """The built-in candidates (a fresh list of dicts; the same for both tasks today).

    Parameters
    ----------
    task : {"classification", "regression"}
    """
    if task not in ("classification", "regression"):
        raise NFMInputError(f"task: expected 'classification' or 'regression', got {task!r}")
    return [
        {k: list(v) if isinstance(v, tuple) else v for k, v in c.items()} for c in _SEARCH_SPACE
    ]


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _take(values: Any, rows: np.ndarray) -> Any:
    if hasattr(values, "detach"):
        import torch

        return values[torch.as_tensor(rows, device=values.device)]
    if hasattr(values, "iloc"):
        return values.iloc[rows]
    return np.asarray(values)[rows]


class _RFMSearch(BaseEstimator):
    """Shared search logic; subclasses set the estimator class and the split rule."""

    _classification: bool = False

    def __init__(
        self,
        search_space: Sequence[Candidate] | None = None,
        *,
        estimator_params: dict[str, Any] | None = None,
        validation_fraction: float = 0.2,
        refit: bool = True,
        random_state: int | None = None,
    ) -> None:
        self.search_space = search_space
        self.estimator_params = estimator_params
        self.validation_fraction = validation_fraction
        self.refit = refit
        self.random_state = random_state

    def _estimator_class(self) -> type:
        from nfm.rfm.estimators import RFMClassifier, RFMRegressor

        return RFMClassifier if self._classification else RFMRegressor

    def _candidates(self) -> list[Candidate]:
        task = "classification" if self._classification else "regression"
        space = default_search_space(task) if self.search_space is None else self.search_space
        candidates = [dict(c) for c in space]
        if not candidates or not all(isinstance(c, dict) for c in candidates):
            raise NFMInputError(
                f"search_space: expected a non-empty sequence of parameter dicts, got {space!r}"
            )
        return candidates

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        if not 0 < self.validation_fraction < 1:
            raise NFMInputError(
                "validation_fraction: expected a number in (0, 1), got "
                f"{self.validation_fraction!r}"
            )
        n = len(y)
        if n < 4:
            raise NFMInputError(f"X: {type(self).__name__} needs at least 4 samples, got {n}")
        rows = np.arange(n)
        stratify = None
        if self._classification:
            _, counts = np.unique(y, return_counts=True)
            n_val = int(np.ceil(self.validation_fraction * n))
            if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
                stratify = y
        fit_rows, val_rows = train_test_split(
            rows,
            test_size=self.validation_fraction,
            random_state=self.random_state,
            stratify=stratify,
        )
        return np.sort(fit_rows), np.sort(val_rows)

    def fit(self, X: Any, y: Any) -> _RFMSearch:
        """Fit every candidate on the internal training part, keep the best, refit on all data.

        Sets ``cv_results_`` (list of dicts: params, validation_score, fit_seconds),
        ``best_index_``, ``best_params_``, ``best_score_`` and, when ``refit``,
        ``best_estimator_`` fitted on all of ``X, y``.
        """
        estimator_class = self._estimator_class()
        common = dict(self.estimator_params or {})
        common.setdefault("random_state", self.random_state)
        candidates = self._candidates()
        y_numpy = _to_numpy(y)
        labels = y_numpy.reshape(len(y_numpy), -1)[:, 0] if self._classification else y_numpy
        fit_rows, val_rows = self._split(labels)
        X_fit, y_fit = _take(X, fit_rows), _take(y, fit_rows)
        X_val, y_val = _take(X, val_rows), _take(y, val_rows)
        results = []
        best_index, best_score, best_model = -1, -np.inf, None
        for index, candidate in enumerate(candidates):
            params = {**common, **candidate}
            start = time.perf_counter()
            model = estimator_class(**params).fit(X_fit, y_fit)
            score = float(model.score(X_val, y_val))
            results.append(
                {
                    "params": candidate,
                    "validation_score": score,
                    "fit_seconds": time.perf_counter() - start,
                }
            )
            if np.isfinite(score) and score > best_score:
                best_index, best_score, best_model = index, score, model
        if best_model is None:
            raise NFMInputError(
                f"{type(self).__name__}: no candidate reached a finite validation score"
            )
        self.cv_results_ = results
        self.best_index_ = best_index
        self.best_params_ = dict(candidates[best_index])
        self.best_score_ = best_score
        if self.refit:
            self.best_estimator_ = estimator_class(**{**common, **self.best_params_}).fit(X, y)
        else:
            self.best_estimator_ = best_model
        if self._classification:
            self.classes_ = copy.copy(self.best_estimator_.classes_)
        self.n_features_in_ = self.best_estimator_.n_features_in_
        return self

    def _check_fitted(self) -> Any:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_

    def predict(self, X: Any) -> Any:
        """Predictions of the best estimator."""
        return self._check_fitted().predict(X)

    def transform(self, X: Any) -> Any:
        """Learned features of the best estimator, x -> x M^(1/2)."""
        return self._check_fitted().transform(X)

    @property
    def feature_importances_(self) -> Any:
        """diag(M) based importances of the best estimator."""
        return self._check_fitted().feature_importances_


class RFMSearchClassifier(ClassifierMixin, _RFMSearch):
    """RFM classifier with a built-in search over kernel, bandwidth, reg and diag.

    Parameters
    ----------
    search_space : sequence of dict, optional
        Candidate :class:`~nfm.rfm.RFMClassifier` parameters; default
        :func:`default_search_space` ("classification").
    estimator_params : dict, optional
        Parameters shared by every candidate (e.g. ``n_iter``, ``device``, ``dtype``).
    validation_fraction : float
        Share of the rows held out (stratified) to score the candidates by accuracy.
    refit : bool
        Refit the best candidate on all the data (default) or keep the one fitted on the
        internal training part.
    random_state : int, optional
        Seeds the internal split and every candidate.
    """

    _classification = True

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities of the best estimator."""
        return self._check_fitted().predict_proba(X)

    def decision_function(self, X: Any) -> Any:
        """Decision scores of the best estimator."""
        return self._check_fitted().decision_function(X)


class RFMSearchRegressor(RegressorMixin, _RFMSearch):
    """RFM regressor with a built-in search over kernel, bandwidth, reg and diag.

    Candidates are scored by validation R^2 = 1 - SSE / SST (same order as the validation
    MSE). Parameters as in :class:`RFMSearchClassifier`.
    """

    _classification = False
