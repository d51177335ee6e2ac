"""Convolutions: the patch-space AGOP against an independent unfold + matmul + jacrev reference.

The reference rewrites each convolution as ``unfold`` (the patches ``U``, built here with
``Tensor.unfold`` for any number of spatial dimensions and checked against
``torch.nn.functional.unfold`` in 2-D) followed by the matrix product ``W U + b``, splits the
model by hand at the patches of the layer, and takes the Jacobian of the rest of the network with
respect to ``U`` with ``torch.func.jacrev``. The AGOP is the plain average of ``J_l^T J_l`` over
samples and patch positions ``l``. Nothing of the engine (hooks, output-side deltas, the chain rule
through ``W``) is used.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from mixed_mode import modes_and_flags
from torch import nn

from nfm.ansatz.report import nfa_report
from nfm.exceptions import LayerSelectionError
from nfm.features.agop import compute_agop
from nfm.features.nfm import compute_nfm
from nfm.models.adapters.conv import conv_patch_weight


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def unfold_nd(x, conv):
    """Patches ``(batch, C_in * prod(k), L)`` of ``x`` under ``conv`` (zero padding), any ndim."""
    nd = x.ndim - 2
    k, s, p, d = (
        tuple(conv.kernel_size),
        tuple(conv.stride),
        tuple(conv.padding),
        tuple(conv.dilation),
    )
    pads = []
    for i in reversed(range(nd)):
        pads += [p[i], p[i]]
    xp = F.pad(x, pads)
    for i in range(nd):  # window of span d(k-1)+1 at stride s, then every d-th entry of it
        span = d[i] * (k[i] - 1) + 1
        xp = xp.unfold(2 + i, span, s[i])
    # xp: (b, C, L_1..L_nd, span_1..span_nd) -> keep every d-th offset
    index = [slice(None)] * (2 + nd) + [slice(None, None, d[i]) for i in range(nd)]
    xp = xp[tuple(index)]
    b, c = x.shape[:2]
    positions = xp.shape[2 : 2 + nd]
    # (b, C, *L, *k) -> (b, C, *k, *L) -> (b, C*prod(k), prod(L))
    perm = [0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd)]
    patches = xp.permute(perm).reshape(b, c * math.prod(k), math.prod(positions))
    return patches, positions


def conv_by_patches(u, conv, positions):
    """``W U + b`` reshaped to the convolution's output ``(b, C_out, *L)``."""
    w = conv_patch_weight(conv.weight.detach(), conv.in_channels, conv.groups)
    y = w @ u
    if conv.bias is not None:
        y = y + conv.bias.detach()[:, None]
    return y.reshape(u.shape[0], conv.out_channels, *positions)


class TwoConvNet(nn.Module):
    def __init__(self, conv1, conv2, n_out, in_shape):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        with torch.no_grad():
            flat = self.conv2(torch.tanh(self.conv1(torch.zeros(1, *in_shape)))).numel()
        self.fc = nn.Linear(flat, n_out)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


def reference_patch_agops(model, x):
    """Patch AGOP of conv1 and conv2 by the hand-split unfold + matmul model and jacrev."""
    net = model.double()
    conv1, conv2, fc = net.conv1, net.conv2, net.fc

    def after_conv2(y2):
        return fc(torch.tanh(y2).flatten(1))

    def tail_from_u1(u1, positions1):  # u1: one sample's patches of conv1
        y1 = conv_by_patches(u1[None], conv1, positions1)
        return after_conv2(conv2(torch.tanh(y1)))[0]

    def tail_from_u2(u2, positions2):
        return after_conv2(conv_by_patches(u2[None], conv2, positions2))[0]

    result = {}
    with torch.no_grad():
        h1 = torch.tanh(conv1(x))
    for key, inputs, conv, tail in (
        ("conv1", x, conv1, tail_from_u1),
        ("conv2", h1, conv2, tail_from_u2),
    ):
        u, positions = unfold_nd(inputs, conv)
        total = torch.zeros(u.shape[1], u.shape[1], dtype=torch.float64)
        for i in range(u.shape[0]):
            jac = torch.func.jacrev(lambda ui, positions=positions, tail=tail: tail(ui, positions))(
                u[i]
            )  # (c, features, L)
            for pos in range(u.shape[2]):
                j = jac[:, :, pos]
                total += j.T @ j
        result[key] = total / (u.shape[0] * u.shape[2])
    return result


def test_unfold_nd_matches_torch_unfold_in_2d():
    conv = nn.Conv2d(3, 4, kernel_size=(2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    mine, positions = unfold_nd(x, conv)
    theirs = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    assert torch.equal(mine, theirs)
    with torch.no_grad():
        conv.double()
        y = conv_by_patches(mine, conv, positions)
        assert torch.allclose(y, conv(x), rtol=1e-12, atol=1e-12)


CASES = {
    "conv2d": (nn.Conv2d, dict(kernel_size=3), dict(kernel_size=2), (2, 6, 6)),
    "conv2d-stride-pad-dil": (
        nn.Conv2d,
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        dict(kernel_size=2, stride=2),
        (2, 7, 6),
    ),
    "conv2d-groups": (
        nn.Conv2d,
        dict(kernel_size=2, groups=2),
        dict(kernel_size=2, groups=2),
        (4, 5, 5),
    ),
    "conv1d": (nn.Conv1d, dict(kernel_size=3, padding=1, stride=2), dict(kernel_size=2), (2, 9)),
    "conv3d": (
        nn.Conv3d,
        dict(kernel_size=2),
        dict(kernel_size=(1, 2, 2), padding=1),
        (2, 3, 4, 4),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_patch_agop_matches_unfold_jacrev_reference(case):
    cls, kw1, kw2, in_shape = CASES[case]
    torch.manual_seed(0)
    c_in = in_shape[0]
    model = TwoConvNet(cls(c_in, 4, **kw1), cls(4, 4, **kw2), 3, in_shape).double().eval()
    x = torch.randn(5, *in_shape, dtype=torch.float64)
    expected = reference_patch_agops(model, x)
    got = compute_agop(model, x, layers=cls, include_input=False, chunk_size=2)
    assert list(got) == ["conv1", "conv2"]
    for key in expected:
        assert got[key].shape == expected[key].shape
        assert rel_err(got[key], expected[key]) <= 1e-10, key
    nfm = compute_nfm(model, cls)
    for key in expected:  # the NFM lives in the same patch space
        assert nfm[key].shape == expected[key].shape


@settings(max_examples=12, deadline=None)
@given(
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    kernel=st.integers(1, 3),
    chunk=st.integers(1, 4),
)
def test_patch_agop_property(stride, padding, dilation, groups, kernel, chunk):
    torch.manual_seed(stride + 3 * padding + 7 * dilation)
    span = dilation * (kernel - 1) + 1
    size = span + 3
    conv1 = nn.Conv2d(
        2, 4, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
    model = TwoConvNet(conv1, nn.Conv2d(4, 2, 1), 2, (2, size, size)).double().eval()
    x = torch.randn(3, 2, size, size, dtype=torch.float64)
    expected = reference_patch_agops(model, x)["conv1"]
    got = compute_agop(model, x, layers="conv1", include_input=False, chunk_size=chunk)["conv1"]
    assert rel_err(got, expected) <= 1e-10
    assert torch.allclose(got, got.T, rtol=0, atol=1e-14 * float(got.abs().max()))


def test_conv_nfa_report_and_model_unchanged():
    torch.manual_seed(1)
    model = TwoConvNet(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), 3, (1, 8, 8)).double().train()
    model.conv2.weight.requires_grad_(False)
    before = modes_and_flags(model)
    weights = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    report = nfa_report(model, x, layers=nn.Conv2d)
    assert [row["layer"] for row in report.rows] == ["conv1", "conv2"]
    assert modes_and_flags(model) == before
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert not model.conv1._forward_hooks and not model.conv1._forward_pre_hooks


def test_single_conv_model_agop_is_weight_gram_scaled():
    # f = sum over positions of conv(x): J_l = (1 ... 1) W per patch, so the patch AGOP of a
    # one-output model that sums the conv output is W^T 1 1^T W (one output row per position)
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 2).double()

    class SumConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x).sum(dim=(1, 2, 3))[:, None]

    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    got = compute_agop(SumConv(), x, layers="conv", include_input=False)["conv"]
    w = conv.weight.detach().reshape(3, -1)
    ones = torch.ones(1, 3, dtype=torch.float64)
    assert rel_err(got, (ones @ w).T @ (ones @ w)) <= 1e-12


def test_transposed_convolution_agop_is_refused_naming_the_layer():
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 2), nn.Flatten()).double()
    with pytest.raises(LayerSelectionError, match=r"'0' \(ConvTranspose2d\).*transposed"):
        compute_agop(model, torch.randn(2, 2, 3, 3, dtype=torch.float64), layers="0")
