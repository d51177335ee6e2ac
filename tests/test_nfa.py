"""Tests of nfm.ansatz: NFA correlation, the fitted power, output layers and the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nfm.ansatz import (
    NFAReport,
    correlation_column,
    fit_alpha,
    nfa_correlation,
    nfa_report,
    output_layer_names,
)
from nfm.exceptions import NFMInputError
from nfm.features import compute_agop, compute_nfm
from nfm.linalg import matrix_correlation, symmetric_matrix_power


def psd(d, seed, rank=None):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(d, rank or d))
    return b @ b.T


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def test_correlation_is_linalg_correlation_of_the_power():
    n, a = psd(6, 0), psd(6, 1)
    for alpha in (0.25, 0.5, 1.0, 2.0):
        for kind in ("pearson", "cosine"):
            for diag in (False, True):
                want = matrix_correlation(
                    n, symmetric_matrix_power(a, alpha), kind=kind, exclude_diagonal=diag
                )
                got = nfa_correlation(n, a, alpha=alpha, kind=kind, exclude_diagonal=diag)
                assert got == pytest.approx(want, abs=1e-14)


@settings(max_examples=15, deadline=None)
@given(
    d=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    alpha=st.sampled_from([0.5, 1.0, 1.5]),
    s=st.floats(1e-3, 1e3),
    t=st.floats(1e-3, 1e3),
    kind=st.sampled_from(["pearson", "cosine"]),
    diag=st.booleans(),
)
def test_correlation_range_symmetry_and_scale_invariance(d, seed, alpha, s, t, kind, diag):
    n, a = psd(d, seed), psd(d, seed + 1)
    rho = nfa_correlation(n, a, alpha=alpha, kind=kind, exclude_diagonal=diag)
    if np.isnan(rho):
        return
    assert -1.0 <= rho <= 1.0
    scaled = nfa_correlation(s * n, t * a, alpha=alpha, kind=kind, exclude_diagonal=diag)
    assert scaled == pytest.approx(rho, abs=1e-9)
    # alpha = 1: symmetric in its two arguments
    one = nfa_correlation(n, a, alpha=1.0, kind=kind, exclude_diagonal=diag)
    assert nfa_correlation(a, n, alpha=1.0, kind=kind, exclude_diagonal=diag) == pytest.approx(
        one, abs=1e-12
    )


@pytest.mark.parametrize("true_alpha", [0.3, 0.5, 0.8, 1.6])
def test_fit_alpha_recovers_the_power(true_alpha):
    a = psd(8, 3)
    n = symmetric_matrix_power(a, true_alpha)
    alpha, corr = fit_alpha(n, a)
    assert alpha == pytest.approx(true_alpha, rel=2e-3)
    assert corr == pytest.approx(1.0, abs=1e-8)
    assert corr >= max(nfa_correlation(n, a, alpha=x) for x in (0.05, 0.5, 1.0, 2.0)) - 1e-12


def test_fit_alpha_agrees_with_nfa_correlation_at_its_optimum():
    n, a = psd(6, 10), psd(6, 11)
    for kind in ("pearson", "cosine"):
        alpha, corr = fit_alpha(n, a, kind=kind, exclude_diagonal=True, bounds=(0.1, 1.5))
        assert 0.1 <= alpha <= 1.5
        assert corr == pytest.approx(
            nfa_correlation(n, a, alpha=alpha, kind=kind, exclude_diagonal=True), abs=1e-12
        )


def test_fit_alpha_undefined_and_bad_bounds():
    alpha, corr = fit_alpha(np.eye(3), np.eye(3), exclude_diagonal=True)
    assert np.isnan(alpha) and np.isnan(corr)
    with pytest.raises(NFMInputError, match="bounds"):
        fit_alpha(np.eye(3), np.eye(3), bounds=(0.0, 1.0))
    with pytest.raises(NFMInputError, match="same shape"):
        nfa_correlation(np.eye(3), np.eye(4))
    with pytest.raises(NFMInputError, match="square"):
        nfa_correlation(np.ones((2, 3)), np.ones((2, 3)))


class SqueezedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 5)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.hidden(x))).squeeze(-1)


class SquashedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return torch.sigmoid(self.head(self.hidden(x)))


def test_output_layer_names():
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    model = mlp()
    model.train()
    assert output_layer_names(model, x) == {"4"}
    assert model.training and all(not m._forward_hooks for m in model.modules())
    assert output_layer_names(SqueezedHead(), torch.randn(3, 4)) == {"head"}
    assert output_layer_names(SquashedHead(), torch.randn(3, 4)) == set()


def test_report_rows_and_by_construction():
    model = mlp()
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    report = nfa_report(model, x)
    assert isinstance(report, NFAReport)
    assert [row["layer"] for row in report.rows] == ["0", "2", "4"]
    assert [row["by_construction"] for row in report.rows] == [False, False, True]
    assert [row["d"] for row in report.rows] == [5, 7, 6]
    last = report.rows[-1]
    assert last[correlation_column("pearson", 1.0, False)] == pytest.approx(1.0, abs=1e-6)
    assert last["best_alpha"] == pytest.approx(1.0, rel=1e-2)
    assert set(report.agop) == set(report.nfm) == {"0", "2", "4"}
    assert isinstance(report.agop["0"], np.ndarray)
    nfm = compute_nfm(model)
    agop = compute_agop(model, x, include_input=False)
    for row in report.rows:
        for kind in ("pearson", "cosine"):
            for diag in (False, True):
                want = nfa_correlation(
                    nfm[row["layer"]],
                    agop[row["layer"]],
                    alpha=0.5,
                    kind=kind,
                    exclude_diagonal=diag,
                )
                assert row[correlation_column(kind, 0.5, diag)] == pytest.approx(want, abs=1e-6)
    frame = report.to_frame()
    assert list(frame.columns) == report.columns
    assert len(frame) == 3
    assert "by_construction" in str(report)


def test_report_options():
    model = mlp()
    x = torch.randn(12, 5)
    report = nfa_report(
        model,
        x,
        layers=["2"],
        alphas=[0.5],
        kinds=["cosine"],
        exclude_diagonal=True,
        fit_best_alpha=False,
        chunk_size=5,
        centered=True,
    )
    assert report.columns == [
        "layer",
        "d",
        "by_construction",
        "cosine_a0.5_offdiag",
        "nfm_trace",
        "agop_trace",
    ]
    with pytest.raises(NFMInputError, match="unknown keyword"):
        nfa_report(model, x, bogus=1)
    with pytest.raises(NFMInputError, match="kinds"):
        nfa_report(model, x, kinds=["spearman"])
