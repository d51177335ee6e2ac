"""Steering a tiny random GPT-2: the block output is shifted by exactly alpha * v, nothing stays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from tiny_transformers import one_thread, tiny_gpt2  # noqa: E402, F401

from nfm.exceptions import NFMInputError  # noqa: E402
from nfm.probes import steered_generations, steering  # noqa: E402


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class DigitTokenizer:
    """Characters to ids 1..39 and back (no padding token: id 0 is used)."""

    pad_token_id = None

    def __call__(self, text: str) -> dict:
        return {"input_ids": [1 + ord(c) % 39 for c in text]}

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(str(i) for i in ids)


def manual_logits(model: nn.Module, ids: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """GPT-2 written out block by block, with ``shift`` added to block 0's output."""
    core = model.transformer
    h = core.wte(ids) + core.wpe(torch.arange(ids.shape[1])[None])
    for i, block in enumerate(core.h):
        out = block(h)
        h = out[0] if isinstance(out, tuple) else out
        if i == 0:
            h = h + shift
    return model.lm_head(core.ln_f(h))


def test_block_output_is_shifted_by_alpha_times_v():
    model = tiny_gpt2(n_positions=32)
    ids = torch.randint(1, 40, (3, 7), generator=torch.Generator().manual_seed(0))
    v = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        plain = model(ids).logits
        with steering(model, 0, v, alpha=2.5):
            steered = model(ids).logits
        expected = manual_logits(model, ids, 2.5 * v)
        unshifted = manual_logits(model, ids, torch.zeros(64, dtype=torch.float64))
    np.testing.assert_allclose(steered, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(plain, unshifted, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(steered, plain)
    assert hooks_left(model) == 0


def test_zero_strength_is_the_plain_model_and_nothing_stays():
    model = tiny_gpt2(n_positions=32).train()
    tok = DigitTokenizer()
    v = np.random.default_rng(0).standard_normal(64)
    out = steered_generations(model, tok, ["abc", "hello"], 1, v, [0.0, 40.0], max_new_tokens=5)
    assert [(o["alpha"], o["prompt"]) for o in out] == [
        (0.0, "abc"),
        (0.0, "hello"),
        (40.0, "abc"),
        (40.0, "hello"),
    ]
    assert model.training and all(m.training for m in model.modules())
    assert hooks_left(model) == 0
    model.eval()
    ids = torch.tensor([tok("hello")["input_ids"]])
    plain = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out[1]["continuation"] == tok.decode(plain[0, ids.shape[1] :].tolist())


def test_bad_directions_are_refused_and_the_hook_is_removed():
    model = tiny_gpt2(n_positions=32)
    ids = torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(NFMInputError, match="64"):
        with steering(model, 0, np.ones(10)):
            model(ids)
    assert hooks_left(model) == 0
    with pytest.raises(NFMInputError, match="1-D"):
        with steering(model, 0, np.ones((2, 64))):
            pass
    with pytest.raises(NFMInputError, match="alpha"):
        with steering(model, 0, np.ones(64), alpha=float("nan")):
            pass
    with pytest.raises(NFMInputError, match="alphas"):
        steered_generations(model, DigitTokenizer(), ["a"], 0, np.ones(64), [])
