"""Tests of nfm.features: the batched AGOP engine against two float64 references (a per-sample
hook loop, and per-sample ``jacrev`` Jacobians of hand-split models that share none of the
engine's conventions), its invariants, the shared sums of identical Jacobians, the partial sums,
model hygiene and the errors on bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_agop import input_split, reference_agop, split_reference_agop
from torch import nn
from torch.nn import functional as F

import nfm.features.jacobians as engine
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features import AGOPAccumulator, accumulate_agop, compute_agop, compute_nfm
from nfm.features.accumulator import PartialSums
from nfm.features.agop import run_agop_pass
from nfm.models.selection import INPUT_KEY

# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def mlp(widths, activation=nn.ReLU, bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    def __init__(self, d=5, hidden=6, c=3):
        super().__init__()
        self.inp = nn.Linear(d, hidden)
        self.block = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, c)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.relu(self.block(h))  # residual block
        return self.out(h)


class TwoHeads(nn.Module):
    """Multi-output model: two heads on a shared trunk, outputs concatenated."""

    def __init__(self, d=4):
        super().__init__()
        self.trunk = nn.Linear(d, 6)
        self.head_a = nn.Linear(6, 2)
        self.head_b = nn.Linear(6, 3)

    def forward(self, x):
        h = nn.functional.gelu(self.trunk(x))
        return torch.cat([self.head_a(h), self.head_b(h) ** 2], dim=1)


class FancyForward(nn.Module):
    """A forward that does more than chain layers: input skip, products, normalisation."""

    def __init__(self, d=4):
        super().__init__()
        self.a = nn.Linear(d, 5)
        self.b = nn.Linear(d, 5, bias=False)
        self.mix = nn.Linear(5, 5)
        self.head = nn.Linear(5 + d, 2)

    def forward(self, x):
        u = torch.sin(self.a(x)) * self.b(2.0 * x)
        u = u / (1.0 + u.pow(2).sum(dim=1, keepdim=True)).sqrt()
        v = self.mix(u)
        return self.head(torch.cat([v, x.pow(2)], dim=1)).squeeze(-1)


class TokenModel(nn.Module):
    """(batch, tokens * d) input reshaped to tokens: linear layers see (batch, T, d)."""

    def __init__(self, tokens=3, d=4):
        super().__init__()
        self.tokens, self.d = tokens, d
        self.proj = nn.Linear(d, 5)
        self.mixer = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        h = x.reshape(x.shape[0], self.tokens, self.d)
        h = torch.tanh(self.proj(h))
        h = torch.softmax(self.mixer(h), dim=1) * h  # tokens interact, samples do not
        return self.out(h.mean(dim=1))


class SequenceFirst(nn.Module):
    """Layers see (tokens, batch, d), as nn.MultiheadAttention without batch_first does."""

    def __init__(self, tokens=2, d=3):
        super().__init__()
        self.tokens, self.d = tokens, d
        self.proj = nn.Linear(d, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = x.reshape(x.shape[0], self.tokens, self.d).transpose(0, 1)
        h = torch.tanh(self.proj(h)).sum(dim=0)
        return self.out(h)


def data(n, d, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]


MODELS = {
    "relu-depth2": lambda: (mlp([5, 7, 3]), 5),
    "tanh-depth3": lambda: (mlp([5, 7, 6, 3], nn.Tanh), 5),
    "gelu-depth4-nobias": lambda: (mlp([4, 6, 6, 5, 2], nn.GELU, bias=False), 4),
    "relu-depth1-scalar-output": lambda: (mlp([6, 1]), 6),
    "residual": lambda: (ResidualMLP(), 5),
    "two-heads": lambda: (TwoHeads(), 4),
    "fancy-forward": lambda: (FancyForward(), 4),
    "tokens": lambda: (TokenModel(), 12),
    "sequence-first": lambda: (SequenceFirst(), 6),
}


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


# ---------------------------------------------------------------------------------------------
# Against the per-sample reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("centered", [False, True])
def test_matches_per_sample_reference(name, centered):
    model, d = MODELS[name]()
    x = data(13, d)
    names = linear_names(model)
    got = compute_agop(model, x, dtype=torch.float64, centered=centered, chunk_size=5)
    want = reference_agop(model, x, names, centered=centered)
    # The centred AGOP is E[J^T J] - Jbar^T Jbar: its rounding error scales with E[J^T J]
    # (exactly zero centred AGOPs, e.g. at a layer with a constant Jacobian, come out ~1e-18).
    scale = reference_agop(model, x, names) if centered else want
    assert list(got) == [INPUT_KEY, *names]
    for key in want:
        error = float((got[key] - want[key]).norm())
        assert error <= 1e-10 * float(want[key].norm() + 1e-4 * scale[key].norm()), key


# ---------------------------------------------------------------------------------------------
# Against the independent reference: hand-split models, per-sample jacrev, no hooks
# ---------------------------------------------------------------------------------------------

_ACTIVATIONS = {nn.Tanh: torch.tanh, nn.ReLU: torch.relu, nn.GELU: F.gelu}


def lin(layer, h):
    return F.linear(h, layer.weight, layer.bias)


def split_sequential(model):
    """Hand split of an nn.Sequential of Linear layers and activations, one sample at a time."""
    mods = list(model)

    def run(h, start, stop):
        for m in mods[start:stop]:
            h = lin(m, h) if isinstance(m, nn.Linear) else _ACTIVATIONS[type(m)](h)
        return h

    splits = {INPUT_KEY: input_split(lambda v: run(v, 0, len(mods)))}
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            splits[str(i)] = (
                lambda xi, i=i: run(xi, 0, i),
                lambda xi, h, i=i: run(h, i, len(mods)),
            )
    return splits


def split_residual(m):
    def h1(xi):
        return torch.tanh(lin(m.inp, xi))

    def block_out(xi):
        return h1(xi) + torch.relu(lin(m.block, h1(xi)))

    def full(xi):
        return lin(m.out, block_out(xi))

    return {
        INPUT_KEY: input_split(full),
        "inp": (lambda xi: xi, lambda xi, h: full(h)),
        # the skip path keeps the block's actual input: only the layer's own input moves
        "block": (h1, lambda xi, h: lin(m.out, h1(xi) + torch.relu(lin(m.block, h)))),
        "out": (block_out, lambda xi, h: lin(m.out, h)),
    }


def split_two_heads(m):
    def trunk(xi):
        return F.gelu(lin(m.trunk, xi))

    def full(xi):
        return torch.cat([lin(m.head_a, trunk(xi)), lin(m.head_b, trunk(xi)) ** 2])

    return {
        INPUT_KEY: input_split(full),
        "trunk": (lambda xi: xi, lambda xi, h: full(h)),
        "head_a": (
            trunk,
            lambda xi, h: torch.cat([lin(m.head_a, h), lin(m.head_b, trunk(xi)) ** 2]),
        ),
        "head_b": (
            trunk,
            lambda xi, h: torch.cat([lin(m.head_a, trunk(xi)), lin(m.head_b, h) ** 2]),
        ),
    }


class TokenMixer(nn.Module):
    """Takes (batch, T, d) tokens; its layers see (batch, T, features); tokens interact."""

    def __init__(self, d=4, e=5, c=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Linear(d, e)
        self.mixer = nn.Linear(e, e)
        self.out = nn.Linear(e, c)

    def forward(self, x):
        h = torch.tanh(self.proj(x))
        h = torch.softmax(self.mixer(h), dim=1) * h
        return self.out(h.mean(dim=1))


def split_token_mixer(m):
    """One sample is (T, d): softmax over its tokens (axis 0)."""

    def g(xi):
        return torch.tanh(lin(m.proj, xi))

    def pooled(xi, h_mixer):
        return (torch.softmax(lin(m.mixer, h_mixer), dim=0) * g(xi)).mean(dim=0)

    return {
        INPUT_KEY: input_split(lambda v: lin(m.out, pooled(v, g(v)))),
        "proj": (lambda xi: xi, lambda xi, h: lin(m.out, pooled(h, g(h)))),
        "mixer": (g, lambda xi, h: lin(m.out, pooled(xi, h))),
        "out": (lambda xi: pooled(xi, g(xi)), lambda xi, h: lin(m.out, h)),
    }


def _split_case(name):
    """(model, data, hand split) for the independent reference."""
    if name == "tanh-depth3":
        return mlp([5, 7, 6, 3], nn.Tanh), data(9, 5), split_sequential
    if name == "gelu-depth4-nobias":
        return mlp([4, 6, 6, 5, 3], nn.GELU, bias=False), data(9, 4), split_sequential
    if name == "relu-scalar-output":
        return mlp([6, 4, 1]), data(9, 6), split_sequential
    if name == "residual":
        return ResidualMLP(), data(9, 5), split_residual
    if name == "two-heads":
        return TwoHeads(), data(9, 4), split_two_heads
    if name == "tokens":
        g = torch.Generator().manual_seed(3)
        return (
            TokenMixer(),
            torch.randn(7, 3, 4, generator=g, dtype=torch.float64),
            split_token_mixer,
        )
    raise KeyError(name)


SPLIT_CASES = [
    "tanh-depth3",
    "gelu-depth4-nobias",
    "relu-scalar-output",
    "residual",
    "two-heads",
    "tokens",
]


def assert_matches_reference(got, want, uncentred_want=None, rtol=1e-10):
    """||got - want|| <= rtol ||want||; for a centred AGOP the guarantee of S/m - Jbar^T Jbar is
    relative to the uncentred AGOP (it is exactly 0 at a layer with a constant Jacobian)."""
    assert set(got) == set(want)
    for key in want:
        scale = (want if uncentred_want is None else uncentred_want)[key].norm()
        error = (torch.as_tensor(got[key], dtype=torch.float64) - want[key]).norm()
        assert float(error) <= rtol * float(scale), (key, float(error), float(scale))


@pytest.mark.parametrize("name", SPLIT_CASES)
@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centred"])
def test_matches_independent_split_reference(name, centered):
    model, x, split = _split_case(name)
    model = model.double()
    splits = split(model)
    got = compute_agop(
        model, x, layers=[k for k in splits if k != INPUT_KEY], centered=centered, chunk_size=4
    )
    want = split_reference_agop(splits, x, centered=centered)
    uncentred = split_reference_agop(splits, x) if centered else None
    assert list(got) == list(splits)
    assert_matches_reference(got, want, uncentred)


@pytest.mark.parametrize("name", ["tanh-depth3", "tokens", "two-heads"])
@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centred"])
@pytest.mark.parametrize("which", ["one", "subset", "projection"])
def test_output_selection_matches_independent_reference(name, centered, which):
    model, x, split = _split_case(name)
    model = model.double()
    splits = split(model)
    c = 5 if name == "two-heads" else 3
    g = torch.Generator().manual_seed(11)
    outputs = {
        "one": 1,
        "subset": [c - 1, 0],
        "projection": torch.randn(2, c, generator=g, dtype=torch.float64),
    }[which]
    projection = outputs if which == "projection" else torch.eye(c, dtype=torch.float64)[outputs]
    if which == "one":
        projection = projection[None]
    layers = [k for k in splits if k != INPUT_KEY]
    got = compute_agop(model, x, layers=layers, outputs=outputs, centered=centered)
    want = split_reference_agop(splits, x, projection=projection, centered=centered)
    uncentred = split_reference_agop(splits, x, projection=projection) if centered else None
    assert_matches_reference(got, want, uncentred)


@settings(max_examples=12, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
    activation=st.sampled_from([nn.Tanh, nn.GELU, nn.ReLU]),
    n=st.integers(1, 7),
    chunk=st.integers(1, 7),
    centered=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_mlps_match_independent_reference(widths, activation, n, chunk, centered, seed):
    model = mlp(widths, activation, seed=seed).double()
    x = data(n, widths[0], seed=seed)
    splits = split_sequential(model)
    got = compute_agop(model, x, centered=centered, chunk_size=chunk)
    want = split_reference_agop(splits, x, centered=centered)
    uncentred = split_reference_agop(splits, x) if centered else None
    assert_matches_reference(got, want, uncentred)


@pytest.mark.parametrize(
    "outputs",
    [1, [0, 2], np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])],
    ids=["one-class", "subset", "projection"],
)
def test_output_selection_matches_reference(outputs):
    model = mlp([5, 6, 3], nn.Tanh)
    x = data(11, 5)
    if isinstance(outputs, int):
        projection = torch.eye(3)[[outputs]]
    elif isinstance(outputs, list):
        projection = torch.eye(3)[outputs]
    else:
        projection = torch.as_tensor(outputs)
    got = compute_agop(model, x, outputs=outputs, dtype=torch.float64)
    want = reference_agop(model, x, ["0", "2"], projection=projection)
    for key in want:
        assert rel_err(got[key], want[key]) <= 1e-10


def test_loop_over_outputs_and_output_blocks_agree_with_vectorized():
    model = TwoHeads()
    x = data(9, 4)
    fast = compute_agop(model, x, dtype=torch.float64)
    loop = compute_agop(model, x, dtype=torch.float64, vectorize=False)
    blocks = compute_agop(model, x, dtype=torch.float64, output_chunk_size=2)
    for key in fast:
        assert rel_err(loop[key], fast[key]) <= 1e-12
        assert rel_err(blocks[key], fast[key]) <= 1e-12


def test_float32_model_close_to_float64_reference():
    model = mlp([5, 8, 3], nn.GELU).float()
    x = data(20, 5, dtype=torch.float32)
    got = compute_agop(model, x)
    assert got["0"].dtype == torch.float32
    want = reference_agop(model, x, ["0", "2"])
    for key in want:
        assert rel_err(got[key], want[key]) <= 1e-5


def test_wide_layer_uses_blocked_symmetric_update():
    # d >= 512 switches to the blocked rank-k update; compare with a direct sum.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(520, 3)).double()
    x = data(6, 520)
    got = compute_agop(model, x)
    w = model[0].weight.detach()
    assert rel_err(got["0"], w.T @ w) <= 1e-12
    assert torch.equal(got["0"], got["0"].T)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

_models = st.sampled_from(["relu-depth2", "tanh-depth3", "residual", "two-heads"])


@settings(max_examples=10, deadline=None)
@given(name=_models, n=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_symmetric_psd(name, n, seed):
    model, d = MODELS[name]()
    result = compute_agop(model, data(n, d, seed=seed), dtype=torch.float64)
    for matrix in result.values():
        assert torch.equal(matrix, matrix.T)
        eigvals = torch.linalg.eigvalsh(matrix)
        assert float(eigvals.min()) >= -1e-12 * max(1.0, float(eigvals.abs().max()))


@settings(max_examples=10, deadline=None)
@given(c=st.integers(1, 4), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_linear_model_gives_a_transpose_a(c, d, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, c)).double()
    result = compute_agop(model, data(4, d, seed=seed))
    a = model[0].weight.detach()
    assert rel_err(result[INPUT_KEY], a.T @ a) <= 1e-12
    assert rel_err(result["0"], a.T @ a) <= 1e-12


@settings(max_examples=10, deadline=None)
@given(name=_models, seed=st.integers(0, 2**16))
def test_last_layer_gives_its_nfm(name, seed):
    model, d = MODELS[name]()
    if name == "two-heads":  # its output is not one layer's output
        return
    last = linear_names(model)[-1]
    result = compute_agop(model, data(5, d, seed=seed), dtype=torch.float64)
    nfm = compute_nfm(model, dtype=torch.float64)
    assert rel_err(result[last], nfm[last]) <= 1e-12


@settings(max_examples=8, deadline=None)
@given(name=_models, n=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_trace_is_mean_squared_jacobian_norm(name, n, seed):
    model, d = MODELS[name]()
    model = model.double().eval()
    x = data(n, d, seed=seed)
    result = compute_agop(model, x)
    norms = [
        float(
            torch.autograd.functional.jacobian(lambda v: model(v[None]).reshape(-1), xi)
            .pow(2)
            .sum()
        )
        for xi in x
    ]
    assert float(torch.trace(result[INPUT_KEY])) == pytest.approx(np.mean(norms), rel=1e-10)


@settings(max_examples=8, deadline=None)
@given(name=_models, n=st.integers(2, 12), seed=st.integers(0, 2**16), chunk=st.integers(1, 12))
def test_invariant_to_sample_order_and_chunk_size(name, n, seed, chunk):
    model, d = MODELS[name]()
    x = data(n, d, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    base = compute_agop(model, x, dtype=torch.float64, chunk_size=n)
    other = compute_agop(model, x[perm], dtype=torch.float64, chunk_size=chunk)
    for key in base:
        assert torch.allclose(base[key], other[key], rtol=1e-10, atol=1e-14)


class Scaled(nn.Module):
    def __init__(self, inner, a):
        super().__init__()
        self.inner, self.a = inner, a

    def forward(self, x):
        return self.a * self.inner(x)


@settings(max_examples=8, deadline=None)
@given(name=_models, a=st.floats(-5, 5).filter(lambda v: abs(v) > 1e-3), seed=st.integers(0, 99))
def test_scaling_output_scales_agop_by_square(name, a, seed):
    model, d = MODELS[name]()
    x = data(6, d, seed=seed)
    base = compute_agop(model, x, dtype=torch.float64)
    scaled = compute_agop(Scaled(model, a), x, dtype=torch.float64)
    assert list(scaled) == [INPUT_KEY] + ["inner." + k for k in list(base)[1:]]
    for key, value in base.items():
        other = scaled[key if key == INPUT_KEY else "inner." + key]
        assert torch.allclose(other, a**2 * value, rtol=1e-10, atol=1e-14)


@settings(max_examples=10, deadline=None)
@given(
    name=_models,
    n=st.integers(2, 12),
    cut=st.integers(1, 11),
    chunks=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    seed=st.integers(0, 2**16),
)
def test_merge_over_a_split_of_the_data_is_the_whole(name, n, cut, chunks, seed):
    cut = min(cut, n - 1)
    model, d = MODELS[name]()
    x = data(n, d, seed=seed)
    whole = accumulate_agop(model, x, dtype=torch.float64, chunk_size=n)
    left = accumulate_agop(model, x[:cut], dtype=torch.float64, chunk_size=chunks[0])
    right = accumulate_agop(model, x[cut:], dtype=torch.float64, chunk_size=chunks[1])
    merged = left.merge(right)
    assert merged.keys() == whole.keys()
    for key in whole.keys():
        assert merged.n_samples(key) == n and merged.n_rows(key) == whole.n_rows(key)
    for centered in (False, True):
        a, b = merged.result(centered=centered), whole.result(centered=centered)
        scale = whole.result()
        for key in b:
            assert float((a[key] - b[key]).norm()) <= 1e-12 * float(scale[key].norm())


@settings(max_examples=10, deadline=None)
@given(
    c=st.integers(1, 4),
    d=st.integers(1, 5),
    tokens=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_linear_model_on_tokens_gives_a_transpose_a(c, d, tokens, seed):
    # f(x) = (x_t A^T)_t flattened: token t's Jacobian is A in the rows of token t, so the layer
    # AGOP (averaged over tokens) is A^T A and the input AGOP is kron(I_T, A^T A)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, c)).double()
    x = torch.randn(
        5, tokens, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    result = compute_agop(model, x)
    a = model[0].weight.detach()
    assert rel_err(result["0"], a.T @ a) <= 1e-12
    assert (
        rel_err(result[INPUT_KEY], torch.kron(torch.eye(tokens, dtype=torch.float64), a.T @ a))
        <= 1e-12
    )


# ---------------------------------------------------------------------------------------------
# Data kinds, dtype, device, layer selection
# ---------------------------------------------------------------------------------------------


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    model = mlp([5, 6, 2])
    x = data(7, 5, dtype=torch.float32)
    from_numpy = compute_agop(model, x.numpy())
    from_torch = compute_agop(model, x)
    assert all(isinstance(v, np.ndarray) for v in from_numpy.values())
    assert all(isinstance(v, torch.Tensor) for v in from_torch.values())
    for key in from_torch:
        np.testing.assert_allclose(from_numpy[key], from_torch[key].numpy(), rtol=1e-6)


def test_iterable_of_batches_and_dataloader():
    model = mlp([5, 6, 2])
    x = data(23, 5, dtype=torch.float32)
    y = torch.zeros(23)
    whole = compute_agop(model, x)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=6, shuffle=False
    )
    from_loader = compute_agop(model, loader, chunk_size=4)
    from_generator = compute_agop(model, (x[i : i + 10].numpy() for i in range(0, 23, 10)))
    for key in whole:
        torch.testing.assert_close(from_loader[key], whole[key], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(from_generator[key], whole[key].numpy(), rtol=1e-5, atol=1e-7)


def test_nested_list_is_one_array():
    model = mlp([2, 3, 2])
    rows = [[0.5, -1.0], [2.0, 0.25], [1.0, 1.0]]
    from_list = compute_agop(model, rows)
    from_array = compute_agop(model, np.asarray(rows))
    for key in from_array:
        np.testing.assert_allclose(from_list[key], from_array[key])


def test_dtype_float64_leaves_float32_model_alone():
    model = mlp([5, 6, 2]).float()
    x = data(8, 5, dtype=torch.float32)
    result = compute_agop(model, x, dtype=torch.float64)
    assert result["0"].dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in model.parameters())
    want = reference_agop(model, x, ["0", "2"])
    assert rel_err(result["2"], want["2"]) <= 1e-10


def test_layer_selection_and_include_input():
    model = mlp([5, 6, 6, 2], nn.Tanh)
    x = data(5, 5)
    only = compute_agop(model, x, layers=["2"], include_input=False, dtype=torch.float64)
    assert list(only) == ["2"]
    by_type = compute_agop(model, x, layers=nn.Tanh, dtype=torch.float64)
    assert list(by_type) == [INPUT_KEY, "1", "3"]
    want = reference_agop(model, x, ["1", "3"])
    assert rel_err(by_type["3"], want["3"]) <= 1e-10


def test_model_without_linear_layers_gives_input_agop():
    model = nn.Sequential(nn.Tanh())
    x = data(4, 3)
    result = compute_agop(model, x)
    assert list(result) == [INPUT_KEY]
    expected = torch.diag((1 - torch.tanh(x) ** 2).pow(2).mean(0))
    assert rel_err(result[INPUT_KEY], expected) <= 1e-12


class Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).reshape(tokens.shape[0], -1))


def test_integer_tokens_work_without_input_agop():
    model = Embedder().double()
    tokens = torch.tensor([[1, 2], [3, 4], [0, 6]])
    result = compute_agop(model, tokens, include_input=False)
    w = model.fc.weight.detach()
    assert rel_err(result["fc"], w.T @ w) <= 1e-12


def test_image_input_is_flattened_per_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    result = compute_agop(model, x)
    w = model[1].weight.detach()
    assert result[INPUT_KEY].shape == (12, 12)
    assert rel_err(result[INPUT_KEY], w.T @ w) <= 1e-12


# ---------------------------------------------------------------------------------------------
# Partial sums
# ---------------------------------------------------------------------------------------------


def test_accumulators_over_shards_merge_to_the_whole():
    model = ResidualMLP()
    x = data(17, 5)
    whole = accumulate_agop(model, x, dtype=torch.float64)
    left = accumulate_agop(model, x[:6], dtype=torch.float64)
    right = accumulate_agop(model, x[6:], dtype=torch.float64)
    merged = left.merge(right)
    assert merged.keys() == whole.keys()
    assert merged.n_samples("inp") == 17
    for centered in (False, True):
        a, b = merged.result(centered=centered), whole.result(centered=centered)
        for key in a:
            assert torch.allclose(a[key], b[key], rtol=1e-12, atol=1e-15)


def test_state_dict_round_trip_and_raw_tensors_are_the_sums():
    model = mlp([5, 6, 2])
    x = data(9, 5)
    acc = accumulate_agop(model, x, dtype=torch.float64)
    twin = AGOPAccumulator.from_state_dict(
        {k: {f: v.numpy() for f, v in fields.items()} for k, fields in acc.state_dict().items()}
    )
    for t in twin.tensors():  # what an all-reduce over two identical ranks does
        t.mul_(2)
    assert twin.n_samples("0") == 18
    for key, value in acc.result().items():
        assert torch.allclose(twin.result()[key], value, rtol=1e-14)


def test_public_update_with_positions():
    g = torch.Generator().manual_seed(0)
    jac = torch.randn(5, 3, 2, 4, generator=g, dtype=torch.float64)  # (n, p, k, d)
    acc = AGOPAccumulator().update("layer", jac)
    rows = jac.reshape(15, 2, 4)
    want = sum(j.T @ j for j in rows) / 15
    mean = rows.mean(0)
    want_centered = sum((j - mean).T @ (j - mean) for j in rows) / 15
    assert acc.n_samples("layer") == 5 and acc.n_rows("layer") == 15
    assert rel_err(acc.result()["layer"], want) <= 1e-13
    assert rel_err(acc.result(centered=True)["layer"], want_centered) <= 1e-12


def test_accumulate_into_existing_accumulator():
    model = mlp([5, 6, 2])
    x = data(8, 5)
    acc = accumulate_agop(model, x[:3], dtype=torch.float64)
    same = accumulate_agop(model, x[3:], dtype=torch.float64, accumulator=acc)
    assert same is acc and acc.n_samples(INPUT_KEY) == 8


def test_accumulator_errors():
    acc = AGOPAccumulator().update("a", np.ones((2, 1, 3)))
    with pytest.raises(NFMInputError, match="shape"):
        acc.update("a", np.ones((2, 1, 4)))
    with pytest.raises(NFMInputError, match=r"\(n, k, d\)"):
        acc.update("a", np.ones((2, 3)))
    with pytest.raises(NFMInputError, match="AGOPAccumulator"):
        acc.merge({"a": 1})
    with pytest.raises(NFMInputError, match="sum_jtj"):
        AGOPAccumulator.from_state_dict({"a": {"counts": [1, 1]}})


# ---------------------------------------------------------------------------------------------
# compute_nfm
# ---------------------------------------------------------------------------------------------


def test_nfm_is_weight_gram_without_bias_and_keys_match_agop():
    model = mlp([5, 6, 2])
    nfm = compute_nfm(model)
    agop = compute_agop(model, data(3, 5, dtype=torch.float32))
    assert list(nfm) == [k for k in agop if k != INPUT_KEY]
    w = model[0].weight.detach()
    assert torch.equal(nfm["0"], w.T @ w)
    assert not nfm["0"].requires_grad


def test_nfm_of_convolution_and_of_module_without_weight():
    conv = nn.Sequential(nn.Conv2d(2, 3, kernel_size=2))
    nfm = compute_nfm(conv, nn.Conv2d)
    w = conv[0].weight.detach().reshape(3, 8)
    assert torch.allclose(nfm["0"], w.T @ w)
    with pytest.raises(LayerSelectionError, match="no weight"):
        compute_nfm(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.ReLU)


# ---------------------------------------------------------------------------------------------
# Nothing left behind
# ---------------------------------------------------------------------------------------------


def snapshot(model):
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": {k: v.clone() for k, v in model.state_dict().items()},
        "dtypes": [p.dtype for p in model.parameters()],
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["dtypes"] == before["dtypes"]
    assert before["params"].keys() == after["params"].keys()
    for key, value in before["params"].items():
        assert torch.equal(after["params"][key], value), key
    for module in model.modules():
        assert not module._forward_pre_hooks
        assert not module._forward_hooks
        assert not module._backward_hooks
    assert all(p.grad is None for p in model.parameters())


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = self.fc(x)
        if h.shape[0] > 0:
            raise ZeroDivisionError("model failure")
        return self.head(h)


def mixed_mode_model():
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    model[2].eval()
    model[0].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: compute_agop(m, data(4, 5, dtype=torch.float32)), None, None),
        (
            lambda m: compute_agop(m, data(4, 5, dtype=torch.float32), dtype=torch.float64),
            None,
            None,
        ),
        (
            lambda m: compute_agop(m, data(4, 7, dtype=torch.float32)),
            NFMInputError,
            r"shape \(4, 7\).*in_features=5",
        ),
        (lambda m: compute_agop(m, torch.full((3, 5), float("nan"))), NFMInputError, "NaN"),
        (lambda m: compute_agop(m, data(4, 5), layers="nope"), LayerSelectionError, "'nope'"),
        (
            lambda m: compute_agop(m, torch.ones(3, 5, dtype=torch.int64)),
            NFMInputError,
            r"int64.*[Cc]ast",
        ),
    ],
    ids=["normal", "float64", "wrong-features", "nan", "unknown-layer", "integers"],
)
def test_model_unchanged(call, error, match):
    model = mixed_mode_model()
    before = snapshot(model)
    if error is None:
        result = call(model)
        assert list(result) == [INPUT_KEY, "0", "2"]
        assert all(bool(torch.isfinite(v).all()) for v in result.values())
    else:
        with pytest.raises(error, match=match):
            call(model)
    assert_unchanged(model, before)


def test_model_unchanged_when_model_raises():
    model = Raises()
    model.train()
    before = snapshot(model)
    with pytest.raises(ZeroDivisionError, match="model failure"):
        compute_agop(model, data(4, 3, dtype=torch.float32))
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_wrong_feature_count_names_shape_and_expected_features():
    model = mlp([5, 6, 2]).float()
    with pytest.raises(NFMInputError, match=r"shape \(4, 7\).*'0'.*in_features=5") as info:
        compute_agop(model, data(4, 7, dtype=torch.float32))
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_data(bad):
    x = data(10, 5, dtype=torch.float32)
    x[7, 2] = bad
    with pytest.raises(NFMInputError, match=r"NaN or infinite.*first bad row: 7"):
        compute_agop(mlp([5, 3]), x, chunk_size=4)


@pytest.mark.parametrize(
    "empty", [torch.zeros(0, 5), np.zeros((0, 5), dtype=np.float32), [], iter(())]
)
def test_empty_data(empty):
    with pytest.raises(NFMInputError, match="empty"):
        compute_agop(mlp([5, 3]), empty)


def test_unknown_layer_lists_available_names():
    with pytest.raises(LayerSelectionError, match=r"'fc9'.*available.*'0', '1', '2'"):
        compute_agop(mlp([5, 4, 3]), data(3, 5), layers="fc9")


class SkipsALayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 2)

    def forward(self, x):
        return self.used(x)


def test_layer_never_reached():
    model = SkipsALayer()
    before = snapshot(model)
    with pytest.raises(LayerSelectionError, match=r"'unused'.*never called"):
        compute_agop(model, data(3, 3, dtype=torch.float32))
    assert_unchanged(model, before)


def test_integer_inputs_say_cast_to_float():
    with pytest.raises(NFMInputError, match=r"int64.*[Cc]ast.*float"):
        compute_agop(mlp([5, 3]), torch.ones(3, 5, dtype=torch.int64))
    with pytest.raises(NFMInputError, match=r"int.*[Cc]ast.*float"):
        compute_agop(mlp([5, 3]), np.ones((3, 5), dtype=np.int32))


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_layer_called_twice_is_an_error():
    with pytest.raises(LayerSelectionError, match="more than once"):
        compute_agop(CalledTwice(), data(2, 3, dtype=torch.float32))


def test_batchnorm_warning_and_batch_statistics_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    model.train()
    with pytest.warns(UserWarning, match="running statistics"):
        result = compute_agop(model, data(6, 3))
    assert model.training and model[1].training
    # eval-mode batch-norm is an affine map of the running statistics: exact vs reference
    want = reference_agop(model, data(6, 3), ["0", "2"])
    assert rel_err(result["0"], want["0"]) <= 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_agop(model.eval(), data(6, 3))
    model[1].track_running_stats = False
    model[1].running_mean = None
    model[1].running_var = None
    with pytest.raises(NFMInputError, match="track_running_stats=False"):
        compute_agop(model, data(6, 3))


class BatchCentering(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x - x.mean(dim=0, keepdim=True))


def test_samples_that_interact_are_detected():
    with pytest.raises(NFMInputError, match="other samples"):
        compute_agop(BatchCentering(), data(5, 3, dtype=torch.float32))


def test_bad_options():
    model, x = mlp([5, 3]), data(3, 5)
    with pytest.raises(NFMInputError, match="chunk_size"):
        compute_agop(model, x, chunk_size=0)
    with pytest.raises(NFMInputError, match="dtype"):
        compute_agop(model, x, dtype=torch.int32)
    with pytest.raises(NFMInputError, match="out of range"):
        compute_agop(model, x, outputs=3)
    with pytest.raises(NFMInputError, match=r"\(k, 3\)"):
        compute_agop(model, x, outputs=np.ones((2, 4)))
    with pytest.raises(NFMInputError, match="data must be"):
        compute_agop(model, "not data")
    with pytest.raises(NFMInputError, match="returned"):
        compute_agop(ReturnsTuple(), x)


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(x), x


def test_deepcopy_of_model_gives_same_result():
    # The computation must not depend on hidden state left on the model by a previous call.
    model = mlp([5, 6, 2])
    x = data(5, 5, dtype=torch.float32)
    first = compute_agop(model, x)
    second = compute_agop(copy.deepcopy(model), x)
    for key in first:
        assert torch.equal(first[key], second[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_matches_cpu_and_keeps_kinds():
    model = ResidualMLP().double()
    x = data(20, 5)
    on_cpu = compute_agop(model, x, centered=True)
    model = model.cuda()
    on_gpu = compute_agop(model, x, centered=True, chunk_size=7)  # CPU data, CUDA model
    from_numpy = compute_agop(model, x.numpy(), centered=True)
    for key, value in on_cpu.items():
        assert on_gpu[key].device.type == "cuda"
        torch.testing.assert_close(on_gpu[key].cpu(), value, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(from_numpy[key], value.numpy(), rtol=1e-10, atol=1e-13)
    float32 = compute_agop(model.float(), x.float().cuda())
    assert float32["inp"].dtype == torch.float32 and float32["inp"].is_cuda


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_model_input_agop_only():
    model = mlp([4, 5, 2]).double()
    scripted = torch.jit.script(model)
    x = data(6, 4)
    result = compute_agop(scripted, x, layers=[])
    assert list(result) == [INPUT_KEY]
    want = compute_agop(model, x, layers=[])
    assert rel_err(result[INPUT_KEY], want[INPUT_KEY]) <= 1e-12
    with pytest.raises(LayerSelectionError, match="TorchScript"):
        compute_agop(scripted, x, layers=["0"])
    with pytest.raises(NFMInputError, match="TorchScript"):
        compute_agop(scripted, x, layers=[], dtype=torch.float32)


class Switches(nn.Module):
    """From call ``switch_at + 1`` on, the input also reaches the output directly."""

    def __init__(self, switch_at):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 2)
        self.switch_at = switch_at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(x)
        if self.calls > self.switch_at:
            out = out + x[:, :2] ** 2
        return out


def test_shared_input_and_first_layer_sums_split_when_they_stop_being_identical():
    # chunk 1 (forward + independence check: calls 1, 2): the input feeds only fc, so the
    # input and fc Jacobians are one tensor and share sums; from chunk 2 on they differ.
    x = data(10, 3)
    _, unswitched = _pass(Switches(switch_at=10**9).double(), x, output_chunk_size=1)
    assert unswitched.aliases == {"fc": INPUT_KEY}  # the sharing is established ...
    got, run = _pass(Switches(switch_at=2).double(), x, output_chunk_size=1)
    assert run.aliases == {}  # ... and undone when the Jacobians differ
    first = accumulate_agop(Switches(switch_at=10**9).double(), x[:4])
    rest = accumulate_agop(Switches(switch_at=0).double(), x[4:])
    want = first.merge(rest).result()
    assert not torch.allclose(want[INPUT_KEY], want["fc"])
    for key in want:
        assert rel_err(got[key], want[key]) <= 1e-12


# ---------------------------------------------------------------------------------------------
# Identical Jacobians share their sums
# ---------------------------------------------------------------------------------------------


def _count_gram_updates(monkeypatch):
    calls = []
    original = PartialSums.add_block

    def counting(self, grads, first_output, n_outputs):
        calls.append(tuple(grads.shape))
        return original(self, grads, first_output, n_outputs)

    monkeypatch.setattr(PartialSums, "add_block", counting)
    return calls


def _pass(model, x, **options):
    settings_ = dict(
        layers=None,
        include_input=True,
        outputs=None,
        dtype=torch.float64,
        chunk_size=4,
        output_chunk_size=None,
        vectorize=True,
        check_independence=True,
        verbose=False,
    )
    settings_.update(options)
    acc, _, run = run_agop_pass(model, x, **settings_)
    return acc.result(), run


@pytest.mark.parametrize("vectorize", [True, False], ids=["batched", "loop"])
@pytest.mark.parametrize(
    "case", ["mlp", "image-flatten"], ids=["input-feeds-first-layer", "flatten-view"]
)
def test_input_and_first_layer_products_are_done_once(monkeypatch, vectorize, case):
    if case == "mlp":
        model, x, first = mlp([5, 7, 3], nn.Tanh).double(), data(10, 5), "0"
        split = split_sequential(model)
    else:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        x = torch.randn(
            10, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64
        )
        first = "1"
        split = None
    calls = _count_gram_updates(monkeypatch)
    got, run = _pass(model, x, vectorize=vectorize)
    assert run.aliases == {first: INPUT_KEY}
    # 3 chunks (4 + 4 + 2 samples), one output block each; 3 keys, the first layer shared
    assert len(calls) == 3 * 2
    monkeypatch.undo()
    # results stay exact: same as computing the first layer's products separately ...
    monkeypatch.setattr(engine, "_duplicate_jacobians", lambda grads, layouts: {})
    separate, run_separate = _pass(model, x, vectorize=vectorize)
    assert run_separate.aliases == {}
    for key in separate:
        assert rel_err(got[key], separate[key]) <= 1e-14
    assert torch.equal(got[INPUT_KEY], got[first])
    # ... and as the independent reference
    if split is not None:
        assert_matches_reference(got, split_reference_agop(split, x))


def test_no_sharing_when_the_input_reaches_the_first_layer_transformed():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(2.0 * x)

    model = Scaled().double()
    got, run = _pass(model, data(6, 3))
    assert run.aliases == {}
    w = model.fc.weight.detach()
    assert rel_err(got["fc"], w.T @ w) <= 1e-12
    assert rel_err(got[INPUT_KEY], 4.0 * w.T @ w) <= 1e-12
