"""Hidden states per block on a tiny random GPT-2, against a forward written out in the test.

The reference runs each text on its own, unpadded, through the embeddings and the blocks called
one after the other (no hooks), and pools the token states of each block by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from tiny_transformers import one_thread, tiny_gpt2  # noqa: E402, F401

from nfm.exceptions import LayerSelectionError, NFMInputError  # noqa: E402
from nfm.probes import block_hidden_states, encode_texts, transformer_blocks  # noqa: E402
from nfm.probes.hidden import pool_states  # noqa: E402


def reference_states(model: nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """Each block's (T, d) output for one unpadded text, the blocks called in turn."""
    core = model.transformer
    x = torch.tensor([ids])
    h = core.wte(x) + core.wpe(torch.arange(len(ids))[None])
    out = []
    with torch.no_grad():
        for block in core.h:
            result = block(h)
            h = result[0] if isinstance(result, tuple) else result
            out.append(h[0].clone())
    return out


def padded(rows: list[list[int]], pad: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


ROWS = [[3, 5, 9, 11, 2], [4, 4, 8], [1, 2, 3, 4, 5, 6, 7], [30]]


def test_transformer_blocks_finds_gpt2_blocks():
    assert transformer_blocks(tiny_gpt2()) == ["transformer.h.0", "transformer.h.1"]


def test_transformer_blocks_refuses_a_model_without_blocks():
    with pytest.raises(LayerSelectionError, match="blocks="):
        transformer_blocks(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooled_states_match_the_unpadded_reference(pooling):
    model = tiny_gpt2()
    ids, mask = padded(ROWS)
    got = block_hidden_states(model, ids, mask, pooling=pooling, batch_size=3)
    assert list(got) == ["transformer.h.0", "transformer.h.1"]
    for i, row in enumerate(ROWS):
        ref = reference_states(model, row)
        for b, name in enumerate(got):
            expected = ref[b][-1] if pooling == "last" else ref[b].mean(dim=0)
            np.testing.assert_allclose(got[name][i], expected.numpy(), rtol=1e-10, atol=1e-10)


def test_block_selection_by_index_and_name():
    model = tiny_gpt2()
    ids, mask = padded(ROWS)
    by_index = block_hidden_states(model, ids, mask, blocks=[-1])
    by_name = block_hidden_states(model, ids, mask, blocks="transformer.h.1")
    assert list(by_index) == list(by_name) == ["transformer.h.1"]
    np.testing.assert_array_equal(by_index["transformer.h.1"], by_name["transformer.h.1"])


def test_pool_states_last_real_position_with_left_padding():
    states = torch.arange(2 * 4 * 1, dtype=torch.float64).reshape(2, 4, 1)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert pool_states(states, mask, "last")[:, 0].tolist() == [3.0, 6.0]
    assert pool_states(states, mask, "mean")[:, 0].tolist() == [2.5, 5.0]


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_model_comes_back_unchanged_also_after_an_error():
    model = tiny_gpt2().train()
    model.transformer.h[0].attn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    ids, mask = padded(ROWS)
    block_hidden_states(model, ids, mask)
    bad = ids.clone()
    bad[0, 0] = 1000  # out of the vocabulary: the embedding raises inside the forward
    with pytest.raises(IndexError):
        block_hidden_states(model, bad, mask)
    assert hooks_left(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_eval_mode_inside_gives_deterministic_states_for_a_model_in_train_mode():
    model = tiny_gpt2().train()  # dropout on: eval mode inside the extraction
    ids, mask = padded(ROWS)
    a = block_hidden_states(model, ids, mask)
    b = block_hidden_states(model, ids, mask)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


class _Tokenizer:
    pad_token_id = None

    def __call__(self, text: str) -> dict:
        return {"input_ids": [ord(c) % 40 for c in text]}


def test_encode_texts_pads_both_sides_without_touching_the_tokenizer():
    tok = _Tokenizer()
    ids, mask = encode_texts(tok, ["abc", "a"])
    assert ids.tolist() == [[17, 18, 19], [17, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = encode_texts(tok, ["abc", "a"], padding_side="left")
    assert ids.tolist()[1] == [0, 0, 17] and mask.tolist()[1] == [0, 0, 1]
    assert tok.pad_token_id is None
    with pytest.raises(NFMInputError, match="non-empty"):
        encode_texts(tok, [])
    with pytest.raises(NFMInputError, match="no tokens"):
        encode_texts(tok, ["abc", ""])
    with pytest.raises(NFMInputError, match="padding_side"):
        encode_texts(tok, ["a"], padding_side="middle")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pooling": "max"}, NFMInputError, "pooling"),
        ({"batch_size": 0}, NFMInputError, "batch_size"),
        ({"blocks": [5]}, LayerSelectionError, "out of range"),
        ({"blocks": ["transformer.h.9"]}, LayerSelectionError, "not a submodule"),
        ({"blocks": []}, LayerSelectionError, "empty"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    ids, mask = padded(ROWS)
    with pytest.raises(error, match=match):
        block_hidden_states(tiny_gpt2(), ids, mask, **kwargs)


def test_bad_inputs_are_refused():
    model = tiny_gpt2()
    ids, mask = padded(ROWS)
    with pytest.raises(NFMInputError, match="integer"):
        block_hidden_states(model, ids.double(), mask)
    with pytest.raises(NFMInputError, match="2-D"):
        block_hidden_states(model, ids[0], mask)
    with pytest.raises(NFMInputError, match="shape of input_ids"):
        block_hidden_states(model, ids, mask[:, :2])
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(NFMInputError, match="without a real token"):
        block_hidden_states(model, ids, empty)
    with pytest.raises(NFMInputError, match="0 and 1"):
        block_hidden_states(model, ids, mask * 2)
