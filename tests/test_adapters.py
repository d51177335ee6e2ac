"""Tests of nfm.models.adapters: the layer families nfm knows (their input layout and their
(out, in) weight), the refusals (transposed convolutions, inputs of
unknown layout), and layouts declared by the user with register_adapter. AGOPs are checked
against the independent hand-split ``jacrev`` reference."""

from __future__ import annotations

import pytest
import torch
from reference_agop import input_split, split_reference_agop
from torch import nn
from torch.nn import functional as F

from nfm.ansatz import nfa_report
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.features import compute_agop, compute_nfm
from nfm.models.adapters import (
    FeatureAxisAdapter,
    GenericAdapter,
    InputLayout,
    LayerAdapter,
    adapter_for,
    features_on_axis,
    layer_feature_count,
    register_adapter,
    unregister_adapter,
)
from nfm.models.adapters.conv import ConvAdapter
from nfm.models.adapters.huggingface import HFConv1DAdapter
from nfm.models.adapters.linear import BilinearAdapter, LinearAdapter
from nfm.models.selection import INPUT_KEY


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def tokens(n, t, d, seed=0):
    return torch.randn(n, t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def declare():
    """register_adapter for the test's duration; every declaration is undone afterwards."""
    declared = []

    def _declare(module_type, adapter):
        declared.append((module_type, register_adapter(module_type, adapter)))

    yield _declare
    for module_type, previous in reversed(declared):
        unregister_adapter(module_type)
        if previous is not None:
            register_adapter(module_type, previous)


# ---------------------------------------------------------------------------------------------
# Look-up
# ---------------------------------------------------------------------------------------------


class Conv1D(nn.Module):
    """The Hugging Face ``transformers.pytorch_utils.Conv1D`` layer, written out: y = x W + b
    with ``weight`` stored (nx, nf) = (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = (*x.size()[:-1], self.nf)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class NotHFConv1D(nn.Module):
    """Named Conv1D, but nothing like Hugging Face's: no ``nf``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3, 4))


Conv1DLookalike = type("Conv1D", (NotHFConv1D,), {})


class MyLinear(nn.Linear):
    pass


def test_adapter_for_each_family():
    assert isinstance(adapter_for(nn.Linear(2, 3)), LinearAdapter)
    assert isinstance(adapter_for(MyLinear(2, 3)), LinearAdapter)  # subclasses too
    assert isinstance(adapter_for(nn.MultiheadAttention(4, 2).out_proj), LinearAdapter)
    assert isinstance(adapter_for(nn.Bilinear(2, 3, 4)), BilinearAdapter)
    assert isinstance(adapter_for(Conv1D(4, 3)), HFConv1DAdapter)
    assert isinstance(adapter_for(Conv1DLookalike()), GenericAdapter)
    for conv in (nn.Conv1d(2, 3, 2), nn.Conv2d(2, 3, 2), nn.Conv3d(2, 3, 2)):
        assert isinstance(adapter_for(conv), ConvAdapter)
    assert isinstance(adapter_for(nn.ConvTranspose2d(2, 3, 2)), ConvAdapter)
    for other in (nn.ReLU(), nn.BatchNorm2d(3), nn.MaxPool2d(2), nn.Sequential()):
        assert isinstance(adapter_for(other), GenericAdapter)


def test_layer_feature_count():
    assert layer_feature_count(nn.Linear(3, 2)) == 3
    assert layer_feature_count(Conv1D(5, 7)) == 7
    assert layer_feature_count(nn.Conv2d(4, 2, 3)) == 4
    assert layer_feature_count(nn.Bilinear(2, 3, 4)) == 2
    assert layer_feature_count(nn.ReLU()) is None


def test_input_layout_rows_move_the_feature_axis_last():
    g = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)  # (k, batch, C, H, W)
    layout = features_on_axis("x", nn.ReLU(), (3, 4, 5, 6), 3, 1)
    assert layout == InputLayout(positions=30, features=4, feature_axis=1)
    rows = layout.jacobian_rows(g, 3)
    assert rows.shape == (2, 3, 30, 4)
    for i in range(3):  # sample i, pixel (h, w) -> the C-vector g[:, i, :, h, w]
        for h in range(5):
            for w in range(6):
                assert torch.equal(rows[:, i, h * 6 + w, :], g[:, i, :, h, w])
    last = features_on_axis("x", nn.ReLU(), (3, 4, 5), 3, -1)
    assert last == InputLayout(positions=4, features=5)
    with pytest.raises(LayerSelectionError, match="batch"):
        features_on_axis("x", nn.ReLU(), (3, 4), 3, 0)
    with pytest.raises(LayerSelectionError, match="does not hold 2 samples"):
        features_on_axis("x", nn.ReLU(), (3, 4), 2, -1)


# ---------------------------------------------------------------------------------------------
# Hugging Face Conv1D (GPT-2)
# ---------------------------------------------------------------------------------------------


class GPT2MLP(nn.Module):
    """GPT-2's MLP block on (batch, T, d) tokens: c_fc, gelu, c_proj (HF Conv1D layers)."""

    def __init__(self, d=4, hidden=6):
        super().__init__()
        torch.manual_seed(0)
        self.c_fc = Conv1D(hidden, d)
        self.c_proj = Conv1D(d, hidden)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


def gpt2_split(m):
    def hidden(xi):
        return F.gelu(xi @ m.c_fc.weight + m.c_fc.bias)

    def full(xi):
        return hidden(xi) @ m.c_proj.weight + m.c_proj.bias

    return {
        INPUT_KEY: input_split(full),
        "c_fc": (lambda xi: xi, lambda xi, h: full(h)),
        "c_proj": (hidden, lambda xi, h: h @ m.c_proj.weight + m.c_proj.bias),
    }


@pytest.mark.parametrize("centered", [False, True])
def test_hf_conv1d_agop_matches_reference(centered):
    model = GPT2MLP().double()
    x = tokens(6, 3, 4)
    got = compute_agop(model, x, layers=Conv1D, centered=centered, chunk_size=4)
    splits = gpt2_split(model)
    want = split_reference_agop(splits, x, centered=centered)
    scale = split_reference_agop(splits, x)
    assert list(got) == [INPUT_KEY, "c_fc", "c_proj"]
    assert got["c_fc"].shape == (4, 4) and got["c_proj"].shape == (6, 6)
    for key in want:
        error = float((got[key] - want[key]).norm())
        assert error <= 1e-10 * float(scale[key].norm()), key


def test_hf_conv1d_nfm_is_w_w_transpose_and_the_output_layer_identity_holds():
    model = GPT2MLP().double()
    nfm = compute_nfm(model, Conv1D)
    w = model.c_fc.weight.detach()  # (in, out)
    assert nfm["c_fc"].shape == (4, 4)
    assert torch.allclose(nfm["c_fc"], w @ w.T, rtol=1e-14, atol=0)
    # c_proj's output is the model output: its AGOP is its NFM exactly
    agop = compute_agop(model, tokens(5, 3, 4), layers=Conv1D, include_input=False)
    assert rel_err(agop["c_proj"], nfm["c_proj"]) <= 1e-12
    report = nfa_report(model, tokens(5, 3, 4), layers=Conv1D, fit_best_alpha=False)
    rows = {row["layer"]: row for row in report.rows}
    assert rows["c_proj"]["by_construction"] and not rows["c_fc"]["by_construction"]
    assert rows["c_proj"]["pearson_a1"] == pytest.approx(1.0, abs=1e-12)
    assert rows["c_fc"]["d"] == 4


def test_hf_conv1d_wrong_feature_count_names_nx():
    with pytest.raises(NFMInputError, match=r"shape \(3, 2, 5\).*'c_fc'.*nx=4"):
        compute_agop(GPT2MLP().double(), tokens(3, 2, 5))


# ---------------------------------------------------------------------------------------------
# nn.Bilinear: AGOP with respect to its first input, no NFM
# ---------------------------------------------------------------------------------------------


class BilinearGate(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.gate = nn.Bilinear(3, 3, 2)

    def forward(self, x):  # (batch, T, 3) tokens, gated by their own square
        return self.gate(x, x**2).sum(dim=1)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # no vmap rule
def test_bilinear_agop_is_with_respect_to_its_first_input():
    model = BilinearGate().double()
    x = tokens(5, 2, 3)
    got = compute_agop(model, x, layers="gate", include_input=False)
    m = model.gate
    split = {
        "gate": (
            lambda xi: xi,
            lambda xi, h: F.bilinear(h, xi**2, m.weight, m.bias).sum(dim=0),  # x2 held fixed
        )
    }
    want = split_reference_agop(split, x)
    assert rel_err(got["gate"], want["gate"]) <= 1e-10
    with pytest.raises(LayerSelectionError, match=r"three-way weight.*no NFM"):
        compute_nfm(model, "gate")


# ---------------------------------------------------------------------------------------------
# Convolutions: NFM in patch space (the patch AGOP is tested in test_conv_agop.py)
# ---------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, kernel_size=2)
        self.fc = nn.Linear(3 * 3 * 3, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def images(n=4, c=2, h=4, w=4):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def test_cnn_default_selection_still_works():
    model = SmallCNN().double()
    result = compute_agop(model, images())  # default: the nn.Linear layers and the input
    assert list(result) == [INPUT_KEY, "fc"]
    assert result[INPUT_KEY].shape == (32, 32)
    w = model.fc.weight.detach()
    assert rel_err(result["fc"], w.T @ w) <= 1e-12


@pytest.mark.parametrize("groups", [1, 2])
def test_convolution_nfm_is_the_patch_space_weight(groups):
    # the (C_out, C_in k_h k_w) matrix W of compute_nfm is the convolution's linear map on the
    # unfolded patches: conv2d(x) = W unfold(x) + b
    torch.manual_seed(groups)
    conv = nn.Conv2d(4, 6, kernel_size=(2, 3), groups=groups).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    w = ConvAdapter().weight_matrix(conv, "conv")
    assert w.shape == (6, 4 * 2 * 3)
    patches = F.unfold(x, kernel_size=(2, 3))  # (batch, C_in k_h k_w, positions)
    by_patches = w @ patches + conv.bias.detach()[:, None]
    assert torch.allclose(by_patches.reshape(2, 6, 4, 4), conv(x).detach(), rtol=1e-12, atol=1e-12)
    nfm = compute_nfm(nn.Sequential(conv), nn.Conv2d)["0"]
    assert torch.allclose(nfm, w.T @ w, rtol=1e-14, atol=0)


def test_transposed_convolution_has_no_nfm():
    with pytest.raises(LayerSelectionError, match="transposed convolution"):
        compute_nfm(nn.Sequential(nn.ConvTranspose2d(2, 3, 2)), nn.ConvTranspose2d)


# ---------------------------------------------------------------------------------------------
# Unknown layouts are refused; declared layouts work
# ---------------------------------------------------------------------------------------------


class ChannelsFirst(nn.Module):
    """A (batch, C, H, W) pipeline without convolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.Tanh()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 2 * 2, 3)
        self.eval()
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.bn(x))).flatten(1))


@pytest.mark.parametrize(
    ("layer", "kind"), [("bn", "BatchNorm2d"), ("act", "Tanh"), ("pool", "MaxPool2d")]
)
def test_input_of_unknown_layout_is_refused(layer, kind):
    with pytest.raises(LayerSelectionError) as info:
        compute_agop(ChannelsFirst().double(), images(), layers=layer)
    message = str(info.value)
    for part in (
        f"'{layer}'",
        f"({kind})",
        "(4, 2, 4, 4)",
        "register_adapter",
        "FeatureAxisAdapter",
    ):
        assert part in message, part


def test_token_input_of_an_activation_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    with pytest.raises(LayerSelectionError, match=r"'1' \(Tanh\).*\(5, 2, 4\).*register_adapter"):
        compute_agop(model, tokens(5, 2, 3), layers=nn.Tanh)
    assert list(compute_agop(model, tokens(5, 2, 3))) == [INPUT_KEY, "0", "2"]  # linears: fine


def channels_first_split(m):
    """BN input: one C-vector per pixel; the reference sees it features last (H, W, C)."""

    def after_bn(v):  # v: (C, H, W)
        return F.batch_norm(
            v[None],
            m.bn.running_mean,
            m.bn.running_var,
            m.bn.weight,
            m.bn.bias,
            False,
            0.0,
            m.bn.eps,
        )[0]

    def rest(v):
        return lin(m.fc, F.max_pool2d(torch.tanh(v)[None], 2).flatten())

    return {
        "bn": (lambda xi: xi.movedim(0, -1), lambda xi, h: rest(after_bn(h.movedim(-1, 0)))),
        "act": (lambda xi: after_bn(xi).movedim(0, -1), lambda xi, h: rest(h.movedim(-1, 0))),
    }


def lin(layer, h):
    return F.linear(h, layer.weight, layer.bias)


def test_declared_channels_first_layout(declare):
    declare(nn.BatchNorm2d, FeatureAxisAdapter(feature_axis=1))
    declare(nn.Tanh, FeatureAxisAdapter(1))
    model = ChannelsFirst().double()
    x = images()
    got = compute_agop(model, x, layers=["bn", "act"], include_input=False, chunk_size=3)
    want = split_reference_agop(channels_first_split(model), x)
    assert got["bn"].shape == (2, 2)
    for key in want:
        assert rel_err(got[key], want[key]) <= 1e-10
    with pytest.raises(LayerSelectionError, match="no weight matrix"):
        compute_nfm(model, "bn")


def test_undeclaring_restores_the_refusal():
    model, x = ChannelsFirst().double(), images()
    assert register_adapter(nn.BatchNorm2d, FeatureAxisAdapter(1)) is None
    try:
        compute_agop(model, x, layers="bn")
    finally:
        assert isinstance(unregister_adapter(nn.BatchNorm2d), FeatureAxisAdapter)
    assert unregister_adapter(nn.BatchNorm2d) is None
    with pytest.raises(LayerSelectionError, match="register_adapter"):
        compute_agop(model, x, layers="bn")


class TransposedLinear(nn.Module):
    """A user's layer: y = x V with V stored (in, out), like HF Conv1D but unknown to nfm."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.V = nn.Parameter(torch.randn(d_in, d_out))

    def forward(self, x):
        return x @ self.V


class TransposedLinearAdapter(LayerAdapter):
    """The whole of what a user writes to declare a new layer family."""

    def input_layout(self, module, shape, batch_size, name):
        return features_on_axis(name, module, shape, batch_size, -1)

    def weight_matrix(self, module, name):
        return module.V.detach().T


def test_a_new_family_is_one_adapter(declare):
    torch.manual_seed(0)
    model = nn.Sequential(TransposedLinear(3, 5), nn.Tanh(), TransposedLinear(5, 2)).double()
    x = tokens(4, 3, 3)
    with pytest.raises(LayerSelectionError, match="register_adapter"):
        compute_agop(model, x, layers=TransposedLinear)
    declare(TransposedLinear, TransposedLinearAdapter())
    agop = compute_agop(model, x, layers=TransposedLinear, include_input=False)
    nfm = compute_nfm(model, TransposedLinear)
    v = model[2].V.detach()
    assert torch.allclose(nfm["2"], v @ v.T, rtol=1e-14, atol=0)
    assert rel_err(agop["2"], nfm["2"]) <= 1e-12  # output layer: AGOP = NFM exactly
    split = {"0": (lambda xi: xi, lambda xi, h: torch.tanh(h @ model[0].V) @ model[2].V)}
    assert rel_err(agop["0"], split_reference_agop(split, x)["0"]) <= 1e-10


def test_declared_adapter_beats_the_built_in(declare):
    class Refuse(LayerAdapter):
        def input_layout(self, module, shape, batch_size, name):
            raise LayerSelectionError(f"refused {name}")

    declare(MyLinear, Refuse())
    model = nn.Sequential(MyLinear(3, 2), nn.Linear(2, 1)).double()
    assert isinstance(adapter_for(model[0]), Refuse)
    assert isinstance(adapter_for(model[1]), LinearAdapter)  # the base class is unaffected
    with pytest.raises(LayerSelectionError, match="refused 0"):
        compute_agop(model, torch.randn(3, 3, dtype=torch.float64))


def test_register_adapter_rejects_bad_arguments():
    with pytest.raises(NFMInputError, match="module_type"):
        register_adapter("Linear", FeatureAxisAdapter())
    with pytest.raises(NFMInputError, match="module_type"):
        register_adapter(int, FeatureAxisAdapter())
    with pytest.raises(NFMInputError, match="instance, not the class"):
        register_adapter(nn.Tanh, FeatureAxisAdapter)
    with pytest.raises(NFMInputError, match="LayerAdapter"):
        register_adapter(nn.Tanh, lambda m: None)
    with pytest.raises(LayerSelectionError, match="axis 0 is the batch"):
        FeatureAxisAdapter(0)
    with pytest.raises(LayerSelectionError, match="int"):
        FeatureAxisAdapter(1.0)
    assert unregister_adapter(nn.Tanh) is None
