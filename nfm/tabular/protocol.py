"""The benchmark protocol: splits, preprocessing, scores, and the time/memory meter.

One protocol for every method:

1. **Splits.** For each seed, a stratified train/test split (test fraction ``test_fraction``;
   regression targets are stratified on their quantile bins). The training part is capped at
   ``max_train`` rows and the test part at ``max_test`` rows by stratified subsampling. The
   training part is split once more into a *fit* part and a *validation* part
   (``validation_fraction``, stratified). The index arrays depend only on the data, the seed and
   these sizes, never on the method: every method sees the same rows.
2. **Preprocessing**, fitted on the fit part only: numeric columns imputed with the fit-part
   median and standardised, ``(x - mean) / std`` (std 1 for constant columns); categorical
   columns one-hot encoded (missing values are a category of their own, categories unseen in
   the fit part encode as all zeros). Regression targets are standardised with the fit-part
   mean and standard deviation for every method; predictions are mapped back before scoring.
3. **Tuning**: each method fits the same number of configurations on the fit part and keeps
   the one with the best validation score (accuracy; for regression, lowest MSE). The kept
   model predicts the test part; there is no refit.
4. **Scores**: accuracy; RMSE and R^2 for regression (on the dataset's target scale).
5. **Cost** of the kept configuration: wall time of ``fit`` + ``predict`` on the test part, and
   the peak resident memory of the process during ``fit`` above its resident memory at the
   start of ``fit`` (Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
   This counts every allocation of the process (numpy, torch, C++ libraries, all threads);
   memory that an allocator already holds from earlier fits is reused without being counted.
"""

from __future__ import annotations

import contextlib
import time
import warnings
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


class TabularPreprocessor:
    """One-hot categoricals, median-impute and standardise numerics; fit on training rows.

    ``fit(frame)`` learns, from the rows given only: per numeric column the median m_j, mean
    mu_j and standard deviation s_j (after imputation; s_j = 1 when 0); per categorical column
    the sorted category list (missing is the category ``"<missing>"``).
    ``transform(frame)`` returns ``[(x_j - mu_j) / s_j for numerics] ++ [one-hot blocks]``.
    """

    def __init__(self, categorical: list[str]) -> None:
        self.categorical = list(categorical)

    def fit(self, frame) -> TabularPreprocessor:
        """Learn imputation values, scales and categories from ``frame``."""
        self.numeric_ = [c for c in frame.columns if c not in self.categorical]
        numeric = frame[self.numeric_].to_numpy(dtype=float) if self.numeric_ else None
        if numeric is not None:
            with warnings.catch_warnings():  # all-missing columns: median NaN, set to 0 below
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(numeric, axis=0)
            self.median_ = np.where(np.isnan(median), 0.0, median)
            filled = np.where(np.isnan(numeric), self.median_, numeric)
            self.mean_ = filled.mean(axis=0)
            scale = filled.std(axis=0)
            self.scale_ = np.where(scale > 0, scale, 1.0)
        self.categories_ = {
            c: np.unique(self._categorical_values(frame, c)) for c in self.categorical
        }
        self.feature_names_ = list(self.numeric_) + [
            f"{c}={v}" for c in self.categorical for v in self.categories_[c]
        ]
        return self

    @staticmethod
    def _categorical_values(frame, column: str) -> np.ndarray:
        values = frame[column].astype("object").to_numpy()
        missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in values])
        out = values.astype(str)
        out[missing] = "<missing>"
        return out

    def transform(self, frame) -> np.ndarray:
        """Encode ``frame`` with what :meth:`fit` learned; float64 array (n, n_features_out)."""
        blocks = []
        if self.numeric_:
            numeric = frame[self.numeric_].to_numpy(dtype=float)
            filled = np.where(np.isnan(numeric), self.median_, numeric)
            blocks.append((filled - self.mean_) / self.scale_)
        for column in self.categorical:
            values = self._categorical_values(frame, column)
            categories = self.categories_[column]
            blocks.append((values[:, None] == categories[None, :]).astype(float))
        if not blocks:
            return np.zeros((len(frame), 0))
        return np.hstack(blocks)


def prepare_split(dataset: TabularDataset, split: SplitIndices) -> PreparedSplit:
    """Preprocess one split: fit the preprocessor (and target scaling) on the fit part only."""
    features = dataset.features
    pre = TabularPreprocessor(dataset.categorical).fit(features.iloc[split.fit])

    def encode(rows: np.ndarray) -> np.ndarray:
        return pre.transform(features.iloc[rows])

    X_fit, X_val, X_test = encode(split.fit), encode(split.validation), encode(split.test)
    if dataset.task == "classification":
        labels = np.asarray(dataset.target).astype(str)
        classes, encoded = np.unique(labels, return_inverse=True)
        return PreparedSplit(
            "classification",
            X_fit,
            encoded[split.fit],
            X_val,
            encoded[split.validation],
            X_test,
            encoded[split.test],
            classes=classes,
            feature_names=pre.feature_names_,
        )
    target = np.asarray(dataset.target, dtype=float)
    mean = float(target[split.fit].mean())
    scale = float(target[split.fit].std()) or 1.0

    def standardise(rows: np.ndarray) -> np.ndarray:
        return (target[rows] - mean) / scale

    return PreparedSplit(
        "regression",
        X_fit,
        standardise(split.fit),
        X_val,
        standardise(split.validation),
        X_test,
        standardise(split.test),
        classes=None,
        target_mean=mean,
        target_scale=scale,
        feature_names=pre.feature_names_,
    )


# ------------------------------------------------------------------------------ scores


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of correct labels, mean(y_pred == y_true)."""
    return float(np.mean(np.asarray(y_true).reshape(-1) == np.asarray(y_pred).reshape(-1)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error, sqrt(mean((y - y_hat)^2))."""
    diff = np.asarray(y_true, dtype=float).reshape(-1) - np.asarray(y_pred, dtype=float).reshape(-1)
    return float(np.sqrt(np.mean(diff**2)))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination, 1 - sum((y - y_hat)^2) / sum((y - mean y)^2)."""
    y = np.asarray(y_true, dtype=float).reshape(-1)
    y_hat = np.asarray(y_pred, dtype=float).reshape(-1)
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - y_hat) ** 2) / total) if total > 0 else float("nan")


def validation_score(task: Task, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The tuning criterion, larger is better: accuracy, or minus the MSE for regression."""
    if task == "classification":
        return accuracy(y_true, y_pred)
    return -(rmse(y_true, y_pred) ** 2)


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
