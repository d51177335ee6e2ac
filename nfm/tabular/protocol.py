"""The benchmark protocol: splits, preprocessing, scores, and the time/memory meter.

One protocol for every method:

1. **Splits.** For each seed, a stratified train/test split (test fraction ``test_fraction``;
   regression targets are stratified on their quantile bins). The training part is capped at
   ``max_train`` rows and the test part at ``max_test`` rows by stratified subsampling. The
   training part is split once more into a *fit* part and a *validation* part
   (``validation_fraction``, stratified). The index arrays depend only on the data, the seed and
   these sizes, never on the method: every method sees the same rows. The splits are this
   module's own code (:func:`make_split`), not ``sklearn.model_selection.train_test_split``:
   they are the protocol of the committed results, which ``train_test_split`` cannot
   reproduce (it draws with a ``RandomState`` instead of a ``numpy.random.Generator``, sizes
   the test part with ``ceil`` instead of ``round``, breaks ties among per-class remainders at
   random instead of keeping one row of every class, and refuses classes with one row).
2. **Preprocessing** (scikit-learn, fitted on the fit part only): numeric columns imputed with
   the fit-part median and standardised, ``(x - mean) / std`` (std 1 for constant columns);
   categorical columns one-hot encoded (missing values are a category of their own, categories
   unseen in the fit part encode as all zeros); see :class:`TabularPreprocessor`. Regression
   targets are standardised with the fit-part mean and standard deviation for every method;
   predictions are mapped back before scoring.
3. **Tuning**: each method fits the same number of configurations on the fit part and keeps
   the one with the best validation score (accuracy; for regression, lowest MSE). The kept
   model predicts the test part; there is no refit.
4. **Scores** (``sklearn.metrics``): accuracy; RMSE and R^2 for regression (on the dataset's
   target scale).
5. **Cost** of the kept configuration: wall time of ``fit`` + ``predict`` on the test part, and
   the peak resident memory of the process during ``fit`` above its resident memory at the
   start of ``fit`` (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
   This counts every allocation of the process (numpy, torch, C++ libraries, all threads);
   memory that an allocator already holds from earlier fits is reused without being counted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfm.exceptions import NFMInputError
from nfm.tabular.datasets import TabularDataset, Task


@dataclass(frozen=True)
class SplitIndices:
    """Row indices of one split: the fit, validation and test parts (disjoint)."""

    seed: int
    fit: np.ndarray
    validation: np.ndarray
    test: np.ndarray

    @property
    def train(self) -> np.ndarray:
        """Fit and validation parts together (the capped training part)."""
        return np.concatenate([self.fit, self.validation])


def _strata(target: np.ndarray, task: Task, n_bins: int = 5) -> np.ndarray:
    """Labels to stratify on: the classes, or quantile bins of a regression target."""
    if task == "classification":
        return np.unique(np.asarray(target).astype(str), return_inverse=True)[1]
    values = np.asarray(target, dtype=float)
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def _stratified_pick(
    indices: np.ndarray, strata: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into a stratified random subset of ``size`` rows and the rest.

    Each stratum contributes ``round(size * share)`` rows (largest remainders fill up to
    ``size``), and at least one row when it has two or more, so every class is represented.
    """
    size = int(min(max(size, 0), len(indices)))
    labels = strata[indices]
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / counts.sum()
    take = np.floor(exact).astype(int)
    take = np.where((take == 0) & (counts >= 2) & (size >= len(classes)), 1, take)
    take = np.minimum(take, counts)
    remainder = exact - take
    for k in np.argsort(-remainder):
        if take.sum() >= size:
            break
        if take[k] < counts[k]:
            take[k] += 1
    while take.sum() > size:  # the minimum-one rule may overshoot on tiny sizes
        take[np.argmax(take)] -= 1
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        members = indices[labels == cls]
        chosen.append(rng.permutation(members)[:k])
    picked = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    rest = np.setdiff1d(indices, picked)
    return picked, rest


def make_split(
    target: np.ndarray,
    task: Task,
    seed: int,
    *,
    test_fraction: float = 0.25,
    validation_fraction: float = 0.2,
    max_train: int | None = 2000,
    max_test: int | None = 5000,
) -> SplitIndices:
    """Stratified fit/validation/test row indices for one seed.

    Parameters
    ----------
    target : array of shape (n,)
    task : {"classification", "regression"}
    seed : int
        Seeds a private ``numpy.random.default_rng``; same seed, same split.
    test_fraction : float
        Share of rows in the test part (before the ``max_test`` cap).
    validation_fraction : float
        Share of the (capped) training part used for validation.
    max_train, max_test : int or None
        Caps on the training and test parts (stratified subsamples); None for no cap.
    """
    if not 0 < test_fraction < 1 or not 0 < validation_fraction < 1:
        raise NFMInputError(
            f"test_fraction and validation_fraction must be in (0, 1); got {test_fraction}, "
            f"{validation_fraction}"
        )
    n = len(target)
    if n < 10:
        raise NFMInputError(f"target: need at least 10 rows to split, got {n}")
    rng = np.random.default_rng(seed)
    strata = _strata(target, task)
    all_rows = np.arange(n)
    test, train = _stratified_pick(all_rows, strata, round(test_fraction * n), rng)
    if max_test is not None and len(test) > max_test:
        test, _ = _stratified_pick(test, strata, max_test, rng)
    if max_train is not None and len(train) > max_train:
        train, _ = _stratified_pick(train, strata, max_train, rng)
    validation, fit = _stratified_pick(train, strata, round(validation_fraction * len(train)), rng)
    return SplitIndices(seed=seed, fit=fit, validation=validation, test=test)


@dataclass
class PreparedSplit:
    """Preprocessed arrays of one split (float64 features; encoded targets)."""

    task: Task
    X_fit: np.ndarray
    y_fit: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray | None
    target_mean: float = 0.0
    target_scale: float = 1.0
    feature_names: list[str] | None = None

    def to_target_scale(self, standardised: np.ndarray) -> np.ndarray:
        """Map standardised regression predictions back to the dataset's target scale."""
        values = np.asarray(standardised, dtype=float).reshape(-1)
        return values * self.target_scale + self.target_mean

    def raw_targets(self, part: str) -> np.ndarray:
        """Targets of ``part`` ('fit', 'val', 'test') on the dataset's scale (regression)."""
        y = {"fit": self.y_fit, "val": self.y_val, "test": self.y_test}[part]
        return self.to_target_scale(y) if self.task == "regression" else y


MISSING_CATEGORY = "<missing>"
"""The category that missing cells (None, NaN, pd.NA) of a categorical column encode as."""


def _float64_matrix(frame) -> np.ndarray:
    """The numeric columns of ``frame`` as a float64 array (missing cells become NaN)."""
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def _category_strings(frame) -> np.ndarray:
    """The cells of categorical columns as strings, missing cells as :data:`MISSING_CATEGORY`.

    Every present cell is passed through ``str`` (so ``1`` and ``"1"`` are one category and the
    categories sort as strings), whatever the column's dtype.
    """
    import pandas as pd

    values = frame.to_numpy(dtype=object)
    return np.where(pd.isna(values), MISSING_CATEGORY, values.astype(str))


class TabularPreprocessor:
    """One-hot categoricals, median-impute and standardise numerics; fit on training rows.

    A :class:`sklearn.compose.ColumnTransformer` of two pipelines:

    - numeric columns (every column not named in ``categorical``, in frame order):
      ``SimpleImputer(strategy="median", keep_empty_features=True)`` then ``StandardScaler()``,
      i.e. ``(x_j - mu_j) / s_j`` with the fit rows' median m_j imputed first (0 for a column
      with no value), mu_j and s_j the mean and population standard deviation after imputation
      (s_j = 1 for a column that is constant on the fit rows, up to rounding);
    - categorical columns (in the order of ``categorical``): cells as strings, missing cells as
      ``"<missing>"``, then ``OneHotEncoder(handle_unknown="ignore")`` with the sorted categories
      of the fit rows; a category unseen at fit time encodes as all zeros.

    ``transform(frame)`` returns ``[numeric block] ++ [one-hot block of each categorical]``.
    """

    def __init__(self, categorical: list[str]) -> None:
        self.categorical = list(categorical)

    def fit(self, frame) -> TabularPreprocessor:
        """Learn imputation values, scales and categories from the rows of ``frame``."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

        missing = [c for c in self.categorical if c not in frame.columns]
        if missing:
            raise NFMInputError(
                f"categorical: columns {missing} are not in the frame (columns: "
                f"{list(frame.columns)})"
            )
        self.numeric_ = [c for c in frame.columns if c not in self.categorical]
        # positions, not labels: ColumnTransformer reads integer labels as positions anyway
        numeric_positions = [frame.columns.get_loc(c) for c in self.numeric_]
        categorical_positions = [frame.columns.get_loc(c) for c in self.categorical]
        numeric = Pipeline(
            [
                ("float64", FunctionTransformer(_float64_matrix)),
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        categorical = Pipeline(
            [
                ("strings", FunctionTransformer(_category_strings)),
                (
                    "one_hot",
                    OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64),
                ),
            ]
        )
        self.transformer_ = ColumnTransformer(
            [
                ("numeric", numeric, numeric_positions),
                ("categorical", categorical, categorical_positions),
            ],
            remainder="drop",
            sparse_threshold=0.0,
        )
        self.transformer_.fit(frame)
        self.feature_names_ = list(self.numeric_) + [
            f"{c}={v}" for c in self.categorical for v in self.categories_[c]
        ]
        return self

    def _fitted_step(self, pipeline: str, step: str):
        return self.transformer_.named_transformers_[pipeline].named_steps[step]

    @property
    def median_(self) -> np.ndarray:
        """Imputation value of each numeric column (fit-rows median; 0 if all missing)."""
        return self._fitted_step("numeric", "impute").statistics_

    @property
    def mean_(self) -> np.ndarray:
        """Mean of each numeric column after imputation (fit rows)."""
        return self._fitted_step("numeric", "scale").mean_

    @property
    def scale_(self) -> np.ndarray:
        """Population standard deviation of each numeric column (1 for constant columns)."""
        return self._fitted_step("numeric", "scale").scale_

    @property
    def categories_(self) -> dict[str, np.ndarray]:
        """Sorted categories of each categorical column seen in the fit rows."""
        if not self.categorical:
            return {}
        encoder = self._fitted_step("categorical", "one_hot")
        return dict(zip(self.categorical, encoder.categories_, strict=True))

    def transform(self, frame) -> np.ndarray:
        """Encode ``frame`` with what :meth:`fit` learned; float64 array (n, n_features_out)."""
        return np.asarray(self.transformer_.transform(frame), dtype=np.float64)


def prepare_split(dataset: TabularDataset, split: SplitIndices) -> PreparedSplit:
    """Preprocess one split: fit the preprocessor (and target scaling) on the fit part only.

    Class labels are encoded as the indices of their string forms among all the dataset's
    labels (``sklearn.preprocessing.LabelEncoder``); regression targets are standardised with
    a ``StandardScaler`` fitted on the fit part.
    """
    from sklearn.preprocessing import LabelEncoder, StandardScaler

    features = dataset.features
    pre = TabularPreprocessor(dataset.categorical).fit(features.iloc[split.fit])
    parts = (split.fit, split.validation, split.test)
    X_fit, X_val, X_test = (pre.transform(features.iloc[rows]) for rows in parts)
    if dataset.task == "classification":
        labels = LabelEncoder()
        encoded = labels.fit_transform(np.asarray(dataset.target).astype(str))
        y_fit, y_val, y_test = (encoded[rows] for rows in parts)
        return PreparedSplit(
            "classification",
            X_fit,
            y_fit,
            X_val,
            y_val,
            X_test,
            y_test,
            classes=labels.classes_,
            feature_names=pre.feature_names_,
        )
    target = np.asarray(dataset.target, dtype=float).reshape(-1, 1)
    scaler = StandardScaler().fit(target[split.fit])
    y_fit, y_val, y_test = (scaler.transform(target[rows]).reshape(-1) for rows in parts)
    return PreparedSplit(
        "regression",
        X_fit,
        y_fit,
        X_val,
        y_val,
        X_test,
        y_test,
        classes=None,
        target_mean=float(scaler.mean_[0]),
        target_scale=float(scaler.scale_[0]),
        feature_names=pre.feature_names_,
    )


# ------------------------------------------------------------------------------ scores


def _flat(values: np.ndarray, dtype: type | None = None) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct labels, mean(y_pred == y_true) (``sklearn.metrics.accuracy_score``)."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(_flat(y_true), _flat(y_pred)))


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean squared error, mean((y - y_hat)^2) (``sklearn.metrics.mean_squared_error``)."""
    from sklearn.metrics import mean_squared_error

    return float(mean_squared_error(_flat(y_true, float), _flat(y_pred, float)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error, sqrt(mean((y - y_hat)^2)) (``root_mean_squared_error``)."""
    from sklearn.metrics import root_mean_squared_error

    return float(root_mean_squared_error(_flat(y_true, float), _flat(y_pred, float)))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination, 1 - sum((y - y_hat)^2) / sum((y - mean y)^2).

    ``sklearn.metrics.r2_score``; NaN when ``y_true`` is constant (R^2 is undefined there).
    """
    from sklearn.metrics import r2_score

    y = _flat(y_true, float)
    if len(y) == 0 or np.all(y == y[0]):
        return float("nan")
    return float(r2_score(y, _flat(y_pred, float)))


def validation_score(task: Task, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The tuning criterion, larger is better: accuracy, or minus the MSE for regression."""
    if task == "classification":
        return accuracy(y_true, y_pred)
    return -mse(y_true, y_pred)


# ------------------------------------------------------------------------------- meter

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_kib(field_name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_supported() -> bool:
    """Whether the process peak RSS can be reset and read (Linux /proc)."""
    if _status_kib("VmHWM") is None:
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Measurement:
    """Wall seconds of a call and the peak RSS increase during it (MiB; NaN if unsupported)."""

    seconds: float = float("nan")
    peak_mib: float = float("nan")


@contextlib.contextmanager
def measure(track_memory: bool = True) -> Iterator[Measurement]:
    """Time the block and measure the peak resident memory it added to the process.

    peak = VmHWM(after block) - VmRSS(before block), with VmHWM reset to the current RSS
    (``echo 5 > /proc/self/clear_refs``) at the start. Threads share the process, so their
    allocations count. Not re-entrant (the reset is process-wide).
    """
    result = Measurement()
    baseline = None
    if track_memory and peak_memory_supported():
        baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        if baseline is not None:
            peak = _status_kib("VmHWM")
            if peak is not None:
                result.peak_mib = max(peak - baseline, 0) / 1024.0


def timed_call(function: Callable[[], Any]) -> tuple[Any, float]:
    """Call ``function()`` and return (its result, wall seconds)."""
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start
