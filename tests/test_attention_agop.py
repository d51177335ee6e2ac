"""Attention: per-head AGOPs of q/k/v projections against hand-split jacrev references (float64).

The references write the attention out by hand with the input of the projection under test
(one head's slice of it, or the whole projection) as a separate argument ``u``; the Jacobian of
the model output with respect to ``u``, evaluated at ``u = x``, comes from ``torch.func.jacrev``,
and the AGOP is the plain average of ``J_t^T J_t`` over samples and token positions ``t``. The
hand-written attention is checked against ``nn.MultiheadAttention`` itself first.
"""

from __future__ import annotations

import math

import pytest
import torch
from mixed_mode import modes_and_flags
from reference_agop import reference_agop
from test_adapters import Conv1D
from torch import nn

from nfm.ansatz.report import nfa_report
from nfm.exceptions import LayerSelectionError
from nfm.features.agop import compute_agop
from nfm.features.nfm import compute_nfm
from nfm.models.adapters.probes import HeadSplit

E, H, T, C = 6, 2, 4, 3


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class AttentionModel(nn.Module):
    """Self-attention (optionally causal) on (batch, T, E) tokens, then a linear read-out."""

    def __init__(self, batch_first=True, causal=False, bias=True):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first, bias=bias)
        self.batch_first, self.causal = batch_first, causal
        self.head = nn.Linear(T * E, C)

    def mask(self):
        return torch.ones(T, T, dtype=torch.bool).triu(1) if self.causal else None

    def forward(self, x):
        h = x if self.batch_first else x.transpose(0, 1)
        y, _ = self.attn(h, h, h, attn_mask=self.mask(), need_weights=False)
        y = y if self.batch_first else y.transpose(0, 1)
        return self.head(torch.tanh(y).flatten(1))


def projections(attn):
    w = attn.in_proj_weight.detach()
    b = attn.in_proj_bias.detach() if attn.in_proj_bias is not None else torch.zeros(3 * E)
    return w.chunk(3), b.chunk(3)


def hand_attention(model, xq, xk, xv, parts=None):
    """One sample (T, E): the attention written out; ``parts`` overrides one head's inputs.

    ``parts = (part, head, u)``: head ``head`` of projection ``part`` ('q', 'k', 'v') reads ``u``
    instead of the sample (``head=None``: every head of that projection).
    """
    (wq, wk, wv), (bq, bk, bv) = projections(model.attn)
    ins = {"q": xq, "k": xk, "v": xv}
    dh = E // H
    heads_out = []
    for h in range(H):
        rows = slice(h * dh, (h + 1) * dh)
        proj = {}
        for p, w, b in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv)):
            src = ins[p]
            if parts is not None and parts[0] == p and parts[1] in (None, h):
                src = parts[2]
            proj[p] = src @ w[rows].T + b[rows]
        scores = proj["q"] @ proj["k"].T / math.sqrt(dh)
        if model.causal:
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
        heads_out.append(torch.softmax(scores, -1) @ proj["v"])
    context = torch.cat(heads_out, dim=-1)
    out = context @ model.attn.out_proj.weight.detach().T
    if model.attn.out_proj.bias is not None:
        out = out + model.attn.out_proj.bias.detach()
    return out


def readout(model, y):
    return model.head(torch.tanh(y).reshape(1, -1))[0]


def reference_attention_agop(model, x, part, head):
    total = torch.zeros(E, E, dtype=torch.float64)
    for i in range(x.shape[0]):
        xi = x[i]

        def f(u, xi=xi):
            return readout(model, hand_attention(model, xi, xi, xi, (part, head, u)))

        jac = torch.func.jacrev(f)(xi)  # (C, T, E)
        for t in range(T):
            total += jac[:, t, :].T @ jac[:, t, :]
    return total / (x.shape[0] * T)


def reference_out_proj_agop(model, x):
    total = torch.zeros(E, E, dtype=torch.float64)
    w, b = model.attn.out_proj.weight.detach(), model.attn.out_proj.bias
    for i in range(x.shape[0]):
        xi = x[i]
        context = (hand_attention(model, xi, xi, xi) - (b.detach() if b is not None else 0)) @ (
            torch.linalg.pinv(w.T)
        )

        def f(c):
            out = c @ w.T + (b.detach() if b is not None else 0)
            return readout(model, out)

        jac = torch.func.jacrev(f)(context)
        for t in range(T):
            total += jac[:, t, :].T @ jac[:, t, :]
    return total / (x.shape[0] * T)


def make(batch_first=True, causal=False, bias=True, seed=0):
    torch.manual_seed(seed)
    model = AttentionModel(batch_first, causal, bias).double().eval()
    x = torch.randn(5, T, E, dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_hand_attention_is_the_module(batch_first, causal):
    model, x = make(batch_first, causal)
    with torch.no_grad():
        want = model(x)
        got = torch.stack([readout(model, hand_attention(model, xi, xi, xi)) for xi in x])
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_per_head_qkv_agops_match_reference(batch_first, causal):
    model, x = make(batch_first, causal, seed=1)
    got = compute_agop(
        model, x, layers="attn", heads={"attn": H}, include_input=False, chunk_size=2
    )
    expected_keys = [f"attn.{p}[head={h}]" for p in "qkv" for h in range(H)] + ["attn.out_proj"]
    assert list(got) == expected_keys
    for p in "qkv":
        for h in range(H):
            want = reference_attention_agop(model, x, p, h)
            assert rel_err(got[f"attn.{p}[head={h}]"], want) <= 1e-10, (p, h)
    assert rel_err(got["attn.out_proj"], reference_out_proj_agop(model, x)) <= 1e-8


def test_whole_projection_agops_and_nfms():
    model, x = make(causal=True, seed=2)
    got = compute_agop(model, x, layers=nn.MultiheadAttention, include_input=False)
    assert list(got) == ["attn.q", "attn.k", "attn.v", "attn.out_proj"]
    for p in "qkv":
        assert rel_err(got[f"attn.{p}"], reference_attention_agop(model, x, p, None)) <= 1e-10
    nfm = compute_nfm(model, "attn")
    per_head = compute_nfm(model, "attn", heads={"attn": H})
    (wq, wk, wv), _ = projections(model.attn)
    for p, w in zip("qkv", (wq, wk, wv), strict=True):
        assert rel_err(nfm[f"attn.{p}"], w.T @ w) <= 1e-14
        dh = E // H
        for h in range(H):
            wh = w[h * dh : (h + 1) * dh]
            assert rel_err(per_head[f"attn.{p}[head={h}]"], wh.T @ wh) <= 1e-14
        total = sum(per_head[f"attn.{p}[head={h}]"] for h in range(H))
        assert rel_err(total, nfm[f"attn.{p}"]) <= 1e-14
    wo = model.attn.out_proj.weight.detach()
    assert rel_err(nfm["attn.out_proj"], wo.T @ wo) <= 1e-14


def test_transformer_encoder_default_selection_works_and_model_unchanged():
    # before: "selected layers were never called" (MHA calls out_proj functionally)
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=8, dropout=0.1, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(T * E, C)).double().train()
    model[0].layers[1].eval()
    model[2].weight.requires_grad_(False)
    before = modes_and_flags(model)
    x = torch.randn(4, T, E, dtype=torch.float64)
    got = compute_agop(model, x)
    for i in range(2):
        for key in ("q", "k", "v", "out_proj"):
            assert f"0.layers.{i}.self_attn.{key}" in got
    # the feed-forward layers are ordinary nn.Linear layers: the per-sample reference agrees
    names = ["0.layers.0.linear1", "0.layers.1.linear2"]
    want = reference_agop(model, x, names, include_input=True)
    for key in ["input", *names]:
        assert rel_err(got[key], want[key]) <= 1e-10, key
    assert modes_and_flags(model) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_out_proj_selected_by_name_is_read_through_its_attention():
    model, x = make(seed=4)
    got = compute_agop(model, x, layers="attn.out_proj", include_input=False)
    assert "attn.out_proj" in got
    assert rel_err(got["attn.out_proj"], reference_out_proj_agop(model, x)) <= 1e-8


class HeadsModel(nn.Module):
    """A query projection split into heads: y_h = softmax(q_h) * tanh(q_h), then a read-out."""

    def __init__(self, fused=False):
        super().__init__()
        self.fused = fused
        self.proj = Conv1D(3 * E, E) if fused else nn.Linear(E, E)
        width = 3 * E if fused else E
        self.out = nn.Linear(T * width, C)

    def forward(self, x):
        y = self.proj(x)
        parts = y.reshape(*y.shape[:-1], -1, E // H)
        mixed = torch.softmax(parts, dim=-1) * torch.tanh(parts)
        return self.out(mixed.flatten(1))


def reference_head_agop(model, x, block):
    """AGOP with respect to the input of output rows ``block`` of ``proj`` alone (jacrev)."""
    w = model.proj.weight.detach()
    w = w.T if model.fused else w  # (out, in)
    bias = model.proj.bias.detach()
    total = torch.zeros(E, E, dtype=torch.float64)
    for i in range(x.shape[0]):
        xi = x[i]

        def f(u, xi=xi):
            y = xi @ w.T + bias
            y_block = u @ w[block].T + bias[block]
            y = torch.cat([y[:, : block.start], y_block, y[:, block.stop :]], dim=-1)
            parts = y.reshape(T, -1, E // H)
            mixed = torch.softmax(parts, dim=-1) * torch.tanh(parts)
            return model.out(mixed.reshape(1, -1))[0]

        jac = torch.func.jacrev(f)(xi)
        for t in range(T):
            total += jac[:, t, :].T @ jac[:, t, :]
    return total / (x.shape[0] * T)


@pytest.mark.parametrize("fused", [False, True], ids=["linear", "hf-conv1d-qkv"])
def test_projection_split_into_heads_matches_reference(fused):
    torch.manual_seed(5)
    model = HeadsModel(fused).double().eval()
    x = torch.randn(4, T, E, dtype=torch.float64)
    split = HeadSplit(H, ("q", "k", "v")) if fused else H
    got = compute_agop(model, x, layers="proj", heads={"proj": split}, include_input=False)
    dh = E // H
    parts = ("q", "k", "v") if fused else (None,)
    nfm = compute_nfm(model, "proj", heads={"proj": split})
    assert list(got) == list(nfm)
    w = model.proj.weight.detach().T if fused else model.proj.weight.detach()
    index = 0
    for part in parts:
        for h in range(H):
            key = (f"proj.{part}" if part else "proj") + f"[head={h}]"
            block = slice(index * dh, (index + 1) * dh)
            assert rel_err(got[key], reference_head_agop(model, x, block)) <= 1e-10, key
            assert rel_err(nfm[key], w[block].T @ w[block]) <= 1e-14
            index += 1
    report = nfa_report(model, x, layers="proj", heads={"proj": split}, fit_best_alpha=False)
    assert [row["layer"] for row in report.rows] == list(nfm)


def test_bad_head_choices_name_the_layer_and_the_fix():
    model, x = make()
    with pytest.raises(LayerSelectionError, match=r"heads names layer\(s\) \['head'\]"):
        compute_agop(model, x, layers="attn", heads={"head": 2})
    with pytest.raises(LayerSelectionError, match="num_heads=2"):
        compute_agop(model, x, layers="attn", heads={"attn": 3})
    with pytest.raises(LayerSelectionError, match=r"'head' has 3 output features"):
        compute_agop(model, x, layers="head", heads={"head": 2})
    relu = nn.Sequential(nn.Linear(E, E), nn.ReLU())
    with pytest.raises(LayerSelectionError, match=r"'1' \(ReLU\) cannot be split into heads"):
        compute_agop(relu, torch.randn(2, E), layers="1", heads={"1": 2})
    with pytest.raises(LayerSelectionError, match="positive int"):
        compute_agop(model, x, layers="attn", heads={"attn": 0})
    biased = nn.Sequential()
    biased.attn = nn.MultiheadAttention(E, H, add_bias_kv=True, batch_first=True)
    with pytest.raises(LayerSelectionError, match="add_bias_kv"):
        compute_agop(biased, x, layers="attn")
    assert all(not m._forward_hooks for m in model.modules())
