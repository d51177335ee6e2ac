r"""Probes on hidden states: an RFM and a linear baseline, tuned on the training part only.

A probe reads a concept's label from the hidden state :math:`h \in \mathbb{R}^d` of one block.
Both kinds first standardise the features with the mean :math:`\mu` and standard deviation
:math:`s` of the rows they are fitted on, :math:`z = (h - \mu) / s` (a constant feature gets
:math:`s = 1`): a transformer's residual stream has a few coordinates thousands of times
larger than the rest, and both a kernel bandwidth and a ridge penalty need comparable scales.

* ``"rfm"``: :class:`nfm.RFMClassifier` on :math:`z`; its ridge and iteration are chosen by the
  estimator's own leave-one-out rule on the rows it is fitted on, and the outer grid (by
  default the bandwidth :math:`L = c \cdot \mathrm{median}\lVert z_i - z_j\rVert` with
  :math:`c \in \{0.5, 1, 2\}`) on a validation split;
* ``"linear"``: :class:`sklearn.linear_model.LogisticRegression` on :math:`z`, its inverse
  penalty ``C`` chosen from a grid on the same validation split.

:func:`fit_probe` splits the rows it is given (the *training part*) into a fitting and a
validation part, scores every grid point on the validation part, then refits the best one on
the whole training part. When ``groups`` are given (e.g. the template or the word a sentence was
built from), the validation part is made of whole groups, so that the choice rewards
generalisation to unseen groups as the test part does. The test part is never seen:
:func:`probe_blocks` passes only the training rows to :func:`fit_probe` and scores the refitted
probe on the test rows once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nfm.exceptions import NFMInputError

__all__ = [
    "DEFAULT_BANDWIDTH_FACTORS",
    "DEFAULT_C_GRID",
    "PROBE_METHODS",
    "FittedProbe",
    "ProbeScore",
    "fit_probe",
    "probe_blocks",
    "validation_split",
]

#: The kinds of probe.
PROBE_METHODS: tuple[str, ...] = ("rfm", "linear")
#: Bandwidths of the default RFM grid, as multiples of the median pairwise distance.
DEFAULT_BANDWIDTH_FACTORS: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Inverse penalties of the default logistic-regression grid.
DEFAULT_C_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Standardizer:
    """``z = (h - mean) / scale`` with the statistics of the fitting rows."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        scale = X.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        return cls(mean=X.mean(axis=0), scale=scale)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale


@dataclass
class FittedProbe:
    """A probe refitted on the whole training part with its chosen hyperparameters.

    Attributes
    ----------
    method : {"rfm", "linear"}
    params : dict
        The chosen grid point (RFM keyword arguments, or ``{"C": ...}``).
    estimator : RFMClassifier or LogisticRegression
        Fitted on the standardised training rows.
    standardizer : Standardizer
        Maps hidden states to the probe's inputs.
    validation_scores : list of (dict, float)
        Each grid point with its validation accuracy.
    validation_accuracy : float
        The best validation accuracy (the chosen point's).
    train_rows : (n,) array
        The standardised training rows (for the AGOP of an RFM probe).
    """

    method: str
    params: dict[str, Any]
    estimator: Any
    standardizer: Standardizer
    validation_scores: list[tuple[dict[str, Any], float]]
    validation_accuracy: float
    train_rows: np.ndarray = field(repr=False)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted labels of hidden states ``X`` (``(n, d)``)."""
        return self.estimator.predict(self.standardizer(_check_matrix(X, "X")))

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        """Accuracy on ``(X, y)``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))


@dataclass(frozen=True)
class ProbeScore:
    """One block's probe of one kind: chosen hyperparameters and accuracies."""

    block: str
    method: str
    params: dict[str, Any]
    validation_accuracy: float
    train_accuracy: float
    test_accuracy: float


def _check_matrix(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise NFMInputError(f"{name} must be a non-empty 2-D (n, d) array; got shape {X.shape}")
    if not np.isfinite(X).all():
        raise NFMInputError(f"{name} holds NaN or infinite values")
    return X


def _check_labels(y: Any, n: int, name: str = "y") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise NFMInputError(f"{name} must be a 1-D array of {n} labels; got shape {y.shape}")
    if np.unique(y).size < 2:
        raise NFMInputError(f"{name} must hold at least 2 classes; got {np.unique(y).tolist()}")
    return y


def validation_split(
    y: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(fit, validation)`` of a split of the training part.

    Without ``groups``: a stratified split, ``ceil(fraction * n_c)`` rows of each class ``c``
    to validation (at least one, and one left to fit). With ``groups``: each group is
    assigned to the class most of its rows have, and ``ceil(fraction * g_c)`` whole groups of
    each class go to validation (at least one, one left).

    Raises
    ------
    NFMInputError
        ``fraction`` not in (0, 1), or a class with too few rows or groups to appear on both
        sides.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise NFMInputError(f"validation_fraction must be in (0, 1); got {fraction!r}")
    classes = np.unique(y)
    validation: list[np.ndarray] = []
    if groups is None:
        for c in classes:
            rows = rng.permutation(np.flatnonzero(y == c))
            if rows.size < 2:
                raise NFMInputError(
                    f"class {c!r} has {rows.size} training row; the validation split needs 2"
                )
            take = min(max(1, math.ceil(fraction * rows.size)), rows.size - 1)
            validation.append(rows[:take])
    else:
        unique_groups = np.unique(groups)
        majority = {}
        for g in unique_groups:
            values, counts = np.unique(y[groups == g], return_counts=True)
            majority[g] = values[np.argmax(counts)]
        for c in classes:
            members = np.array([g for g in unique_groups if majority[g] == c])
            if members.size < 2:
                raise NFMInputError(
                    f"class {c!r} has {members.size} group in the training part; a grouped "
                    "validation split needs 2 (one to fit, one to validate)"
                )
            members = rng.permutation(members)
            take = min(max(1, math.ceil(fraction * members.size)), members.size - 1)
            validation.append(np.flatnonzero(np.isin(groups, members[:take])))
    val = np.sort(np.concatenate(validation))
    fit = np.setdiff1d(np.arange(y.shape[0]), val)
    for part, name in ((fit, "fitting"), (val, "validation")):
        missing = np.setdiff1d(classes, y[part])
        if missing.size:
            raise NFMInputError(
                f"the {name} part of the validation split lacks classes {missing.tolist()}; "
                "give more groups per class"
            )
    return fit, val


def _median_distance(Z: np.ndarray, rng: np.random.Generator, max_rows: int = 500) -> float:
    rows = Z if Z.shape[0] <= max_rows else Z[rng.choice(Z.shape[0], max_rows, replace=False)]
    sq = (rows**2).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0)
    upper = np.sqrt(d2[np.triu_indices(rows.shape[0], k=1)])
    median = float(np.median(upper)) if upper.size else 0.0
    return median if median > 0 else 1.0


def _raw_grid(method: str, grid: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    if grid is not None:
        return [dict(point) for point in grid]
    if method == "rfm":
        return [{"bandwidth_factor": f} for f in DEFAULT_BANDWIDTH_FACTORS]
    return [{"C": c} for c in DEFAULT_C_GRID]


def _resolve(point: Mapping[str, Any], Z: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """A grid point with ``bandwidth_factor`` turned into a bandwidth for the rows ``Z``."""
    point = dict(point)
    if "bandwidth_factor" in point:
        point["bandwidth"] = float(point.pop("bandwidth_factor")) * _median_distance(Z, rng)
    return point


def _make_estimator(method: str, params: Mapping[str, Any], seed: int) -> Any:
    if method == "rfm":
        from nfm.rfm.estimators import RFMClassifier

        return RFMClassifier(**{"random_state": seed, **params})
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000, **params)


def fit_probe(
    X: Any,
    y: Any,
    *,
    method: str = "rfm",
    groups: Any = None,
    grid: Sequence[Mapping[str, Any]] | None = None,
    validation_fraction: float = 0.25,
    random_state: int = 0,
) -> FittedProbe:
    """Choose a probe's hyperparameters on a validation split of ``(X, y)``, refit on all of it.

    Parameters
    ----------
    X : (n, d) array
        Hidden states of the training part only.
    y : (n,) array
        Labels.
    method : {"rfm", "linear"}
    groups : (n,) array, optional
        Group of each row; the validation part is made of whole groups (see
        :func:`validation_split`).
    grid : sequence of dicts, optional
        Grid points. For ``"rfm"``: keyword arguments of :class:`nfm.RFMClassifier`, where
        ``bandwidth_factor`` multiplies the median pairwise distance of the standardised rows
        (default: ``bandwidth_factor`` in :data:`DEFAULT_BANDWIDTH_FACTORS`). For ``"linear"``:
        keyword arguments of LogisticRegression (default ``C`` in :data:`DEFAULT_C_GRID`).
    validation_fraction : float
        Share of rows (or groups) per class held out for validation.
    random_state : int
        Seeds the split, the median's sample and the RFM.

    Returns
    -------
    FittedProbe

    Raises
    ------
    NFMInputError
        Bad arrays, method, grid or split.
    """
    if method not in PROBE_METHODS:
        raise NFMInputError(f"method must be one of {PROBE_METHODS}; got {method!r}")
    X = _check_matrix(X, "X")
    y = _check_labels(y, X.shape[0])
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (X.shape[0],):
            raise NFMInputError(
                f"groups must be a 1-D array of {X.shape[0]} group labels; got {groups.shape}"
            )
    if grid is not None and (isinstance(grid, Mapping) or len(grid) == 0):
        raise NFMInputError("grid must be a non-empty sequence of parameter dicts")
    rng = np.random.default_rng(random_state)
    fit_rows, val_rows = validation_split(y, groups, validation_fraction, rng)
    standardize = Standardizer.fit(X[fit_rows])
    Z_fit, Z_val = standardize(X[fit_rows]), standardize(X[val_rows])
    raw = _raw_grid(method, grid)
    median_seed = int(rng.integers(2**31))
    scores: list[tuple[dict[str, Any], float]] = []
    for point in raw:
        resolved = _resolve(point, Z_fit, np.random.default_rng(median_seed))
        estimator = _make_estimator(method, resolved, random_state).fit(Z_fit, y[fit_rows])
        accuracy = float(np.mean(estimator.predict(Z_val) == y[val_rows]))
        scores.append(({**point, **resolved}, accuracy))
    best_index = int(np.argmax([s for _, s in scores]))  # ties: the first grid point
    best_score = scores[best_index][1]
    # refit on the whole training part: new statistics, a bandwidth factor resolved on them
    standardize = Standardizer.fit(X)
    Z = standardize(X)
    params = _resolve(raw[best_index], Z, np.random.default_rng(median_seed))
    estimator = _make_estimator(method, params, random_state).fit(Z, y)
    return FittedProbe(
        method=method,
        params=params,
        estimator=estimator,
        standardizer=standardize,
        validation_scores=scores,
        validation_accuracy=best_score,
        train_rows=Z,
    )


def probe_blocks(
    features: Mapping[str, Any],
    y: Any,
    train: Any,
    test: Any,
    *,
    methods: Sequence[str] = PROBE_METHODS,
    groups: Any = None,
    grids: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    validation_fraction: float = 0.25,
    random_state: int = 0,
) -> tuple[list[ProbeScore], dict[tuple[str, str], FittedProbe]]:
    """Fit each kind of probe on each block's training rows; score it once on the test rows.

    Parameters
    ----------
    features : mapping block -> (n, d) array
        E.g. from :func:`nfm.probes.block_hidden_states`.
    y : (n,) array
        Labels of all rows.
    train, test : integer index arrays
        Disjoint rows; only ``train`` rows (and their ``groups``) reach :func:`fit_probe`.
    methods : sequence of {"rfm", "linear"}
    groups : (n,) array, optional
        Groups for the validation split (only the training rows' are used).
    grids : mapping method -> grid, optional
        The ``grid`` of :func:`fit_probe` for each method (default grids for the others).
    validation_fraction, random_state
        As in :func:`fit_probe`.

    Returns
    -------
    scores : list of ProbeScore
        Block-major, in the order of ``features`` then ``methods``.
    probes : dict (block, method) -> FittedProbe
    """
    if not features:
        raise NFMInputError("features is empty; give at least one block's hidden states")
    train = np.asarray(train, dtype=np.int64).reshape(-1)
    test = np.asarray(test, dtype=np.int64).reshape(-1)
    if np.intersect1d(train, test).size:
        raise NFMInputError("train and test rows overlap; they must be disjoint")
    if train.size == 0 or test.size == 0:
        raise NFMInputError("train and test must both hold rows")
    for method in methods:
        if method not in PROBE_METHODS:
            raise NFMInputError(f"methods must be among {PROBE_METHODS}; got {method!r}")
    y = np.asarray(y)
    n = y.shape[0]
    if train.max() >= n or test.max() >= n or min(train.min(), test.min()) < 0:
        raise NFMInputError(f"train and test must be row indices in [0, {n})")
    group_train = None if groups is None else np.asarray(groups)[train]
    scores: list[ProbeScore] = []
    probes: dict[tuple[str, str], FittedProbe] = {}
    for block, X in features.items():
        X = _check_matrix(X, f"features[{block!r}]")
        if X.shape[0] != n:
            raise NFMInputError(f"features[{block!r}] has {X.shape[0]} rows; y has {n}")
        for method in methods:
            probe = fit_probe(
                X[train],
                y[train],
                method=method,
                groups=group_train,
                grid=(grids or {}).get(method),
                validation_fraction=validation_fraction,
                random_state=random_state,
            )
            probes[(block, method)] = probe
            scores.append(
                ProbeScore(
                    block=block,
                    method=method,
                    params=probe.params,
                    validation_accuracy=probe.validation_accuracy,
                    train_accuracy=probe.score(X[train], y[train]),
                    test_accuracy=probe.score(X[test], y[test]),
                )
            )
    return scores, probes
