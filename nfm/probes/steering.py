r"""Steering: add :math:`\alpha v` to one block's output while the model runs or generates.

:func:`steering` is a context manager that registers a forward hook on a block: its output
:math:`H \in \mathbb{R}^{b \times T \times d}` (or the first element of the tuple it returns)
becomes :math:`H + \alpha v` at every position, so every later block, and every token generated
while the hook is in place (the cached keys and values included), reads the shifted state. The
hook is removed on exit, also on an error; the weights are never touched.

:func:`steered_generations` decodes greedily from fixed prompts once per strength
:math:`\alpha` (``alpha = 0`` is the model itself), with the prompts left-padded into one batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nfm.exceptions import NFMInputError
from nfm.models.state import ModelState, model_device_dtype
from nfm.probes.hidden import BlockSpec, encode_texts, resolve_blocks

__all__ = ["steered_generations", "steering"]


def _check_vector(vector: Any, alpha: float) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(vector) if not isinstance(vector, torch.Tensor) else vector)
    if v.ndim != 1 or v.numel() == 0 or not v.is_floating_point():
        raise NFMInputError(
            f"direction must be a non-empty 1-D float vector; got shape {tuple(v.shape)}, "
            f"dtype {v.dtype}"
        )
    if not bool(torch.isfinite(v).all()):
        raise NFMInputError("direction holds NaN or infinite values")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise NFMInputError(f"alpha must be a finite number; got {alpha!r}")
    return v


@contextlib.contextmanager
def steering(
    model: nn.Module, block: BlockSpec, direction: Any, alpha: float = 1.0
) -> Iterator[nn.Module]:
    r"""Inside the block, ``block``'s output is :math:`H + \alpha\,v` (``v = direction``).

    Parameters
    ----------
    model : nn.Module
    block : int or str
        A block index into :func:`nfm.probes.transformer_blocks` or a module name.
    direction : (d,) array or tensor
        Added as it is (not normalised); ``d`` must be the block's output width.
    alpha : float

    Yields
    ------
    nn.Module
        ``model`` with the hook registered.

    Raises
    ------
    NFMInputError
        Bad direction or alpha, or a direction whose length is not the block's output width
        (raised by the first forward pass).
    """
    v = _check_vector(direction, alpha)
    (name,) = resolve_blocks(model, [block])
    module = dict(model.named_modules())[name]
    shift = float(alpha) * v

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        states = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(states, torch.Tensor) or states.shape[-1] != shift.numel():
            raise NFMInputError(
                f"direction has {shift.numel()} entries; block {name!r} outputs "
                f"{tuple(getattr(states, 'shape', ()))}"
            )
        states = states + shift.to(device=states.device, dtype=states.dtype)
        if isinstance(output, tuple):
            return (states, *output[1:])
        if isinstance(output, list):
            return [states, *output[1:]]
        return states

    handle = module.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


def steered_generations(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    block: BlockSpec,
    direction: Any,
    alphas: Sequence[float],
    *,
    max_new_tokens: int = 24,
) -> list[dict[str, Any]]:
    """Greedy continuations of ``prompts`` with ``alpha * direction`` added to ``block``.

    Parameters
    ----------
    model : a Hugging Face causal LM
        Returned unchanged (modes restored, no hook left).
    tokenizer
        Encodes the prompts (:func:`nfm.probes.hidden.encode_texts`, left padding) and decodes
        the new tokens (``skip_special_tokens=True``).
    prompts : sequence of str
    block : int or str
    direction : (d,) vector
    alphas : sequence of float
        Strengths; include 0 for the unsteered model.
    max_new_tokens : int

    Returns
    -------
    list of dict
        One per (alpha, prompt), alpha-major: ``alpha``, ``prompt``, ``continuation``.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise NFMInputError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise NFMInputError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if len(alphas) == 0:
        raise NFMInputError("alphas is empty; give at least one strength (0 = unsteered)")
    for alpha in alphas:
        _check_vector(direction, alpha)
    input_ids, mask = encode_texts(tokenizer, prompts, padding_side="left")
    device, _ = model_device_dtype(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[dict[str, Any]] = []
    with ModelState(model, mode="eval"), torch.no_grad():
        for alpha in alphas:
            with steering(model, block, direction, float(alpha)):
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                )
            new = out[:, input_ids.shape[1] :].cpu()
            for prompt, tokens in zip(prompts, new, strict=True):
                text = tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
                results.append({"alpha": float(alpha), "prompt": prompt, "continuation": text})
    return results
