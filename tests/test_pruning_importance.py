"""Importance scores of nfm.pruning against hand-built models and a float64 jacrev reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import jacrev
from torch.nn import functional as F

import nfm
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.pruning import (
    diagonal_importance,
    eigen_energy_importance,
    input_second_moments,
    unit_importance,
    weight_importance,
)


def tanh_mlp(seed: int = 0) -> nn.Sequential:
    return nfm.make_mlp(6, [5, 4], 3, activation="tanh", seed=seed).double()


def data(n: int = 40, d: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_layer_agop(model: nn.Sequential, x: torch.Tensor, layer: str) -> torch.Tensor:
    """AGOP of the input of fc1 / fc2 / out, written from the definition with torch.func.jacrev.

    The model is split by hand into head(x) -> h (the layer's input) and tail(h) -> f, with the
    weights as plain tensors; J_i = d tail / d h at h_i, AGOP = mean_i J_i^T J_i.
    """
    w = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def fc(name: str, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, w[f"{name}.weight"], w[f"{name}.bias"])

    stages = [
        lambda h: torch.tanh(fc("fc1", h)),
        lambda h: torch.tanh(fc("fc2", h)),
        lambda h: fc("out", h),
    ]
    start = {"fc1": 0, "fc2": 1, "out": 2}[layer]

    def head(v: torch.Tensor) -> torch.Tensor:
        for stage in stages[:start]:
            v = stage(v)
        return v

    def tail(v: torch.Tensor) -> torch.Tensor:
        for stage in stages[start:]:
            v = stage(v)
        return v

    total = 0
    for xi in x:
        J = jacrev(tail)(head(xi))  # (c, d_l)
        total = total + J.T @ J
    return total / x.shape[0]


@pytest.mark.parametrize("layer", ["fc1", "fc2", "out"])
def test_agop_diag_matches_jacrev_reference(layer):
    model, x = tanh_mlp(), data()
    scores = unit_importance(model, x, layers=[layer], method="agop_diag")[layer]
    ref = torch.diagonal(reference_layer_agop(model, x, layer))
    torch.testing.assert_close(scores, ref, rtol=1e-10, atol=1e-14)


def test_agop_eig_matches_numpy_eigendecomposition_of_the_reference():
    model, x = tanh_mlp(), data()
    G = reference_layer_agop(model, x, "fc2").numpy()
    lam, U = np.linalg.eigh(G)
    r = 2
    expected = (U[:, -r:] ** 2) @ np.clip(lam[-r:], 0, None)
    scores = unit_importance(model, x, layers=["fc2"], method="agop_eig", rank=r)["fc2"]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-8, atol=1e-14)


def test_agop_activation_is_agop_diagonal_times_mean_square_of_the_unit():
    model, x = tanh_mlp(), data()
    with torch.no_grad():
        h = torch.tanh(model.fc1(x))  # the input of fc2, by hand
    m2 = (h**2).mean(dim=0)
    torch.testing.assert_close(
        input_second_moments(model, x, layers=["fc2"])["fc2"], m2, rtol=1e-12, atol=0
    )
    expected = torch.diagonal(reference_layer_agop(model, x, "fc2")) * m2
    scores = unit_importance(model, x, layers=["fc2"], method="agop_activation")["fc2"]
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-15)
    w = weight_importance(model, x, layers=["fc2"], method="agop_activation")["fc2"]
    torch.testing.assert_close(w, model.fc2.weight.detach().abs() * expected.sqrt()[None, :])


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 20.0), st.integers(0, 4))
def test_agop_activation_is_invariant_to_rescaling_a_relu_unit(c, unit):
    """Incoming weights times c, outgoing weights over c: same function, same score."""
    model = nfm.make_mlp(6, [5, 4], 3, seed=2).double()
    x = data()
    scaled = nfm.make_mlp(6, [5, 4], 3, seed=2).double()
    with torch.no_grad():
        scaled.fc1.weight[unit] *= c
        scaled.fc1.bias[unit] *= c
        scaled.fc2.weight[:, unit] /= c
        torch.testing.assert_close(scaled(x), model(x), rtol=1e-10, atol=1e-12)
    a = unit_importance(model, x, layers=["fc2"], method="agop_activation")["fc2"]
    b = unit_importance(scaled, x, layers=["fc2"], method="agop_activation")["fc2"]
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    if abs(c - 1) > 0.01:  # the plain diagonal is not invariant
        d0 = unit_importance(model, x, layers=["fc2"], method="agop_diag")["fc2"][unit]
        d1 = unit_importance(scaled, x, layers=["fc2"], method="agop_diag")["fc2"][unit]
        torch.testing.assert_close(d1, d0 / c**2, rtol=1e-9, atol=1e-15)


def test_input_second_moments_leaves_the_model_as_it_was():
    model, x = tanh_mlp(), data()
    model.train()
    moments = input_second_moments(model, x.numpy(), layers=["fc1", "out"], chunk_size=7)
    torch.testing.assert_close(moments["fc1"], (x**2).mean(dim=0))
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(NFMInputError, match="needs data"):
        unit_importance(
            model, layers=["fc2"], method="agop_activation", agops={"fc2": torch.eye(5)}
        )
    with pytest.raises(NFMInputError, match=r"moments\['fc2'\] must have shape \(5,\)"):
        unit_importance(
            model, x, layers=["fc2"], method="agop_activation", moments={"fc2": torch.ones(4)}
        )


@st.composite
def psd_matrices(draw):
    d = draw(st.integers(1, 7))
    k = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**31 - 1))
    B = np.random.default_rng(seed).standard_normal((d, k))
    return B @ B.T


@settings(max_examples=60, deadline=None)
@given(psd_matrices(), st.data())
def test_eigen_energy_properties(A, draw):
    d = A.shape[0]
    r = draw.draw(st.integers(1, d))
    s = eigen_energy_importance(A, r).numpy()
    lam = np.sort(np.linalg.eigvalsh(A))[::-1]
    scale = max(float(np.abs(A).max()), 1e-300)
    # the scores sum to the top-r eigenvalues, are non-negative, grow with r, end at the diagonal
    assert abs(s.sum() - np.clip(lam[:r], 0, None).sum()) <= 1e-9 * scale * d
    assert (s >= -1e-12 * scale).all()
    if r < d:
        assert (eigen_energy_importance(A, r + 1).numpy() >= s - 1e-9 * scale).all()
    np.testing.assert_allclose(
        eigen_energy_importance(A, d).numpy(), np.diag(A), atol=1e-9 * scale * d
    )
    np.testing.assert_allclose(diagonal_importance(A).numpy(), np.diag(A))


def test_unit_with_zero_outgoing_weight_is_least_important():
    model, x = tanh_mlp(), data()
    with torch.no_grad():
        model.fc2.weight[:, 2] = 0.0  # fc2 reads nothing of hidden unit 2 of fc1
    methods = (("agop_diag", {}), ("agop_eig", {"rank": 3}), ("agop_activation", {}), ("nfm", {}))
    for method, extra in methods:
        s = unit_importance(model, x, layers=["fc2"], method=method, **extra)["fc2"]
        # exactly 0 for the diagonals; the eigen-energy is 0 up to the rounding of eigh
        assert s[2] <= 1e-12 * float(s.max()), method
        assert (np.delete(s.numpy(), 2) > 1e-6 * float(s.max())).all(), method
        assert int(s.argmin()) == 2, method


def test_unit_with_zero_incoming_weight_has_zero_magnitude():
    model = tanh_mlp()
    with torch.no_grad():
        model.fc1.weight[1] = 0.0
    s = unit_importance(model, layers=["fc2"], method="magnitude", producers={"fc2": "fc1"})
    torch.testing.assert_close(s["fc2"], model.fc1.weight.detach().abs().sum(dim=1))
    assert s["fc2"].argmin() == 1 and s["fc2"][1] == 0.0


def test_ignored_input_feature_has_zero_agop_diagonal():
    model, x = tanh_mlp(), data()
    with torch.no_grad():
        model.fc1.weight[:, 3] = 0.0  # the model ignores input feature 3
    s = unit_importance(model, x, layers=["fc1"], method="agop_diag")["fc1"]
    assert s[3] == 0.0
    assert (np.delete(s.numpy(), 3) > 0).all()
    g = nfm.compute_agop(model, x, layers=[])["input"]  # the input AGOP is the same matrix
    torch.testing.assert_close(s, torch.diagonal(g), rtol=1e-12, atol=0)


def test_nfm_scores_are_column_norms():
    model = tanh_mlp()
    s = unit_importance(model, layers=["fc2", "out"], method="nfm")
    for name in ("fc2", "out"):
        w = getattr(model, name).weight.detach()
        torch.testing.assert_close(s[name], (w**2).sum(dim=0))
        torch.testing.assert_close(s[name], torch.diagonal(nfm.compute_nfm(model, [name])[name]))


def test_weight_scores_formulas():
    model, x = tanh_mlp(), data()
    w = model.fc2.weight.detach()
    mag = weight_importance(model, layers=["fc2"], method="magnitude")["fc2"]
    torch.testing.assert_close(mag, w.abs())
    a = torch.diagonal(reference_layer_agop(model, x, "fc2"))
    agop = weight_importance(model, x, layers=["fc2"], method="agop_diag")["fc2"]
    torch.testing.assert_close(agop, w.abs() * a.sqrt()[None, :], rtol=1e-9, atol=1e-14)
    nfm_scores = weight_importance(model, layers=["fc2"], method="nfm")["fc2"]
    torch.testing.assert_close(nfm_scores, w.abs() * w.norm(dim=0)[None, :])
    assert mag.shape == agop.shape == nfm_scores.shape == (4, 5)


def test_random_scores_depend_on_seed_and_name_only():
    model = tanh_mlp()
    one = unit_importance(model, layers=["fc2"], method="random", seed=3)["fc2"]
    both = unit_importance(model, layers=["fc2", "out"], method="random", seed=3)
    torch.testing.assert_close(one, both["fc2"])
    other = unit_importance(model, layers=["fc2"], method="random", seed=4)["fc2"]
    assert not torch.equal(one, other)
    w = weight_importance(model, layers=["fc1"], method="random", seed=3)["fc1"]
    assert w.shape == (5, 6) and ((w >= 0) & (w < 1)).all()


def test_precomputed_agops_are_reused_and_checked():
    model, x = tanh_mlp(), data()
    agops = nfm.compute_agop(model, x, layers=["fc2", "out"], include_input=False)
    direct = unit_importance(model, x, layers=["fc2"], method="agop_diag")["fc2"]
    reused = unit_importance(model, layers=["fc2"], method="agop_diag", agops=agops)["fc2"]
    torch.testing.assert_close(direct, reused)
    with pytest.raises(NFMInputError, match="no entry for layer 'fc1'"):
        unit_importance(model, layers=["fc1"], method="agop_diag", agops=agops)
    with pytest.raises(NFMInputError, match=r"in_features=5"):
        unit_importance(model, layers=["fc2"], agops={"fc2": torch.eye(4)})


def test_scores_leave_the_model_unchanged():
    model, x = tanh_mlp(), data()
    model.train()
    model.act1.eval()
    model.fc1.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("agop_diag", "agop_eig", "agop_activation", "nfm", "random"):
        unit_importance(model, x, layers=["fc2", "out"], method=method, rank=2)
        weight_importance(model, x, layers=["fc1"], method=method, rank=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and model.fc1.training and not model.act1.training
    assert not model.fc1.bias.requires_grad and model.fc1.weight.requires_grad
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_bad_input_is_refused_clearly():
    model, x = tanh_mlp(), data()
    with pytest.raises(NFMInputError, match="method must be one of"):
        unit_importance(model, x, layers=["fc2"], method="taylor")
    with pytest.raises(LayerSelectionError, match="fc9"):
        unit_importance(model, x, layers=["fc9"])
    with pytest.raises(LayerSelectionError, match=r"act1.*Tanh.*nn.Linear"):
        unit_importance(model, x, layers=["act1"])
    with pytest.raises(NFMInputError, match="data is required"):
        unit_importance(model, layers=["fc2"], method="agop_diag")
    with pytest.raises(NFMInputError, match="needs rank"):
        unit_importance(model, x, layers=["fc2"], method="agop_eig")
    with pytest.raises(NFMInputError, match=r"rank must be an integer in 1\.\.5"):
        unit_importance(model, x, layers=["fc2"], method="agop_eig", rank=6)
    with pytest.raises(NFMInputError, match="producers"):
        unit_importance(model, layers=["fc2"], method="magnitude")
    with pytest.raises(NFMInputError, match="out_features=4"):
        unit_importance(model, layers=["fc2"], method="magnitude", producers={"fc2": "fc2"})
    with pytest.raises(NFMInputError, match="seed must be an integer"):
        unit_importance(model, layers=["fc2"], method="random", seed=True)
    with pytest.raises(NFMInputError, match="square matrix"):
        eigen_energy_importance(np.ones((2, 3)), 1)
