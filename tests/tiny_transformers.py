"""Shared pieces of the transformer tests: a one-thread fixture and a tiny random GPT-2.

Test modules import ``one_thread`` (pytest then applies the autouse fixture to that module) and
call :func:`tiny_gpt2`; they ``pytest.importorskip("transformers")`` before importing this.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Run each test with one torch thread (small models: threads only add noise and time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt2(n_positions: int = 16) -> torch.nn.Module:
    """A seeded 2-layer, 2-head, width-64 GPT-2 with a 40-token vocabulary, float64, eval mode."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=40, n_positions=n_positions, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).double().eval()
