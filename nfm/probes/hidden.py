r"""Hidden states of a transformer's blocks: one vector per text, read by forward hooks.

A transformer's blocks (Llama's ``model.layers``, GPT-2's ``transformer.h``, BERT's
``encoder.layer``) are found as the :class:`torch.nn.ModuleList` of identical modules that
holds the most parameters (:func:`transformer_blocks`), or named by the caller. A forward hook
on each selected block keeps its output :math:`H^{(b)} \in \mathbb{R}^{T \times d}` (the first
element when the block returns a tuple); the hooks are removed when the extraction ends, also
on an error, and the model's modes and ``requires_grad`` flags are restored
(:class:`nfm.models.state.ModelState`).

Each text of ``T`` tokens, of which the positions with ``attention_mask = 1`` are real, is
reduced to one vector per block:

* ``pooling="last"``: :math:`h = H_{t^*}`, :math:`t^*` the last real position (right or left
  padding alike); for a causal model this is the state that has read the whole text;
* ``pooling="mean"``: :math:`h = \frac{1}{|R|} \sum_{t \in R} H_t` over the real positions
  :math:`R`.

The forward pass of a batch is stopped as soon as every selected block has produced its output
(the rest of the model, e.g. a language model's output head, is never computed).

Padding is built here (:func:`encode_texts`), so the tokenizer is never modified.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.models.state import ModelState, model_device_dtype

__all__ = ["POOLINGS", "block_hidden_states", "encode_texts", "transformer_blocks"]

#: The ways a text's token states are reduced to one vector.
POOLINGS: tuple[str, ...] = ("last", "mean")

BlockSpec = int | str


def transformer_blocks(model: nn.Module) -> list[str]:
    """Module names of the blocks of ``model``, in model order.

    The blocks are the children of the :class:`~torch.nn.ModuleList` whose children all have
    one type and which holds the most parameters among such lists.

    Raises
    ------
    LayerSelectionError
        ``model`` has no such list (then name the blocks with ``blocks=``).
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise LayerSelectionError(
            f"{type(model).__name__} has no nn.ModuleList of identical blocks; pass the block "
            "module names with blocks=[...]"
        )
    _, prefix, modules = best
    return [f"{prefix}.{i}" if prefix else str(i) for i in range(len(modules))]


def _block_sort_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_blocks(model: nn.Module, blocks: Sequence[BlockSpec] | BlockSpec | None) -> list[str]:
    """Block module names from indices into :func:`transformer_blocks` or module names.

    ``None`` selects every block. The result is in model order, without repeats.

    Raises
    ------
    LayerSelectionError
        An index out of range or a name that is not a module of ``model``.
    """
    modules = dict(model.named_modules())
    if blocks is None:
        return transformer_blocks(model)
    items = [blocks] if isinstance(blocks, (int, str)) else list(blocks)
    if not items:
        raise LayerSelectionError("blocks is empty; give block indices or module names")
    found: list[str] = []
    all_blocks: list[str] | None = None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer, str)):
            raise LayerSelectionError(
                f"blocks must hold block indices (int) or module names (str); got {item!r}"
            )
        if isinstance(item, str):
            if item not in modules or item == "":
                raise LayerSelectionError(
                    f"blocks: {item!r} is not a submodule of {type(model).__name__}"
                )
            name = item
        else:
            if all_blocks is None:
                all_blocks = transformer_blocks(model)
            index = int(item)
            if not -len(all_blocks) <= index < len(all_blocks):
                raise LayerSelectionError(
                    f"blocks: index {index} is out of range for {len(all_blocks)} blocks"
                )
            name = all_blocks[index]
        if name not in found:
            found.append(name)
    order = {name: i for i, name in enumerate(modules)}
    return sorted(found, key=lambda n: (order[n], _block_sort_key(n)))


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``texts``, padded to the longest (the tokenizer untouched).

    Each text is tokenised on its own (``tokenizer(text)["input_ids"]``, special tokens as the
    tokenizer adds them); the rows are padded with ``tokenizer.pad_token_id`` (0 when it has
    none; padded positions are masked out) on ``padding_side``.

    Returns
    -------
    input_ids, attention_mask : (n, T) int64 tensors

    Raises
    ------
    NFMInputError
        No texts, a text that is not a string or has no tokens, or a bad ``padding_side``.
    """
    if padding_side not in ("right", "left"):
        raise NFMInputError(f"padding_side must be 'right' or 'left'; got {padding_side!r}")
    if isinstance(texts, str) or len(texts) == 0:
        raise NFMInputError("texts must be a non-empty sequence of strings")
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise NFMInputError(f"texts[{i}] must be a string; got {type(text).__name__}")
        ids = list(tokenizer(text)["input_ids"])
        if not ids:
            raise NFMInputError(f"texts[{i}] ({text!r}) has no tokens")
        rows.append(ids)
    length = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, ids in enumerate(rows):
        span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
        input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
        mask[i, span] = 1
    return input_ids, mask


def _check_inputs(input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise NFMInputError(
            "input_ids must be a 2-D (n_texts, n_tokens) integer tensor; got "
            f"{type(input_ids).__name__} of shape {tuple(getattr(input_ids, 'shape', ()))}"
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise NFMInputError(f"input_ids must hold integer token ids; got dtype {input_ids.dtype}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise NFMInputError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return input_ids, torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise NFMInputError(
            f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}; "
            f"got shape {tuple(getattr(attention_mask, 'shape', ()))}"
        )
    values = torch.unique(attention_mask)
    if not bool(((values == 0) | (values == 1)).all()):
        raise NFMInputError(f"attention_mask must hold 0 and 1 only; got values {values.tolist()}")
    empty = torch.nonzero(attention_mask.sum(dim=1) == 0).flatten()
    if empty.numel():
        raise NFMInputError(f"attention_mask has rows without a real token: {empty.tolist()[:10]}")
    return input_ids, attention_mask.long()


class _AllBlocksRead(Exception):
    """Raised by the last hook of a batch to stop the forward pass (caught here)."""


def _block_output(output: Any, name: str) -> torch.Tensor:
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 3:
        raise LayerSelectionError(
            f"block {name!r} must return a (batch, tokens, features) tensor (or a tuple whose "
            f"first element is one); got {type(output).__name__} of shape "
            f"{tuple(getattr(output, 'shape', ()))}"
        )
    return output


def pool_states(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``(b, T, d)`` token states to ``(b, d)`` text vectors (see the module docstring)."""
    mask = mask.to(states.device)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * (positions + 1)).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1)


def block_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    blocks: Sequence[BlockSpec] | BlockSpec | None = None,
    pooling: str = "last",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """One pooled hidden-state vector per text and block (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Called as ``model(input_ids=..., attention_mask=...)`` (a Hugging Face model), in eval
        mode, without gradients; returned unchanged.
    input_ids : (n, T) integer tensor
    attention_mask : (n, T) tensor of 0 and 1, optional
        Default: every position is real.
    blocks : int, str or sequence of them, optional
        Block indices into :func:`transformer_blocks` or module names; default every block.
    pooling : {"last", "mean"}
    batch_size : int
        Texts per forward pass.

    Returns
    -------
    dict[str, numpy.ndarray]
        Block name -> ``(n, d)`` float64 array, in model order.

    Raises
    ------
    NFMInputError, LayerSelectionError
        Bad inputs, or a block that is not reached or does not return token states.
    """
    if pooling not in POOLINGS:
        raise NFMInputError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NFMInputError(f"batch_size must be a positive int; got {batch_size!r}")
    input_ids, mask = _check_inputs(input_ids, attention_mask)
    names = resolve_blocks(model, blocks)
    modules = dict(model.named_modules())
    device, _ = model_device_dtype(model)
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    current: dict[str, torch.Tensor] = {}
    batch_mask: list[torch.Tensor] = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            states = _block_output(output, name)
            current[name] = pool_states(states.detach(), batch_mask[0], pooling)
            if len(current) == len(names):
                raise _AllBlocksRead

        return hook

    handles = []
    with ModelState(model, mode="eval"):
        try:
            for name in names:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            with torch.no_grad():
                for start in range(0, input_ids.shape[0], batch_size):
                    ids = input_ids[start : start + batch_size]
                    part = mask[start : start + batch_size]
                    batch_mask[:] = [part]
                    current.clear()
                    try:
                        model(input_ids=ids.to(device), attention_mask=part.to(device))
                    except _AllBlocksRead:
                        pass
                    missing = [n for n in names if n not in current]
                    if missing:
                        raise LayerSelectionError(
                            f"blocks {missing} were not called by the forward pass"
                        )
                    for name in names:
                        collected[name].append(current[name].to("cpu", torch.float64))
        finally:
            for handle in handles:
                handle.remove()
    return {name: torch.cat(parts).numpy() for name, parts in collected.items()}
