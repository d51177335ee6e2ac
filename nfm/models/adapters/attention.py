r"""``nn.MultiheadAttention``: AGOPs of its query, key, value and output projections, per head.

``nn.MultiheadAttention`` applies its projections functionally (``in_proj_weight``,
``out_proj.weight`` inside ``F.multi_head_attention_forward``), so no hook on an ``nn.Linear``
sees them. Its probe (:class:`AttentionProbe`) recomputes the layer's output with an explicit,
equivalent forward pass in which the engine can differentiate:

.. math::

    q = x_q W_q^T + b_q, \quad k = x_k W_k^T + b_k, \quad v = x_v W_v^T + b_v, \qquad
    o_h = \mathrm{softmax}\!\Big(\frac{q_h k_h^T}{\sqrt{d_h}} + \text{mask}\Big) v_h, \qquad
    y = [o_1, \dots, o_H] W_o^T + b_o,

and gives, for the module named ``name``, the AGOPs

* ``name.q``, ``name.k``, ``name.v``: with respect to the input of the query / key / value
  projection (:math:`\partial f / \partial x_q = (\partial f / \partial q) W_q`, the inputs of
  the three projections taken as separate variables even when they are the same tensor); with
  ``heads={name: num_heads}``, ``name.q[head=h]`` etc.: with respect to the input of head
  :math:`h`'s slice :math:`W_{q,h}` alone, matched by the per-head NFM :math:`W_{q,h}^T W_{q,h}`;
* ``name.out_proj``: with respect to the input of the output projection (the concatenated
  heads), matched by :math:`W_o^T W_o`.

The average runs over samples and token positions. The first forward pass compares the explicit
output with the module's own and raises if they differ (an option this re-implementation does
not cover). ``add_bias_kv``, ``add_zero_attn`` and unbatched inputs are refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters.base import InputLayout, LayerAdapter
from nfm.models.adapters.probes import DeltaRegistry, HeadSplit, LayerProbe, head_key, new_delta

__all__ = ["AttentionProbe", "MultiheadAttentionAdapter", "attention_weights"]

_PARTS = ("q", "k", "v")


def attention_weights(module: nn.MultiheadAttention) -> dict[str, torch.Tensor]:
    """``{"q", "k", "v", "out_proj"}`` -> the detached ``(out, in)`` projection weights."""
    if module._qkv_same_embed_dim:
        wq, wk, wv = module.in_proj_weight.detach().chunk(3)
    else:
        wq = module.q_proj_weight.detach()
        wk = module.k_proj_weight.detach()
        wv = module.v_proj_weight.detach()
    return {"q": wq, "k": wk, "v": wv, "out_proj": module.out_proj.weight.detach()}


def _biases(module: nn.MultiheadAttention) -> tuple[torch.Tensor | None, ...]:
    if module.in_proj_bias is None:
        return None, None, None
    return tuple(module.in_proj_bias.chunk(3))


def _check_heads(module: nn.MultiheadAttention, name: str, split: HeadSplit | None) -> bool:
    if split is None:
        return False
    if split.parts or split.heads != module.num_heads:
        raise LayerSelectionError(
            f"heads[{name!r}] for nn.MultiheadAttention must be its num_heads="
            f"{module.num_heads} (q, k and v are split by the module itself); got {split!r}"
        )
    return True


def _merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    is_causal: bool,
    b: int,
    heads: int,
    tq: int,
    tk: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """The additive mask ``(b, H, Tq, Tk)`` (or broadcastable) of the module's conventions."""
    mask = None

    def additive(m: torch.Tensor) -> torch.Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, -math.inf)
        return m.to(dtype)

    if attn_mask is not None:
        m = additive(attn_mask)
        if m.ndim == 2:
            m = m.reshape(1, 1, tq, tk)
        else:
            m = m.reshape(b, heads, tq, tk)
        mask = m
    elif is_causal:
        causal = torch.ones(tq, tk, dtype=torch.bool, device=device).triu(1)
        mask = additive(causal).reshape(1, 1, tq, tk)
    if key_padding_mask is not None:
        m = additive(key_padding_mask).reshape(b, 1, 1, tk)
        mask = m if mask is None else mask + m
    return mask


class AttentionProbe(LayerProbe):
    """The probe of an ``nn.MultiheadAttention``: explicit forward with q/k/v/o deltas."""

    def __init__(self, name: str, module: nn.MultiheadAttention, per_head: bool) -> None:
        if module.bias_k is not None or module.add_zero_attn:
            raise LayerSelectionError(
                f"layer {name!r} (MultiheadAttention) uses add_bias_kv or add_zero_attn, which "
                "nfm's attention probe does not cover; select its inputs' layers instead"
            )
        self.name = name
        self.per_head = per_head
        self.heads = int(module.num_heads)
        self.tensor_keys = tuple(f"{name}.{p}" for p in (*_PARTS, "out_proj"))
        keys = []
        for part in _PARTS:
            if per_head:
                keys.extend(head_key(name, part, h) for h in range(self.heads))
            else:
                keys.append(head_key(name, part, None))
        keys.append(f"{name}.out_proj")
        self.result_keys = tuple(keys)
        self._weights: dict[str, torch.Tensor] = {}
        self.checked = False

    def install(self, module: nn.Module, registry: DeltaRegistry) -> list[Any]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any):
            if not registry.active:
                return None
            return self._explicit_forward(mod, args, kwargs, output, registry)

        return [module.register_forward_hook(hook, with_kwargs=True)]

    def _explicit_forward(
        self,
        mod: nn.MultiheadAttention,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        registry: DeltaRegistry,
    ) -> Any:
        names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
        names += ("average_attn_weights", "is_causal")
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        query, key, value = bound["query"], bound["key"], bound["value"]
        if query.ndim != 3:
            raise LayerSelectionError(
                f"layer {self.name!r} (MultiheadAttention) received an unbatched query of shape "
                f"{tuple(query.shape)}; nfm needs a batch of samples"
            )
        if mod.batch_first:
            xq, xk, xv = query, key, value
        else:
            xq, xk, xv = (t.transpose(0, 1) for t in (query, key, value))
        b, tq, _ = xq.shape
        tk = xk.shape[1]
        # the weights the module sees now (the engine's detached copies under functional_call)
        weights = attention_weights(mod)
        self._weights = weights
        projected = []
        for part, x, bias in zip(_PARTS, (xq, xk, xv), _biases(mod), strict=True):
            y = x @ weights[part].T
            if bias is not None:
                y = y + bias
            delta = new_delta(registry, f"{self.name}.{part}", y, self.name, "MultiheadAttention")
            projected.append(y + delta)
        q, k, v = projected
        heads, dh = self.heads, mod.head_dim
        q = q.reshape(b, tq, heads, dh).transpose(1, 2)
        k = k.reshape(b, tk, heads, dh).transpose(1, 2)
        v = v.reshape(b, tk, heads, dh).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)
        mask = _merge_masks(
            bound.get("attn_mask"),
            bound.get("key_padding_mask"),
            bool(bound.get("is_causal", False)),
            b,
            heads,
            tq,
            tk,
            scores.dtype,
            scores.device,
        )
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        context = (attn @ v).transpose(1, 2).reshape(b, tq, heads * dh)
        delta_o = new_delta(registry, f"{self.name}.out_proj", context, self.name, "attention")
        out = (context + delta_o) @ weights["out_proj"].T
        if mod.out_proj.bias is not None:
            out = out + mod.out_proj.bias
        if not mod.batch_first:
            out = out.transpose(0, 1)
        need_weights = bool(bound.get("need_weights", True))
        attn_out = None
        if need_weights:
            attn_out = attn.mean(dim=1) if bound.get("average_attn_weights", True) else attn
        original = output[0] if isinstance(output, tuple) else output
        if not self.checked:
            self._compare(original, out)
        return (out, attn_out)

    def _compare(self, original: torch.Tensor, explicit: torch.Tensor) -> None:
        a, e = original.detach(), explicit.detach()
        scale = float(a.abs().max()) + float(e.abs().max()) + torch.finfo(a.dtype).tiny
        rtol = 1e-8 if a.dtype == torch.float64 else 1e-3
        if a.shape != e.shape or float((a - e).abs().max()) > rtol * scale:
            raise LayerSelectionError(
                f"layer {self.name!r} (MultiheadAttention): nfm's explicit attention forward "
                "differs from the module's output (an option the probe does not cover, e.g. "
                "a custom mask layout); select the layers around it instead"
            )
        self.checked = True

    def rows(
        self, grads: Mapping[str, torch.Tensor], batch_size: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """q/k/v: the output gradients ``g`` (per head: its columns), Jacobians ``g W``."""
        for part in (*_PARTS, "out_proj"):
            g = grads[f"{self.name}.{part}"]  # (k, b, T, d) batch first (explicit forward)
            t, d = g.shape[2], g.shape[3]
            if part == "out_proj":
                yield f"{self.name}.out_proj", InputLayout(t, d).jacobian_rows(g, batch_size)
            elif not self.per_head:
                yield head_key(self.name, part, None), g
            else:
                dh = d // self.heads
                for h in range(self.heads):
                    yield head_key(self.name, part, h), g[..., h * dh : (h + 1) * dh]

    def transform(self, key: str) -> torch.Tensor | None:
        """The (rows of the) projection weight that ``key``'s output gradients multiply."""
        for part in _PARTS:
            w = self._weights[part]
            if key == head_key(self.name, part, None):
                return w
            dh = w.shape[0] // self.heads
            for h in range(self.heads if self.per_head else 0):
                if key == head_key(self.name, part, h):
                    return w[h * dh : (h + 1) * dh]
        return None


class MultiheadAttentionAdapter(LayerAdapter):
    """``nn.MultiheadAttention``: q/k/v (optionally per head) and out_proj AGOPs and NFMs."""

    module_types = (nn.MultiheadAttention,)

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        raise LayerSelectionError(  # pragma: no cover - probe() never asks for it
            f"layer {name!r} (MultiheadAttention) is read through its attention probe"
        )

    def probe(self, module: nn.Module, name: str, split: HeadSplit | None = None) -> LayerProbe:
        return AttentionProbe(name, module, _check_heads(module, name, split))

    def weight_matrices(
        self, module: nn.Module, name: str, split: HeadSplit | None = None
    ) -> dict[str, torch.Tensor]:
        per_head = _check_heads(module, name, split)
        weights = attention_weights(module)
        result: dict[str, torch.Tensor] = {}
        heads = int(module.num_heads)
        for part in _PARTS:
            w = weights[part]
            if not per_head:
                result[head_key(name, part, None)] = w
                continue
            dh = w.shape[0] // heads
            for h in range(heads):
                result[head_key(name, part, h)] = w[h * dh : (h + 1) * dh]
        result[f"{name}.out_proj"] = weights["out_proj"]
        return result

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        raise LayerSelectionError(
            f"layer {name!r} (MultiheadAttention) has several weight matrices; its NFMs are "
            f"under the keys {name}.q, {name}.k, {name}.v and {name}.out_proj (compute_nfm)"
        )

    def feature_count(self, module: nn.Module) -> int | None:
        return int(module.embed_dim)

    def expected_input(self, module: nn.Module) -> str | None:
        return f"embed_dim={module.embed_dim}"
