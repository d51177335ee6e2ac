"""nfm.diagnostics against hand-built cases whose answer is known, and independent references."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nfm.diagnostics import (
    Thresholds,
    agop_through_depth,
    diagnose,
    effective_rank,
    gradient_signal,
    input_statistics,
    rank_summary,
    stable_rank,
    training_dynamics,
    unit_activity,
)
from nfm.exceptions import LayerSelectionError, NFMInputError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int = 96, d: int = 6, seed: int = 0, dtype=torch.float64):
    g = _gen(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _mlp(act: type[nn.Module] = nn.Tanh, d: int = 6, h: int = 8, c: int = 3, seed: int = 0):
    torch.manual_seed(seed)  # the test's own model; pytest isolates nothing global we rely on
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(d, h))
    model.add_module("act1", act())
    model.add_module("fc2", nn.Linear(h, h))
    model.add_module("act2", act())
    model.add_module("out", nn.Linear(h, c))
    return model.double()


# ----------------------------------------------------------------------------- ranks
def test_rank_one_matrix_has_effective_and_stable_rank_one():
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    a = torch.outer(v, v)
    assert effective_rank(a) == pytest.approx(1.0, abs=1e-9)
    assert stable_rank(a) == pytest.approx(1.0, abs=1e-9)


def test_known_spectra():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert stable_rank(torch.eye(5)) == pytest.approx(5.0)
    d = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    p = np.array([0.5, 0.25, 0.25])
    assert effective_rank(d) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert stable_rank(d) == pytest.approx(2.0)
    assert math.isnan(effective_rank(torch.zeros(3, 3)))
    assert math.isnan(stable_rank(np.zeros((3, 3))))


def test_stable_rank_of_nfm_is_that_of_the_weight():
    w = torch.randn(7, 5, generator=_gen(1), dtype=torch.float64)
    reference = (torch.linalg.matrix_norm(w) / torch.linalg.matrix_norm(w, ord=2)) ** 2
    assert stable_rank(w.T @ w) == pytest.approx(float(reference), rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 6),
    d=st.integers(1, 6),
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
)
def test_rank_bounds_and_invariances(k, d, seed, scale):
    w = torch.randn(k, d, generator=_gen(seed), dtype=torch.float64)
    a = w.T @ w
    rank = int(torch.linalg.matrix_rank(a))
    er, sr = effective_rank(a), stable_rank(a)
    # exp(H(p)) >= 1/max(p) = stable rank, and both lie in [1, rank]
    assert 1 - 1e-9 <= sr <= er + 1e-9 <= rank + 1e-6
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed + 1), dtype=torch.float64))
    assert effective_rank(scale * q @ a @ q.T) == pytest.approx(er, rel=1e-6, abs=1e-6)
    assert stable_rank(scale * q @ a @ q.T) == pytest.approx(sr, rel=1e-6, abs=1e-6)


def test_rank_errors():
    with pytest.raises(NFMInputError, match="square"):
        effective_rank(torch.ones(2, 3))
    with pytest.raises(NFMInputError, match="positive semi-definite"):
        stable_rank(torch.diag(torch.tensor([1.0, -1.0])))
    with pytest.raises(NFMInputError, match="NaN"):
        rank_summary(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


# ----------------------------------------------------------------------------- signal
def _linear_chain(s: float) -> nn.Sequential:
    """x -> I x -> s I -> W3: the AGOPs at fc1 and fc2 are s^2 W3^T W3, at out W3^T W3."""
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 4, bias=False))
    model.add_module("fc2", nn.Linear(4, 4, bias=False))
    model.add_module("out", nn.Linear(4, 3, bias=False))
    model = model.double()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.eye(4, dtype=torch.float64))
        model.fc2.weight.copy_(s * torch.eye(4, dtype=torch.float64))
        model.out.weight.copy_(torch.randn(3, 4, generator=_gen(3), dtype=torch.float64))
    return model


def test_scaled_path_gives_the_known_trace_ratio_and_verdict():
    s = 1e-5
    model = _linear_chain(s)
    x, y = _data(d=4)
    rows = {r["layer"]: r for r in agop_through_depth(model, x)}
    w3 = model.out.weight.detach()
    assert rows["out"]["is_reference"]
    assert rows["out"]["agop_trace"] == pytest.approx(float((w3**2).sum()), rel=1e-10)
    assert rows["fc1"]["agop_trace_ratio"] == pytest.approx(s**2, rel=1e-8)
    assert rows["fc2"]["agop_trace_ratio"] == pytest.approx(s**2, rel=1e-8)
    d = diagnose(model, x, y)
    assert d.cause == "vanishing"
    assert d.verdict.values["first_layer"] == "fc1"
    # ratio s^2 at depth 0, reference at depth 2: a factor s per layer
    assert d.verdict.values["per_layer_factor"] == pytest.approx(s, rel=1e-6)
    assert d.verdict.values["weight_scale"] == pytest.approx(s**-0.5, rel=1e-6)
    fc1 = next(u for u in d.verdict.units if u.name == "fc1")
    assert fc1.status == "problem" and "signal to fc1 vanishes" in fc1.text
    assert "1.0e-10" in fc1.text
    out = next(u for u in d.verdict.units if u.name == "out")
    assert out.status == "ok"


def test_zeroed_path_means_no_signal():
    model = _mlp()
    with torch.no_grad():
        model.fc2.weight.zero_()
    x, y = _data()
    rows = {r["layer"]: r for r in agop_through_depth(model, x)}
    assert rows["fc1"]["agop_trace"] == 0 and rows["fc2"]["agop_trace"] == 0
    assert rows["out"]["agop_trace"] > 0
    grads = {g["layer"]: g for g in gradient_signal(model, x, y)}
    assert grads["fc1"]["loss_grad_rms"] == 0 and grads["fc1"]["weight_grad_norm"] == 0
    d = diagnose(model, x, y)
    verdicts = {u.name: u for u in d.verdict.units}
    assert "no signal reaches fc1" in verdicts["fc1"].text
    assert verdicts["fc1"].status == "problem"
    # fc2's input is the same for every sample: constant rows of tanh(bias)
    stats = input_statistics(model, x)
    assert stats["out"]["input_variation"] == pytest.approx(0.0, abs=1e-12)
    assert d.cause == "vanishing"


def test_exploding_signal():
    model = _linear_chain(1e3)
    x, y = _data(d=4)
    d = diagnose(model, x, y)
    assert d.cause == "exploding"
    assert d.verdict.values["per_layer_factor"] == pytest.approx(1e3, rel=1e-6)
    assert d.verdict.values["weight_scale"] == pytest.approx(1e3**-0.5, rel=1e-6)
    assert "scale the weights down" in d.verdict.suggestion


def test_rank_one_layer():
    model = _mlp()
    u = torch.randn(8, generator=_gen(5), dtype=torch.float64)
    v = torch.randn(8, generator=_gen(6), dtype=torch.float64)
    with torch.no_grad():
        model.fc2.weight.copy_(torch.outer(u, v))
    x, _ = _data()
    rows = {r["layer"]: r for r in agop_through_depth(model, x)}
    assert rows["fc2"]["nfm_effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert rows["fc2"]["nfm_stable_rank"] == pytest.approx(1.0, abs=1e-9)
    # J at fc2's input is (...) W2, whose rows lie along v: the AGOP has rank 1 there
    assert rows["fc2"]["agop_effective_rank"] == pytest.approx(1.0, abs=1e-6)
    assert rows["fc2"]["agop_stable_rank"] == pytest.approx(1.0, abs=1e-9)
    # (at fc1 the per-sample tanh slopes between W1 and W2 mix directions: no such rule)
    d = diagnose(model, x)
    fc2 = next(u for u in d.verdict.units if u.name == "fc2")
    assert "effective rank 1.00" in fc2.text


def test_agop_trace_matches_a_jacrev_reference():
    model = _mlp(seed=2)
    x, _ = _data(n=20)
    rows = {r["layer"]: r for r in agop_through_depth(model, x)}
    fc1, a1, fc2, a2, out = model.fc1, model.act1, model.fc2, model.act2, model.out

    def from_h1(h):  # the network above fc2's input, written out by hand
        return out(a2(fc2(h)))

    with torch.no_grad():
        h1 = a1(fc1(x))
    jac = torch.stack([torch.func.jacrev(from_h1)(h) for h in h1])  # (n, c, d)
    reference = float((jac.detach() ** 2).sum() / 20)
    assert rows["fc2"]["agop_trace"] == pytest.approx(reference, rel=1e-10)


def test_input_statistics_match_numpy():
    model = _mlp(seed=4)
    x, _ = _data(n=50)
    stats = input_statistics(model, x, chunk_size=7)
    with torch.no_grad():
        h = model.act1(model.fc1(x)).numpy()
    mean_sq = (h**2).sum(1).mean()
    var = ((h - h.mean(0)) ** 2).sum(1).mean()
    assert stats["fc2"]["input_variation"] == pytest.approx(var / mean_sq, rel=1e-10)
    assert stats["fc2"]["input_rms"] == pytest.approx(math.sqrt(mean_sq / 8), rel=1e-10)
    eig = np.clip(np.linalg.eigvalsh(np.cov(h.T, bias=True)), 0, None)
    p = eig[eig > 0] / eig.sum()
    assert stats["fc2"]["input_effective_rank"] == pytest.approx(
        math.exp(-(p * np.log(p)).sum()), rel=1e-8
    )


# ----------------------------------------------------------------------------- units
def test_dead_relus_from_a_bias_of_minus_100():
    model = _mlp(nn.ReLU)
    with torch.no_grad():
        model.fc1.bias[:4] = -100.0  # half the units of act1 never fire on inputs in [0, 1]
    x, y = _data()
    rows = {r["module"]: r for r in unit_activity(model, x)}
    assert rows["act1"]["dead_fraction"] >= 0.5
    with torch.no_grad():
        z = model.fc1(x)
    assert rows["act1"]["dead_fraction"] == pytest.approx(float((z <= 0).all(0).double().mean()))
    with torch.no_grad():
        model.fc1.bias[:] = -100.0
    d = diagnose(model, x, y)
    assert d.cause == "dead_units"
    act1 = next(u for u in d.verdict.units if u.name == "act1")
    assert act1.status == "problem" and "100% of the 8 ReLU units of act1 are dead" in act1.text
    assert not next(r for r in d.units if r["module"] == "act1")["saturating"]


def test_leaky_relu_is_never_dead():
    model = _mlp(nn.LeakyReLU)
    with torch.no_grad():
        model.fc1.bias[:] = -100.0
    x, _ = _data()
    rows = {r["module"]: r for r in unit_activity(model, x)}
    assert rows["act1"]["dead_fraction"] == 0.0


def test_saturated_tanh_and_sigmoid():
    for act in (nn.Tanh, nn.Sigmoid):
        model = _mlp(act)
        with torch.no_grad():
            model.fc1.bias[:2] = 100.0
            model.fc1.bias[2:4] = -100.0
        x, y = _data()
        rows = {r["module"]: r for r in unit_activity(model, x)}
        with torch.no_grad():
            a = act()(model.fc1(x))
        slope = 1 - a**2 if act is nn.Tanh else 4 * a * (1 - a)  # relative to the largest slope
        reference = float(((slope < 0.01).double().mean(0) >= 0.99).double().mean())
        assert rows["act1"]["saturated_fraction"] == pytest.approx(reference)
        assert rows["act1"]["saturated_fraction"] >= 0.5
        assert rows["act1"]["saturating"]
        with torch.no_grad():
            model.fc1.bias[:] = 100.0
        d = diagnose(model, x, y)
        assert d.cause == "saturated_units"


def test_units_errors():
    model = _mlp()
    x, _ = _data()
    with pytest.raises(LayerSelectionError, match="not one of the elementwise"):
        unit_activity(model, x, modules=["fc1"])
    with pytest.raises(LayerSelectionError, match="no module named"):
        unit_activity(model, x, modules=["nope"])
    with pytest.raises(NFMInputError, match="flat_tolerance"):
        unit_activity(model, x, flat_tolerance=2.0)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(x)).flatten(1)

    conv = Conv().double()
    images = torch.rand(4, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(NFMInputError, match="unit_axis"):
        unit_activity(conv, images, modules=["act"])
    assert unit_activity(conv, images)[0]["skipped"]
    row = unit_activity(conv, images, unit_axis=1)[0]
    assert row["units"] == 2 and row["samples"] == 4 * 3 * 3


# ----------------------------------------------------------------------------- gradients
def test_gradient_signal_matches_per_sample_autograd():
    model = _mlp(seed=7)
    x, y = _data(n=30)
    rows = {r["layer"]: r for r in gradient_signal(model, x, y, chunk_size=8)}
    squares = 0.0
    for i in range(30):
        h = model.act1(model.fc1(x[i : i + 1])).detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model.out(model.act2(model.fc2(h))), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, h)
        squares += float((g**2).sum())
    assert rows["fc2"]["loss_grad_rms"] == pytest.approx(math.sqrt(squares / 30), rel=1e-10)
    reference = copy.deepcopy(model)
    nn.functional.cross_entropy(reference(x), y).backward()
    assert rows["fc1"]["weight_grad_norm"] == pytest.approx(
        float(reference.fc1.weight.grad.norm()), rel=1e-10
    )
    assert rows["out"]["loss_grad_ratio"] == 1.0


# ----------------------------------------------------------------------------- dynamics
def test_frozen_layer_does_not_move_and_steps_are_reproducible():
    model = _mlp(seed=8)
    model.fc1.weight.requires_grad_(False)
    x, y = _data(n=64)
    a = training_dynamics(model, x, y, steps=5, batch_size=16, seed=3)
    b = training_dynamics(model, x, y, steps=5, batch_size=16, seed=3)
    assert a.steps == 5 and len(a.losses) == 5 and a.losses == b.losses
    assert a.nfm_total_change["fc1"] == 0.0 and all(c == 0 for c in a.nfm_step_change["fc1"])
    assert a.nfm_total_change["fc2"] > 0
    assert "out" in a.by_construction


def test_divergence_is_caught():
    model = _linear_chain(1.0)  # squared loss of a product of three matrices: blows up
    x, y = _data(n=64, d=4)
    d = diagnose(
        model,
        x,
        y,
        loss="mse",
        steps=60,
        optimizer_factory=lambda p: torch.optim.SGD(p, lr=1e3),
    )
    assert d.cause in ("diverges", "non_finite")
    assert d.dynamics is not None and d.dynamics.diverged_at is not None


def test_healthy_network_is_called_healthy():
    x, y = _data(n=200, seed=11)
    model = _mlp(nn.Tanh, seed=11)
    d = diagnose(model, x, y, steps=20, batch_size=32)
    assert d.cause == "healthy", str(d)
    assert all(u.status == "ok" for u in d.verdict.units)


# ----------------------------------------------------------------------------- the model
def _snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def _assert_unchanged(model, snapshot):
    state, modes, flags = snapshot
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_model_comes_back_unchanged():
    model = _mlp(nn.ReLU, seed=12)
    model.add_module("drop", nn.Dropout(0.2))
    model.train()
    model.act2.eval()
    model.fc1.bias.requires_grad_(False)
    x, y = _data(n=64)
    snapshot = _snapshot(model)
    d = diagnose(model, x, y, steps=4, batch_size=16)
    assert d.dynamics is not None and d.dynamics.steps == 4
    _assert_unchanged(model, snapshot)


def test_model_unchanged_when_an_error_is_raised():
    model = _mlp(seed=13)
    x, _ = _data(n=32)
    snapshot = _snapshot(model)
    with pytest.raises(NFMInputError, match="label 7"):
        diagnose(model, x, torch.full((32,), 7))
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data": [[0.0] * 6] * 4}, "tensor or numpy array"),
        ({"data": torch.rand(5)}, "n_samples"),
        ({"data": torch.tensor([[float("nan")] * 6])}, "NaN"),
        ({"data": torch.ones(4, 6, dtype=torch.int64)}, "floating"),
        ({"targets": torch.zeros(3, dtype=torch.int64)}, "one entry per sample"),
        ({"targets": torch.full((96,), 0.5)}, "integer class labels"),
        ({"targets": None, "steps": 3}, "needs targets"),
        ({"steps": -1}, "steps"),
        ({"probe_size": 0}, "probe_size"),
        ({"loss": "hinge"}, "loss must be"),
        ({"reference": "fc9"}, "reference must be one of"),
        ({"thresholds": {"vanishing": 1}}, "Thresholds"),
        ({"steps": 2, "optimizer_factory": lambda p: None}, "torch.optim.Optimizer"),
        ({"model": "not a model"}, "torch.nn.Module"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, match):
    x, y = _data()
    args = {"model": _mlp(), "data": x, "targets": y, **kwargs}
    with pytest.raises(NFMInputError, match=match):
        diagnose(args.pop("model"), args.pop("data"), args.pop("targets"), **args)


def test_thresholds_change_the_verdict():
    model = _linear_chain(1e-1)  # trace ratio 1e-2 at fc1
    x, y = _data(d=4)
    assert diagnose(model, x, y).cause == "healthy"
    assert diagnose(model, x, y, thresholds=Thresholds(vanishing=0.1, weak=0.5)).cause == (
        "vanishing"
    )


def test_to_dict_is_json():
    import json

    model = _mlp()
    x, y = _data()
    payload = diagnose(model, x, y, steps=2).to_dict()
    text = json.dumps(payload, allow_nan=False)
    assert '"cause"' in text and payload["verdicts"][0]["name"] == "fc1"
