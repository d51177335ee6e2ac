"""Per-block AGOPs of tiny random Hugging Face transformers against float64 references.

The reference is independent of nfm's engine: for one window at a time, a hook of the test adds
a perturbation ``delta`` of shape ``(T, d)`` to the input of the chosen projections (the same
``delta`` to all of them for a shared input), ``torch.autograd.functional.jacobian`` gives the
Jacobian of the (projected) output with respect to ``delta``, ``(c, T, d)``, and the AGOP is
``mean over windows and positions of J_t^T J_t``.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tiny_transformers import one_thread, tiny_gpt2  # noqa: E402, F401

from nfm import compute_agop  # noqa: E402
from nfm.features.outputs import GaussianSketch  # noqa: E402
from nfm.hf.analysis import analyze_blocks  # noqa: E402
from nfm.hf.blocks import find_blocks  # noqa: E402
from nfm.hf.outputs import SelectedOutput  # noqa: E402
from nfm.hf.taps import TappedModel  # noqa: E402
from nfm.linalg import matrix_correlation  # noqa: E402

REL_TOL = 1e-10


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(1)
    config = transformers.BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=40, max_position_embeddings=16, attn_implementation="eager",
    )  # fmt: skip
    return transformers.BertModel(config).double().eval()


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(2)
    config = transformers.LlamaConfig(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=16,
        intermediate_size=24, vocab_size=40, max_position_embeddings=16, bos_token_id=0,
        eos_token_id=0, pad_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).double().eval()


def tokens(n: int = 3, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 40, (n, length), generator=torch.Generator().manual_seed(seed))


def window_jacobian(f, x, consumers, probe_matrix=None, heads=None) -> torch.Tensor:
    """``(c, T, d)``: d (G f(x)) / d delta for one window ``x`` of shape (1, T).

    ``delta`` (T, d) is added to the input of every consumer; with ``heads=(layer, rows)`` it
    reaches only the output features ``rows`` of that linear layer instead (``y[rows] += W[rows]
    delta``: the path through those heads).
    """
    shapes = []
    target = consumers[0] if heads is None else heads[0]
    probe = target.register_forward_pre_hook(lambda m, a: shapes.append(a[0].shape))
    with torch.no_grad():
        f(x)
    probe.remove()
    length, d = shapes[0][1], shapes[0][2]

    def g(delta):
        def add(module, args):
            return (args[0] + delta, *args[1:])

        def add_to_rows(module, args, output):
            layer, rows = heads
            extra = torch.zeros_like(output)
            extra[..., rows] = delta @ layer.weight[rows].T
            return output + extra

        if heads is None:
            handles = [m.register_forward_pre_hook(add) for m in consumers]
        else:
            handles = [heads[0].register_forward_hook(add_to_rows)]
        try:
            out = f(x).reshape(-1)
        finally:
            for h in handles:
                h.remove()
        return out if probe_matrix is None else probe_matrix @ out

    zero = torch.zeros(length, d, dtype=torch.float64)
    return torch.autograd.functional.jacobian(g, zero)


def reference_agop(f, consumers, ids, probes=None, heads=None) -> torch.Tensor:
    """Mean over windows and positions of J^T J (``probes(i)``: window i's (k, c) matrix)."""
    total = None
    count = 0
    for i in range(ids.shape[0]):
        probe_matrix = None if probes is None else probes(i)
        jac = window_jacobian(f, ids[i : i + 1], consumers, probe_matrix, heads)
        for t in range(jac.shape[1]):
            term = jac[:, t, :].T @ jac[:, t, :]
            total = term if total is None else total + term
        count += jac.shape[1]
    return total / count


def rel_error(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def power(matrix: torch.Tensor, alpha: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).pow(alpha)) @ vectors.T


def test_gpt2_fused_attention_and_mlp_inputs_match_reference():
    model = tiny_gpt2()
    ids = tokens()
    f = SelectedOutput(model, field="logits", positions="last")
    analysis = analyze_blocks(model, ids, probes=None, null=(), fit_alpha=False)
    for block in (0, 1):
        h = model.transformer.h[block]
        for role, layer in (("attention", h.attn.c_attn), ("mlp", h.mlp.c_fc)):
            reference = reference_agop(f, [layer], ids)
            assert rel_error(analysis.agop[f"taps.block{block}_{role}"], reference) <= REL_TOL
            # the NFM of GPT-2's Conv1D (weight stored (in, out)) is weight @ weight.T
            nfm = layer.weight.detach() @ layer.weight.detach().T
            assert torch.allclose(analysis.nfm[f"taps.block{block}_{role}"], nfm, rtol=1e-12)
            row = next(r for r in analysis.rows if r["block"] == block and r["role"] == role)
            expected = matrix_correlation(nfm, power(reference, 0.5), kind="pearson")
            assert row["pearson_a0.5"] == pytest.approx(expected, abs=1e-9)


def test_bert_shared_qkv_input_and_each_projection_match_reference():
    model = tiny_bert()
    ids = tokens(seed=1)
    f = SelectedOutput(model, field="last_hidden_state", pool="mean")
    attention = model.encoder.layer[1].attention.self
    consumers = [attention.query, attention.key, attention.value]
    base = "model.encoder.layer.1.attention.self"
    tapped = TappedModel(f, {"shared": [f"{base}.query", f"{base}.key", f"{base}.value"]})
    with tapped:
        agops = compute_agop(
            tapped,
            ids,
            layers=["taps.shared", f"net.{base}.query", f"net.{base}.value"],
            include_input=False,
        )
    assert rel_error(agops["taps.shared"], reference_agop(f, consumers, ids)) <= REL_TOL
    for name, layer in (("query", attention.query), ("value", attention.value)):
        reference = reference_agop(f, [layer], ids)
        assert rel_error(agops[f"net.{base}.{name}"], reference) <= REL_TOL
    # the shared input is not the sum of its parts: the cross terms matter
    parts = sum(reference_agop(f, [c], ids) for c in consumers)
    assert rel_error(parts, reference_agop(f, consumers, ids)) > 1e-3


def test_llama_gate_up_and_gqa_projections_with_a_gaussian_sketch_match_reference():
    model = tiny_llama()
    ids = tokens(seed=2)
    f = SelectedOutput(model, field="logits", positions="last")
    sketch = GaussianSketch(5, seed=3)

    def probes(i):  # window i's own probes, as the engine draws them
        return sketch.probes(i, 1, 40, torch.float64, torch.device("cpu"))[:, 0, :]

    analysis = analyze_blocks(
        model, ids, probes=5, seed=3, null=(), fit_alpha=False, blocks=[1], per_projection=True
    )
    layer = model.model.layers[1]
    mlp = [layer.mlp.gate_proj, layer.mlp.up_proj]
    reference = reference_agop(f, mlp, ids, probes)
    assert rel_error(analysis.agop["taps.block1_mlp"], reference) <= REL_TOL
    stacked = torch.cat([m.weight.detach() for m in mlp])
    assert torch.allclose(analysis.nfm["taps.block1_mlp"], stacked.T @ stacked, rtol=1e-12)
    # k_proj has num_key_value_heads * head_dim = 8 outputs; its own AGOP and trace
    k_reference = reference_agop(f, [layer.self_attn.k_proj], ids, probes)
    row = next(r for r in analysis.rows if r["role"] == "k")
    assert row["layer"] == "model.layers.1.self_attn.k_proj"
    assert row["agop_trace"] == pytest.approx(float(torch.trace(k_reference)), rel=1e-10)


def test_per_head_rows_of_a_gqa_llama_match_reference():
    model = tiny_llama()
    ids = tokens(n=2, seed=4)
    f = SelectedOutput(model, field="logits", positions="last")
    assert find_blocks(model)[0].heads == {
        "model.layers.0.self_attn.q_proj": 4,
        "model.layers.0.self_attn.k_proj": 2,
        "model.layers.0.self_attn.v_proj": 2,
    }
    analysis = analyze_blocks(
        model, ids, probes=None, null=(), fit_alpha=False, blocks=[0], per_head=True
    )
    roles = [r["role"] for r in analysis.rows]
    heads = [f"q[head={h}]" for h in range(4)] + ["k[head=0]", "k[head=1]", "v[head=0]"]
    assert roles[:11] == ["attention", *heads, "v[head=1]", "mlp", "gate"]
    attention = model.model.layers[0].self_attn
    for role, layer, rows in (
        ("q[head=2]", attention.q_proj, slice(8, 12)),  # head_dim = 16 / 4 = 4
        ("v[head=1]", attention.v_proj, slice(4, 8)),  # 2 key/value heads of 4
    ):
        reference = reference_agop(f, [], ids, heads=(layer, rows))
        row = next(r for r in analysis.rows if r["role"] == role)
        w = layer.weight.detach()[rows]
        assert row["d"] == 16
        assert row["agop_trace"] == pytest.approx(float(torch.trace(reference)), rel=1e-10)
        expected = matrix_correlation(w.T @ w, power(reference, 0.5), kind="pearson")
        assert row["pearson_a0.5"] == pytest.approx(expected, abs=1e-9)
