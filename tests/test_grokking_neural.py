"""The grokking network, its tracked run, the figures and the ``nfm grokking`` command."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from nfm.ansatz import nfa_correlation
from nfm.cli import main as nfm_main
from nfm.exceptions import NFMInputError
from nfm.features import compute_agop, compute_nfm
from nfm.grokking import (
    QuadraticActivation,
    feature_block,
    grokking_network,
    modular_arithmetic_dataset,
    plot_feature_matrices_over_time,
    plot_fourier_spectrum,
    plot_grokking_progress,
    run_neural_grokking,
    structure_deviation,
)

P = 11


@pytest.fixture(scope="module")
def data():
    return modular_arithmetic_dataset("add", P, 0.6, seed=0)


@pytest.fixture(scope="module")
def run(data):
    return run_neural_grokking(data, epochs=40, record_every=20, seed=3)


def test_network_architecture_and_seeding():
    gen = torch.Generator().manual_seed(0)
    model = grokking_network(P, 32, generator=gen)
    assert [type(m) for m in model] == [torch.nn.Linear, QuadraticActivation, torch.nn.Linear]
    assert model[0].bias is None and model[2].bias is None
    assert model[0].weight.shape == (32, 2 * P) and model[2].weight.shape == (P, 32)
    x = torch.randn(5, 2 * P)
    np.testing.assert_allclose(
        model(x).detach(),
        ((x @ model[0].weight.T) ** 2 @ model[2].weight.T).detach(),
        rtol=1e-6,
    )
    again = grokking_network(P, 32, generator=torch.Generator().manual_seed(0))
    other = grokking_network(P, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model[0].weight, again[0].weight)
    assert not torch.equal(model[0].weight, other[0].weight)


def test_run_records_everything(run, data):
    rows = run.history
    steps_per_epoch = -(-len(data.y_train) // 32)
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 40 * steps_per_epoch
    expected = {
        "epoch",
        "train_accuracy",
        "test_accuracy",
        "train_loss",
        "test_loss",
        "pearson_a0.5",
        "pearson_a0.5_offdiag",
        "pearson_a1",
        "pearson_a1_offdiag",
        "nfm_relative_change",
        "circulant_deviation",
        "hankel_deviation",
        "structure",
        "structure_deviation",
        "wall_seconds",
        "cpu_seconds",
    }
    assert expected <= set(rows[0])
    for row in rows:
        for column in ("pearson_a0.5", "pearson_a0.5_offdiag", "pearson_a1"):
            assert -1.0 <= row[column] <= 1.0
    # the network (nearly) fits the training set
    assert rows[-1]["train_accuracy"] >= 0.9 > rows[0]["train_accuracy"] + 0.5
    assert len(run.nfms) == len(rows)
    assert not run.model.training


def test_records_agree_with_the_feature_matrix_engine(run, data):
    model = run.model
    nfm_matrix = compute_nfm(model, ["0"])["0"].to(torch.float64)
    agop = compute_agop(
        model,
        torch.as_tensor(data.X_train, dtype=torch.float32),
        layers=["0"],
        include_input=False,
    )["0"].to(torch.float64)
    last = run.history[-1]
    assert last["pearson_a0.5"] == pytest.approx(
        nfa_correlation(nfm_matrix, agop, alpha=0.5), abs=1e-6
    )
    assert last["pearson_a1_offdiag"] == pytest.approx(
        nfa_correlation(nfm_matrix, agop, alpha=1.0, exclude_diagonal=True), abs=1e-6
    )
    np.testing.assert_allclose(run.nfms[-1], nfm_matrix.numpy(), rtol=1e-6)
    block = feature_block(run.nfms[-1], P, op="add")
    assert structure_deviation(block).hankel == pytest.approx(last["hankel_deviation"])


def test_run_is_deterministic(run, data):
    again = run_neural_grokking(data, epochs=40, record_every=20, seed=3)
    for a, b in zip(run.history, again.history, strict=True):
        assert a["test_accuracy"] == b["test_accuracy"]
        assert a["pearson_a0.5"] == pytest.approx(b["pearson_a0.5"], abs=1e-9)


def test_stop_after_target(data):
    result = run_neural_grokking(
        data, epochs=200, width=64, stop_at_test_accuracy=0.0, extra_epochs=2, keep_nfms=False
    )
    steps_per_epoch = -(-len(data.y_train) // 32)
    assert result.history[-1]["step"] == 3 * steps_per_epoch
    assert result.nfms == []


def test_neural_bad_input(data):
    with pytest.raises(NFMInputError, match="ModularArithmeticDataset"):
        run_neural_grokking(data.X_train)
    with pytest.raises(NFMInputError, match="epochs"):
        run_neural_grokking(data, epochs=0)
    with pytest.raises(NFMInputError, match="p must be"):
        grokking_network(2)


def test_figures(run):
    backend = matplotlib.get_backend()
    fig = plot_grokking_progress(run)
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_xlabel() == "epoch"
    fig2 = plot_feature_matrices_over_time(run.nfms[:2], P, op="add", labels=["a", "b"])
    assert len([ax for ax in fig2.axes if ax.get_title()]) == 2
    fig3 = plot_fourier_spectrum(feature_block(run.nfms[-1], P))
    assert isinstance(fig3, Figure)
    fig4, ax = matplotlib.pyplot.subplots()
    assert plot_grokking_progress(run.history, ax=ax, loss=None) is fig4
    with pytest.raises(NFMInputError, match="not in the history"):
        plot_grokking_progress(run, columns=["nope"])
    with pytest.raises(NFMInputError, match="labels"):
        plot_feature_matrices_over_time(run.nfms[:2], P, labels=["only one"])
    assert matplotlib.get_backend() == backend
    for figure in (fig, fig2, fig3, fig4):
        matplotlib.pyplot.close(figure)


def test_command_line(tmp_path):
    out = tmp_path / "grok"
    code = nfm_main(
        [
            "-q",
            "grokking",
            "--ops",
            "add",
            "--p",
            "7",
            "--fraction",
            "0.8",
            "--iterations",
            "3",
            "--no-figures",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads((out / "kernel_summary.json").read_text())
    assert summary["rows"][0]["op"] == "add" and "machine" in summary
    assert "random_circulant_test_accuracy" in summary["rows"][0]
    assert (out / "kernel_add_p7_history.csv").exists()
    assert nfm_main(["-q", "grokking", "--ops", "mul", "--p", "9", "-o", str(out)]) == 2
