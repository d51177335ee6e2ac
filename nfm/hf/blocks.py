"""Where the attention and MLP projections of each transformer block are, by family.

:func:`find_blocks` reads a Hugging Face model's module names and returns, per block in model
order, the layers that read the attention input (query / key / value, or GPT-2's fused
``c_attn``) and those that read the MLP input (BERT's ``intermediate.dense``, Llama's
``gate_proj`` and ``up_proj``, GPT-2's ``c_fc``), with the numbers of heads from the config.
The families are recognised by these names; any other architecture is refused with a message
listing what is recognised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models import HeadSplit

__all__ = ["BlockLayers", "find_blocks"]

# (family, attention pattern, MLP pattern): the block prefix ends with the block index
_FAMILIES: tuple[tuple[str, str, str], ...] = (
    (
        "bert",
        r"^(?P<block>(?:.*\.)?layer\.(?P<index>\d+))\.attention\.self\.(?P<part>query|key|value)$",
        r"^(?P<block>(?:.*\.)?layer\.(?P<index>\d+))\.intermediate\.(?P<part>dense)$",
    ),
    (
        "llama",
        r"^(?P<block>(?:.*\.)?layers\.(?P<index>\d+))\.self_attn\.(?P<part>q_proj|k_proj|v_proj)$",
        r"^(?P<block>(?:.*\.)?layers\.(?P<index>\d+))\.mlp\.(?P<part>gate_proj|up_proj)$",
    ),
    (
        "gpt2",
        r"^(?P<block>(?:.*\.)?h\.(?P<index>\d+))\.attn\.(?P<part>c_attn)$",
        r"^(?P<block>(?:.*\.)?h\.(?P<index>\d+))\.mlp\.(?P<part>c_fc)$",
    ),
)

_PART_ORDER = {
    "query": 0,
    "key": 1,
    "value": 2,
    "q_proj": 0,
    "k_proj": 1,
    "v_proj": 2,
    "gate_proj": 0,
    "up_proj": 1,
}


@dataclass(frozen=True)
class BlockLayers:
    """The projections of one transformer block.

    Attributes
    ----------
    index : int
        Block number (0 first).
    prefix : str
        The block's module name.
    attention : tuple of str
        Layers reading the attention input: (query, key, value), or one fused layer.
    mlp : tuple of str
        Layers reading the MLP input.
    heads : dict[str, int or HeadSplit]
        Number of heads of each attention projection (key and value have
        ``num_key_value_heads`` under grouped-query attention); a fused ``c_attn`` has
        ``HeadSplit(n_head, ("q", "k", "v"))``. The ``heads=`` argument of
        :func:`nfm.compute_agop`, with the model's layer names.
    family : str
        ``"bert"``, ``"llama"`` or ``"gpt2"``.
    """

    index: int
    prefix: str
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    heads: dict[str, int | HeadSplit]
    family: str


def _config_heads(config: Any) -> tuple[int | None, int | None]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    return heads, kv


def find_blocks(model: nn.Module, config: Any = None) -> list[BlockLayers]:
    """The attention and MLP input layers of every transformer block of ``model``.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face BERT-, Llama- or GPT-2-family model, possibly wrapped (names may have
        any prefix).
    config : transformers config, optional
        For the numbers of heads (default ``model.config`` of the first module that has one).

    Raises
    ------
    LayerSelectionError
        No block of a recognised family is found, or a block lacks its attention or MLP layers.
    """
    names = [name for name, _ in model.named_modules() if name]
    if config is None:
        config = next((m.config for m in model.modules() if hasattr(m, "config")), None)
    n_heads, n_kv = _config_heads(config)
    for family, attention_pattern, mlp_pattern in _FAMILIES:
        attention: dict[str, list[tuple[int, str]]] = {}
        mlp: dict[str, list[tuple[int, str]]] = {}
        indices: dict[str, int] = {}
        for name in names:
            for pattern, target in ((attention_pattern, attention), (mlp_pattern, mlp)):
                match = re.match(pattern, name)
                if match:
                    prefix = match["block"]
                    indices[prefix] = int(match["index"])
                    target.setdefault(prefix, []).append((_PART_ORDER.get(match["part"], 0), name))
        if not attention:
            continue
        incomplete = sorted(set(attention) ^ set(mlp))
        if incomplete:
            raise LayerSelectionError(
                f"{family} blocks {incomplete} lack their attention or MLP projections"
            )
        blocks = []
        for prefix in attention:  # model order
            attn = tuple(n for _, n in sorted(attention[prefix]))
            heads: dict[str, int | HeadSplit] = {}
            if n_heads:
                for name in attn:
                    part = name.rsplit(".", 1)[1]
                    if part == "c_attn":  # fused: query, key, value parts of n_heads heads
                        heads[name] = HeadSplit(n_heads, ("q", "k", "v"))
                    elif part in ("key", "k_proj", "value", "v_proj"):
                        heads[name] = n_kv
                    else:
                        heads[name] = n_heads
            blocks.append(
                BlockLayers(
                    index=indices[prefix],
                    prefix=prefix,
                    attention=attn,
                    mlp=tuple(n for _, n in sorted(mlp[prefix])),
                    heads=heads,
                    family=family,
                )
            )
        return blocks
    raise LayerSelectionError(
        f"no transformer block of a recognised family in {type(model).__name__}: nfm.hf knows "
        "BERT (layer.N.attention.self.query/key/value, layer.N.intermediate.dense), Llama "
        "(layers.N.self_attn.q_proj/k_proj/v_proj, layers.N.mlp.gate_proj/up_proj) and GPT-2 "
        "(h.N.attn.c_attn, h.N.mlp.c_fc) module names"
    )
