r"""Probes: where the engine differentiates inside a layer, and how it turns gradients into rows.

A *probe* is what a layer adapter hands the gradient engine for one selected layer. It

1. installs forward hooks on the layer that add zero tensors requiring grad ("deltas") to the
   tensors the AGOP is taken with respect to -- or to a tensor from which those Jacobians follow
   exactly -- registered under *tensor keys*;
2. turns the gradients with respect to those deltas, ``(k, *delta shape)`` for ``k`` output
   rows, into Jacobian *rows* ``(k, batch, positions, features)`` under one or more *result
   keys* (:meth:`LayerProbe.rows`).

Two kinds cover the built-in families:

* :class:`InputProbe` -- the delta is added to the layer's first positional input, and the
  adapter's :class:`~nfm.models.adapters.base.InputLayout` reads its gradient as rows
  (``nn.Linear`` on tokens, a ``(batch, features)`` input of any module).
* :class:`LinearMapProbe` -- for a layer that is linear in the features the AGOP is taken with
  respect to, :math:`y = W u + b` (an ``nn.Linear`` head, the unfolded patches ``u`` of a
  convolution). The delta is added to the layer *output* :math:`y`, and the Jacobian with
  respect to :math:`u` follows from the chain rule,

  .. math:: \frac{\partial f}{\partial u} = \frac{\partial f}{\partial y} W,

  so the rows are the output gradients times :math:`W` (or times a block of rows of :math:`W`:
  one attention head's slice of a query projection). This gives the Jacobian with respect to
  the patch even though the patch tensor never exists in the forward pass.

A layer's result keys are its name, or derived names for a layer split into parts and heads
(:func:`head_key`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError

__all__ = [
    "HeadSplit",
    "InputProbe",
    "LayerProbe",
    "LinearMapProbe",
    "RowBlock",
    "head_blocks",
    "head_key",
    "new_delta",
]


@dataclass(frozen=True)
class HeadSplit:
    """How to split a projection's outputs into attention heads (and fused parts).

    The output features of the layer are read as ``len(parts) or 1`` consecutive equal parts
    (e.g. GPT-2's fused ``c_attn``: query, key, value), each of ``heads`` consecutive equal
    heads. Each (part, head) gets an AGOP with respect to the layer input *as seen by that head
    alone* (the rows of :math:`W` of that head) and the matching NFM :math:`W_h^T W_h`.

    Parameters
    ----------
    heads : int
        Number of heads per part.
    parts : tuple of str
        Names of fused parts, e.g. ``("q", "k", "v")``; empty for a single projection.
    """

    heads: int
    parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.heads, bool) or not isinstance(self.heads, int) or self.heads < 1:
            raise LayerSelectionError(f"heads must be a positive int; got {self.heads!r}")
        if not isinstance(self.parts, tuple) or not all(isinstance(p, str) for p in self.parts):
            raise LayerSelectionError(f"parts must be a tuple of str; got {self.parts!r}")
        if len(set(self.parts)) != len(self.parts):
            raise LayerSelectionError(f"parts must be distinct; got {self.parts!r}")


#: What ``heads=`` accepts per layer: a number of heads, or a :class:`HeadSplit`.
HeadSpec = int | HeadSplit


def as_head_split(spec: Any, name: str) -> HeadSplit:
    """``heads[name]`` as a :class:`HeadSplit` (an int ``h`` is ``HeadSplit(h)``)."""
    if isinstance(spec, HeadSplit):
        return spec
    if isinstance(spec, bool) or not isinstance(spec, int) or spec < 1:
        raise LayerSelectionError(
            f"heads[{name!r}] must be a positive int or a HeadSplit; got {spec!r}"
        )
    return HeadSplit(spec)


def head_key(name: str, part: str | None, head: int | None) -> str:
    """Result key of one part / head of layer ``name``: ``name.q[head=0]``, ``name[head=3]``."""
    key = name if part is None else f"{name}.{part}"
    return key if head is None else f"{key}[head={head}]"


@dataclass(frozen=True)
class RowBlock:
    """One result key of a :class:`LinearMapProbe`: the output features ``rows`` of ``W``."""

    key: str
    rows: slice


def head_blocks(name: str, n_out: int, split: HeadSplit | None) -> list[RowBlock]:
    """The row blocks of an ``n_out``-output projection split by ``split`` (``None``: whole).

    Raises
    ------
    LayerSelectionError
        ``n_out`` is not divisible into the parts and heads.
    """
    if split is None:
        return [RowBlock(name, slice(0, n_out))]
    n_parts = len(split.parts) or 1
    if n_out % (n_parts * split.heads):
        raise LayerSelectionError(
            f"layer {name!r} has {n_out} output features, which do not split into "
            f"{n_parts} part(s) of {split.heads} heads; check heads[{name!r}]"
        )
    head_size = n_out // (n_parts * split.heads)
    blocks = []
    for p in range(n_parts):
        part = split.parts[p] if split.parts else None
        for h in range(split.heads):
            lo = (p * split.heads + h) * head_size
            blocks.append(RowBlock(head_key(name, part, h), slice(lo, lo + head_size)))
    return blocks


class DeltaRegistry:
    """Where probes put the zero tensors they add (implemented by the hooks' owner)."""

    active: bool
    keep_outputs: bool
    deltas: dict[str, torch.Tensor]
    outputs: dict[str, Any]


class LayerProbe(ABC):
    """Base class: hooks on one layer and the conversion of their gradients to AGOP rows.

    Attributes
    ----------
    name : str
        The layer's name.
    tensor_keys : tuple of str
        Keys of the deltas it registers each forward pass (all must be present).
    result_keys : tuple of str
        Keys of its AGOPs, in order.
    """

    name: str
    tensor_keys: tuple[str, ...]
    result_keys: tuple[str, ...]
    #: whether the rows of ``tensor_keys[0]`` are its gradient, reshaped (shared Jacobians)
    identity_rows = False

    @abstractmethod
    def install(self, module: nn.Module, registry: DeltaRegistry) -> list[Any]:
        """Register the hooks on ``module``; return their handles."""

    @abstractmethod
    def rows(
        self, grads: Mapping[str, torch.Tensor], batch_size: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(result key, rows (k, batch_size, positions, features))``.

        For a key with a :meth:`transform` :math:`W`, the rows are :math:`g` with Jacobians
        :math:`g W`: the engine sums :math:`g^T g` and applies :math:`W` once per flush.
        """

    def transform(self, key: str) -> torch.Tensor | None:
        """The matrix :math:`W` the rows of ``key`` are multiplied by (``None``: none)."""
        return None


def _check_float_tensor(name: str, module: nn.Module, value: Any, what: str) -> torch.Tensor:
    kind = type(module).__name__
    if not isinstance(value, torch.Tensor):
        raise LayerSelectionError(
            f"layer {name!r} ({kind}) {what} is not a tensor ({type(value).__name__}); the "
            "AGOP is taken with respect to a tensor"
        )
    if not value.is_floating_point():
        raise LayerSelectionError(
            f"layer {name!r} ({kind}) {what} is a {value.dtype} tensor; gradients with "
            "respect to integer inputs do not exist. Select layers that receive "
            "floating-point inputs"
        )
    if value.ndim < 2:
        raise LayerSelectionError(
            f"layer {name!r} ({kind}) {what} has shape {tuple(value.shape)}; expected a "
            "batch dimension first and a feature dimension"
        )
    return value


def new_delta(
    registry: DeltaRegistry, key: str, like: torch.Tensor, name: str, kind: str
) -> torch.Tensor:
    """A zero tensor like ``like`` that requires grad, registered as ``registry.deltas[key]``.

    Raises
    ------
    LayerSelectionError
        ``key`` already has a delta in this forward pass (the layer is called twice).
    """
    if key in registry.deltas:
        raise LayerSelectionError(
            f"layer {name!r} ({kind}) is called more than once in one forward pass; the AGOP "
            "with respect to 'its input' is then ambiguous. Select another layer"
        )
    delta = torch.zeros_like(like, requires_grad=True)
    registry.deltas[key] = delta
    return delta


class InputProbe(LayerProbe):
    """The AGOP with respect to the layer's first positional input, read by ``layout_of``.

    Parameters
    ----------
    name : str
    layout_of : callable
        ``(shape, batch_size) -> InputLayout`` (the adapter's ``input_layout`` for the module).
    """

    identity_rows = True

    def __init__(self, name: str, layout_of: Callable[[tuple[int, ...], int], Any]) -> None:
        self.name = name
        self.tensor_keys = (name,)
        self.result_keys = (name,)
        self.layout_of = layout_of

    def layout(self, shape: tuple[int, ...], batch_size: int) -> Any:
        return self.layout_of(shape, batch_size)

    def install(self, module: nn.Module, registry: DeltaRegistry) -> list[Any]:
        name = self.name
        kind = type(module).__name__

        def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> Any:
            if not registry.active:
                return None
            if not args:
                raise LayerSelectionError(
                    f"layer {name!r} ({kind}) was called without a tensor as its first "
                    "positional argument; the AGOP is taken with respect to that argument"
                )
            h = _check_float_tensor(name, mod, args[0], "receives an input that")
            delta = new_delta(registry, name, h, name, kind)
            return (h + delta, *args[1:])

        def post_hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if registry.active and registry.keep_outputs:
                registry.outputs[name] = output

        return [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook)]

    def rows(
        self, grads: Mapping[str, torch.Tensor], batch_size: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        g = grads[self.name]
        yield self.name, self.layout(tuple(g.shape[1:]), batch_size).jacobian_rows(g, batch_size)


class LinearMapProbe(LayerProbe):
    r"""The AGOP with respect to :math:`u` for a layer computing :math:`y = W u + b`.

    The delta is added to the layer's output ``y`` (features on ``feature_axis``, positions on
    the other non-batch axes); the Jacobians of result key ``block.key`` are
    :math:`g\, W_{\text{block}}` with :math:`g = \partial f / \partial y_{\text{block}}`.
    The engine sums :math:`g^T g` (``e x e`` for ``e`` output features of the block) and
    forms :math:`W_\text{block}^T (\sum g^T g) W_\text{block}` once per flush
    (:meth:`transform`): far fewer operations than the rows :math:`g W` themselves, since
    :math:`e` is the number of filters or a head's width.

    Parameters
    ----------
    name : str
    weight_of : callable
        ``module -> (out, in)`` weight matrix :math:`W`, read at forward time (so it is the
        engine's detached copy under ``functional_call``).
    blocks : sequence of RowBlock
        Result keys and the output features (rows of ``W``) each covers.
    feature_axis : int
        Axis of the output holding the ``out`` features (``-1`` linear layers, ``1``
        convolutions).
    """

    def __init__(
        self,
        name: str,
        weight_of: Callable[[nn.Module], torch.Tensor],
        blocks: Sequence[RowBlock],
        feature_axis: int = -1,
    ) -> None:
        self.name = name
        self.weight_of = weight_of
        self.blocks = tuple(blocks)
        self.feature_axis = feature_axis
        self.tensor_keys = (name,)
        self.result_keys = tuple(b.key for b in self.blocks)
        self._weight: torch.Tensor | None = None

    def install(self, module: nn.Module, registry: DeltaRegistry) -> list[Any]:
        name = self.name
        kind = type(module).__name__

        def post_hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not registry.active:
                return None
            y = _check_float_tensor(name, mod, output, "returns an output that")
            self._weight = self.weight_of(mod)
            delta = new_delta(registry, name, y, name, kind)
            return y + delta

        return [module.register_forward_hook(post_hook)]

    def rows(
        self, grads: Mapping[str, torch.Tensor], batch_size: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        g = grads[self.name]  # (k, batch, ...)
        if self.feature_axis != -1:
            g = g.movedim(1 + self.feature_axis, -1)
        k, n_out = g.shape[0], g.shape[-1]
        positions = math.prod(g.shape[1:-1]) // batch_size
        g = g.reshape(k, batch_size, positions, n_out)
        for block in self.blocks:
            yield block.key, g[..., block.rows]

    def transform(self, key: str) -> torch.Tensor | None:
        """Rows of :math:`W` of ``key``'s block: the Jacobians are ``g_block @ W_block``."""
        weight = self._weight
        if weight is None:  # pragma: no cover - asked for after a forward
            raise LayerSelectionError(f"layer {self.name!r}: weight asked for before a forward")
        block = next(b for b in self.blocks if b.key == key)
        return weight[block.rows]
