"""Output selection of Hugging Face models, shared-input taps and the model's state afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from tiny_transformers import one_thread  # noqa: E402, F401

from nfm.exceptions import LayerSelectionError, NFMInputError  # noqa: E402
from nfm.hf.analysis import analyze_blocks  # noqa: E402
from nfm.hf.blocks import find_blocks  # noqa: E402
from nfm.hf.outputs import SelectedOutput  # noqa: E402
from nfm.hf.taps import TappedModel  # noqa: E402


@pytest.fixture
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=30, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture
def bert():
    torch.manual_seed(1)
    config = transformers.BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=30, max_position_embeddings=16,
    )  # fmt: skip
    return transformers.BertModel(config).eval()


IDS = torch.tensor([[1, 5, 7, 2, 9, 3], [4, 4, 8, 1, 0, 6]])


def test_selected_output_picks_the_field_and_positions(gpt2):
    with torch.no_grad():
        logits = gpt2(input_ids=IDS).logits  # (2, 6, 30)
        assert torch.equal(SelectedOutput(gpt2)(IDS), logits)
        assert torch.equal(SelectedOutput(gpt2, positions="last")(IDS), logits[:, -1])
        assert torch.equal(SelectedOutput(gpt2, positions=2)(IDS), logits[:, 2])
        mask = torch.tensor([True, False, True, False, False, True])
        assert torch.equal(SelectedOutput(gpt2, positions=mask)(IDS), logits[:, [0, 2, 5]])
        pooled = SelectedOutput(gpt2, positions=mask, pool="mean")(IDS)
        assert torch.allclose(pooled, logits[:, [0, 2, 5]].mean(dim=1))
        kept = SelectedOutput(gpt2, positions="last", call_kwargs={"logits_to_keep": 1})(IDS)
        assert torch.allclose(kept, logits[:, -1], atol=1e-6)


def test_selected_output_mean_pools_an_encoder(bert):
    with torch.no_grad():
        hidden = bert(input_ids=IDS).last_hidden_state
        out = SelectedOutput(bert, field="last_hidden_state", pool="mean")(IDS)
    assert out.shape == (2, 16)
    assert torch.allclose(out, hidden.mean(dim=1))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"positions": "first"}, "positions must be"),
        ({"positions": True}, "positions must be"),
        ({"positions": torch.tensor([1, 0])}, "boolean mask"),
        ({"positions": torch.zeros(6, dtype=torch.bool)}, "at least one True"),
        ({"positions": "last", "pool": "mean"}, "averages over several positions"),
        ({"pool": "max"}, "pool must be"),
        ({"field": 3}, "field must be"),
        ({"call_kwargs": {"input_ids": IDS}}, "must not hold 'input_ids'"),
    ],
)
def test_selected_output_rejects_bad_settings(gpt2, kwargs, words):
    with pytest.raises(NFMInputError, match=words):
        SelectedOutput(gpt2, **kwargs)


def test_selected_output_rejects_missing_fields_and_mismatched_masks(gpt2):
    with pytest.raises(NFMInputError, match="'pooler_output' is not in the model's output"):
        SelectedOutput(gpt2, field="pooler_output")(IDS)
    with pytest.raises(NFMInputError, match="mask has 4 entries but the output has 6"):
        SelectedOutput(gpt2, positions=torch.tensor([True, False, True, True]))(IDS)
    with pytest.raises(NFMInputError, match="out of range for 6 positions"):
        SelectedOutput(gpt2, positions=6)(IDS)


def test_find_blocks_recognises_the_families(gpt2, bert):
    blocks = find_blocks(gpt2)
    assert [(b.index, b.attention, b.mlp) for b in blocks] == [
        (0, ("transformer.h.0.attn.c_attn",), ("transformer.h.0.mlp.c_fc",)),
        (1, ("transformer.h.1.attn.c_attn",), ("transformer.h.1.mlp.c_fc",)),
    ]
    assert find_blocks(bert)[1].attention == tuple(
        f"encoder.layer.1.attention.self.{p}" for p in ("query", "key", "value")
    )
    with pytest.raises(LayerSelectionError, match="no transformer block of a recognised family"):
        find_blocks(nn.Sequential(nn.Linear(3, 3)))


def _state(model: nn.Module) -> list:
    return [
        (name, m.training, len(m._forward_pre_hooks), len(m._forward_hooks))
        for name, m in model.named_modules()
    ] + [(name, p.requires_grad) for name, p in model.named_parameters()]


def test_the_model_comes_back_unchanged_also_on_error(bert):
    bert.train()
    bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    before = _state(bert)
    weights = {k: v.clone() for k, v in bert.state_dict().items()}
    analyze_blocks(
        bert,
        IDS,
        field="last_hidden_state",
        pool="mean",
        positions="all",
        probes=3,
        null=("shuffled", "reinit"),
    )
    assert _state(bert) == before
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(NFMInputError, match="blocks \\[7\\] not in the model"):
        analyze_blocks(bert, IDS, field="last_hidden_state", blocks=[7])
    with pytest.raises(NFMInputError, match="'logits' is not in the model's output"):
        analyze_blocks(bert, IDS, field="logits")  # fails inside the pass
    assert _state(bert) == before


def test_analyze_blocks_rejects_bad_arguments(bert):
    with pytest.raises(NFMInputError, match="tokens must be an integer tensor"):
        analyze_blocks(bert, IDS.float(), field="last_hidden_state")
    with pytest.raises(NFMInputError, match="null must hold kinds"):
        analyze_blocks(bert, IDS, field="last_hidden_state", null=("permuted",))
    with pytest.raises(NFMInputError, match="k must be a positive int"):
        analyze_blocks(bert, IDS, field="last_hidden_state", probes=0)


def test_tapped_model_routes_only_inside_its_context(bert):
    before = _state(bert)
    base = "model.encoder.layer.0.attention.self"
    tapped = TappedModel(
        SelectedOutput(bert, field="last_hidden_state"),
        {"qkv": [f"{base}.query", f"{base}.key", f"{base}.value"]},
    )
    with pytest.raises(NFMInputError, match="enter it first"):
        tapped(IDS)
    seen = []
    hook = tapped.taps["qkv"].register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    with tapped, torch.no_grad():
        out = tapped(IDS)
    hook.remove()
    assert seen == [torch.Size([2, 6, 16])]  # one call for the three consumers
    with torch.no_grad():
        assert torch.equal(out, bert(input_ids=IDS).last_hidden_state)
    assert _state(bert) == before


def test_tapped_model_refuses_consumers_that_do_not_share_an_input(bert):
    layer = "model.encoder.layer.0"
    tapped = TappedModel(
        SelectedOutput(bert, field="last_hidden_state"),
        {"mixed": [f"{layer}.attention.self.query", f"{layer}.intermediate.dense"]},
    )
    with tapped, pytest.raises(LayerSelectionError, match="do not receive the same input"):
        tapped(IDS)
    with pytest.raises(LayerSelectionError, match="no layer"):
        TappedModel(SelectedOutput(bert, field="last_hidden_state"), {"x": ["model.nothing"]})
