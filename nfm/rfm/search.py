"""The tuned RFM mode: a small built-in search over kernel, bandwidth, reg and diag.

:class:`RFMSearchClassifier` and :class:`RFMSearchRegressor` fit one
:class:`~nfm.rfm.RFMClassifier` / :class:`~nfm.rfm.RFMRegressor` per candidate of a search space
on an internal training part, score each on the held-out validation part (accuracy; for
regression R^2, which orders candidates as the validation MSE does), and refit the best
candidate on all the data. The split is :func:`sklearn.model_selection.train_test_split`
(stratified by class for the classifier whenever every class can be on both sides) and the
search itself is :class:`sklearn.model_selection.GridSearchCV` on that one split, so
``cv_results_``, ``best_index_``, ``best_params_`` and ``best_score_`` mean what they mean
there. Within each candidate, the estimator still selects its own best iteration (and reg, when
configured) by its ``selection`` rule, e.g. closed-form leave-one-out.

The default search space, :func:`default_search_space`, is the one the tabular benchmark's
development run tuned over. The held-out run tunes over a copy of it registered before that run,
``nfm.tabular.registration.RFM_SEARCH_SPACE`` (fixed on 2026-12-02; ``docs/tabular-benchmark.md``),
so later changes to this default cannot alter the registered benchmark.

Example
-------
>>> from nfm.rfm.search import RFMSearchClassifier
>>> search = RFMSearchClassifier(random_state=0).fit(X, y)       # doctest: +SKIP
>>> search.best_params_, search.predict(X_new)                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.utils.validation import check_is_fitted

from nfm.exceptions import NFMInputError
from nfm.rfm.params import DEFAULT_REG_GRID

__all__ = ["REG_GRID", "RFMSearchClassifier", "RFMSearchRegressor", "default_search_space"]

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


def _labels(y: Any) -> np.ndarray:
    values = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    return values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values


class _RFMSearch(BaseEstimator):
    """Shared search logic; subclasses set the task."""

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

    def _base_estimator(self) -> BaseEstimator:
        from nfm.rfm.estimators import RFMClassifier, RFMRegressor

        common = dict(self.estimator_params or {})
        common.setdefault("random_state", self.random_state)
        cls = RFMClassifier if self._classification else RFMRegressor
        return cls(**common)

    def _candidates(self) -> list[Candidate]:
        task = "classification" if self._classification else "regression"
        space = default_search_space(task) if self.search_space is None else self.search_space
        candidates = list(space) if isinstance(space, Sequence) else []
        if not candidates or not all(isinstance(c, dict) for c in candidates):
            raise NFMInputError(
                f"search_space: expected a non-empty sequence of parameter dicts, got {space!r}"
            )
        return [dict(c) for c in candidates]

    def _split(self, y: Any) -> tuple[np.ndarray, np.ndarray]:
        frac = self.validation_fraction
        if not isinstance(frac, numbers.Real) or not 0 < frac < 1:
            raise NFMInputError(f"validation_fraction: expected a number in (0, 1), got {frac!r}")
        labels = _labels(y)
        n = len(labels)
        if n < 4:
            raise NFMInputError(f"X: {type(self).__name__} needs at least 4 samples, got {n}")
        stratify = None
        if self._classification:
            _, counts = np.unique(labels, return_counts=True)
            n_val = math.ceil(frac * n)
            if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
                stratify = labels
        fit_rows, val_rows = train_test_split(
            np.arange(n), test_size=frac, random_state=self.random_state, stratify=stratify
        )
        return np.sort(fit_rows), np.sort(val_rows)

    def fit(self, X: Any, y: Any) -> _RFMSearch:
        """Fit every candidate on the internal training part, keep the best, refit on all data.

        Sets ``cv_results_`` (scikit-learn's dict of arrays: ``params``, ``param_<name>``,
        ``split0_test_score``, ``mean_test_score``, ``std_test_score``, ``rank_test_score``,
        ``mean_fit_time``, ...), ``best_index_``, ``best_params_``, ``best_score_`` and
        ``best_estimator_``: the best candidate refitted on all of ``X, y`` (``refit=True``) or
        fitted on the internal training part only (``refit=False``). All are assigned at the
        end, so a failed fit leaves the search as it was.
        """
        candidates = self._candidates()
        fit_rows, val_rows = self._split(y)
        grid = GridSearchCV(
            self._base_estimator(),
            [{key: [value] for key, value in c.items()} for c in candidates],
            scoring="accuracy" if self._classification else "r2",
            cv=[(fit_rows, val_rows)],
            refit=bool(self.refit),
            error_score="raise",
        ).fit(X, y)
        if not np.isfinite(grid.best_score_):
            raise NFMInputError(
                f"{type(self).__name__}: no candidate reached a finite validation score"
            )
        best_params = dict(candidates[grid.best_index_])
        if self.refit:
            best = grid.best_estimator_
        else:  # the chosen candidate as scored: fitted on the training part (deterministic)
            best = clone(grid.estimator).set_params(**best_params)
            best.fit(*_rows(X, y, fit_rows))
        state = {
            "cv_results_": grid.cv_results_,
            "best_index_": int(grid.best_index_),
            "best_params_": best_params,
            "best_score_": float(grid.best_score_),
            "best_estimator_": best,
            "n_features_in_": best.n_features_in_,
        }
        if self._classification:
            state["classes_"] = copy.copy(best.classes_)
        if hasattr(best, "feature_names_in_"):
            state["feature_names_in_"] = best.feature_names_in_
        for key in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, key)
        for key, value in state.items():
            setattr(self, key, value)
        return self

    def _check_fitted(self) -> Any:
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


def _rows(X: Any, y: Any, rows: np.ndarray) -> tuple[Any, Any]:
    """``X[rows], y[rows]`` for numpy, pandas or torch data (scikit-learn's own indexing)."""
    from sklearn.utils import _safe_indexing

    return _safe_indexing(X, rows), _safe_indexing(y, rows)


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
        Refit the best candidate on all the data (default) or keep it fitted on the internal
        training part.
    random_state : int, optional
        Seeds the internal split and every candidate.

    Attributes
    ----------
    cv_results_ : dict of arrays
        As :class:`sklearn.model_selection.GridSearchCV` (one split: ``split0_test_score``).
    best_index_, best_params_, best_score_, best_estimator_
        As in ``GridSearchCV``; ``best_params_`` is the winning candidate dict.
    classes_, n_features_in_
        Those of ``best_estimator_``.
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
    MSE). Parameters and attributes as in :class:`RFMSearchClassifier`.
    """

    _classification = False
