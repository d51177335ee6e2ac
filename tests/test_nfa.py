"""Tests of nfm.ansatz: NFA correlation, the fitted power, output layers and the report."""

from __future__ import annotations

import warnings

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
from nfm.exceptions import NFMInputError, NumericalWarning
from nfm.features import compute_agop, compute_nfm
from nfm.linalg import matrix_correlation, symmetric_matrix_power


def psd(d, seed, rank=None):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(d, rank or d))
    return b @ b.T


def mlp(seed=0):
    with torch.random.fork_rng():  # the global generator is left as it was
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)
        )


def reference_power(a, alpha):
    """A^alpha with numpy's eigh, eigenvalues clipped at 0: plain float64."""
    values, vectors = np.linalg.eigh(0.5 * (a + a.T))
    return (vectors * np.clip(values, 0, None) ** alpha) @ vectors.T


def reference_nfa(n, a, alpha, kind="pearson", exclude_diagonal=False):
    """The NFA correlation written out in numpy, without the engine's clamp to [-1, 1]."""
    powered = reference_power(a, alpha)
    keep = ~np.eye(n.shape[0], dtype=bool) if exclude_diagonal else np.ones(n.shape, bool)
    u, v = n[keep], powered[keep]
    if kind == "pearson":
        u, v = u - u.mean(), v - v.mean()
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


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
    d=st.integers(3, 7),
    seed=st.integers(0, 2**16),
    alpha=st.sampled_from([0.5, 1.0, 1.5]),
    s=st.floats(1e-3, 1e3),
    t=st.floats(1e-3, 1e3),
    kind=st.sampled_from(["pearson", "cosine"]),
    diag=st.booleans(),
)
def test_correlation_reference_symmetry_and_scale_invariance(d, seed, alpha, s, t, kind, diag):
    n, a = psd(d, seed), psd(d, seed + 1)
    rho = nfa_correlation(n, a, alpha=alpha, kind=kind, exclude_diagonal=diag)
    # an independent float64 computation; full-rank PSD pairs with d >= 3 never give an
    # undefined value (for d = 2 the off-diagonal entries of a symmetric matrix are one number
    # twice, whose Pearson correlation is 0/0)
    assert rho == pytest.approx(reference_nfa(n, a, alpha, kind, diag), abs=1e-10)
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
    n = reference_power(a, true_alpha)
    alpha, corr = fit_alpha(n, a)
    assert alpha == pytest.approx(true_alpha, rel=2e-3)
    # the unclamped correlation at the fitted power, computed independently
    assert corr == pytest.approx(reference_nfa(n, a, alpha), abs=1e-12)
    assert reference_nfa(n, a, alpha) == pytest.approx(1.0, abs=1e-8)


def test_fit_alpha_agrees_with_nfa_correlation_at_its_optimum():
    n, a = psd(6, 10), psd(6, 11)
    for kind in ("pearson", "cosine"):
        alpha, corr = fit_alpha(n, a, kind=kind, exclude_diagonal=True, bounds=(0.1, 1.5))
        assert corr == pytest.approx(
            nfa_correlation(n, a, alpha=alpha, kind=kind, exclude_diagonal=True), abs=1e-12
        )
        # the maximum over a fine grid of the bounds, computed independently, is not higher
        grid = np.linspace(0.1, 1.5, 561)
        best = max(reference_nfa(n, a, x, kind, True) for x in grid)
        assert corr >= best - 1e-9


def test_fit_alpha_undefined_and_bad_bounds():
    alpha, corr = fit_alpha(np.eye(3), np.eye(3), exclude_diagonal=True)
    assert np.isnan(alpha) and np.isnan(corr)
    with pytest.raises(NFMInputError, match="bounds"):
        fit_alpha(np.eye(3), np.eye(3), bounds=(0.0, 1.0))
    with pytest.raises(NFMInputError, match="same shape"):
        nfa_correlation(np.eye(3), np.eye(4))
    with pytest.raises(NFMInputError, match="square"):
        nfa_correlation(np.ones((2, 3)), np.ones((2, 3)))


def test_indefinite_agop_warns_and_names_the_argument():
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(4, 4)))
    indefinite = (q * np.array([-1.0, 1.0, 2.0, 3.0])) @ q.T
    with pytest.warns(NumericalWarning, match="agop_matrix is not positive semi-definite"):
        nfa_correlation(psd(4, 0), indefinite)
    with pytest.warns(NumericalWarning, match="agop_matrix is not positive semi-definite"):
        fit_alpha(psd(4, 0), indefinite)


@pytest.mark.parametrize("centered", [False, True])
def test_real_float32_agops_do_not_warn(centered):
    """AGOPs are PSD by construction: their float32 rounding must not trigger the warning."""
    from nfm.tracking import NFATracker
    from nfm.training import make_mlp

    model = make_mlp(30, [24, 12], 5, activation="gelu", seed=3)  # float32
    generator = torch.Generator().manual_seed(4)
    # inputs in a 10-dimensional subspace: the input-layer AGOP has 20 zero eigenvalues
    x = torch.randn(600, 10, generator=generator) @ torch.randn(10, 30, generator=generator)
    # centred, the head's AGOP is exactly zero (its Jacobian is constant): what is computed is
    # rounding noise of both signs, to be judged against the uncentred AGOP's size
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        report = nfa_report(model, x, centered=centered, alphas=(0.0, 0.5, 1.0))
        NFATracker(model, x, centered=centered, alphas=(0.0, 0.5, 1.0)).record(0)
    assert [row["layer"] for row in report.rows] == ["fc1", "fc2", "out"]
    if centered:  # the projector onto the range of a zero matrix is zero
        assert np.isnan(report.rows[-1]["pearson_a0"])


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
    # the flag's claim, checked directly: the head's AGOP is W^T W
    head = model[4].weight.detach().double().numpy()
    np.testing.assert_allclose(report.agop["4"], head.T @ head, rtol=1e-5, atol=1e-7)
    assert last[correlation_column("pearson", 1.0, False)] == pytest.approx(
        reference_nfa(head.T @ head, report.agop["4"].astype(np.float64), 1.0), abs=1e-12
    )
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
