r"""The AGOP with respect to a tensor that several projections read: the attention or MLP input.

A transformer block feeds one tensor :math:`h` (the attention input) to its query, key and value
projections, and one (the MLP input) to Llama's gate and up projections. nfm's engine takes the
AGOP of each layer's *own* input, i.e. along one projection's path. The AGOP of the shared input
along all of its consumers' paths (and not the residual stream) is

.. math::

    \mathrm{AGOP}_h = \frac{1}{nT} \sum_{i,t} J_{i,t}^T J_{i,t}, \qquad
    J_{i,t} = \sum_{c \in \text{consumers}} \frac{\partial f(x_i)}{\partial u^{(c)}_{i,t}},

where :math:`u^{(c)}` is consumer :math:`c`'s input: the same perturbation is added to every
consumer's input. Its neural feature matrix is that of the stacked weights,
:math:`W^T W = \sum_c W_c^T W_c` (for GPT-2's fused ``c_attn`` this is the layer itself).

:class:`TappedModel` wraps a model and, while entered as a context, routes each group's shared
tensor through a :class:`SharedInputTap` (an identity module) before its consumers see it: the
first consumer called in a forward pass calls the tap, the others receive the tap's output when
they receive the very same tensor. Selecting the tap as a layer then gives :math:`\mathrm{AGOP}_h`
(the tap's adapter reads features on the last axis and reports the stacked weight). The hooks are
removed on exit; the wrapped model comes back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.models.adapters import adapter_for, register_adapter
from nfm.models.adapters.base import InputLayout, LayerAdapter, features_on_axis

__all__ = ["SharedInputTap", "TappedModel"]


class SharedInputTap(nn.Module):
    """The identity, placed on the tensor shared by ``consumers`` (not submodules of the tap).

    Parameters
    ----------
    consumers : mapping name -> module
        The layers reading the shared tensor, in the order their weights are stacked.
    """

    def __init__(self, consumers: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not consumers:
            raise NFMInputError("a SharedInputTap needs at least one consumer layer")
        # a plain tuple, so the consumers are not registered as submodules of the tap
        object.__setattr__(self, "consumers", tuple(consumers.items()))

    def extra_repr(self) -> str:
        return "consumers=" + ", ".join(name for name, _ in self.consumers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _SharedInputTapAdapter(LayerAdapter):
    """Features on the last axis; the weight is the consumers' weights stacked row-wise."""

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        return features_on_axis(name, module, shape, batch_size, -1)

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        weights = [adapter_for(c).weight_matrix(c, n) for n, c in module.consumers]
        widths = {int(w.shape[1]) for w in weights}
        if len(widths) != 1:
            raise LayerSelectionError(
                f"the consumers of {name!r} ({[n for n, _ in module.consumers]}) read inputs "
                f"of different widths {sorted(widths)}; they cannot share one input"
            )
        return torch.cat(weights, dim=0)

    def feature_count(self, module: nn.Module) -> int | None:
        _, consumer = module.consumers[0]
        return adapter_for(consumer).feature_count(consumer)


# Declared for this private class only: no other module type is affected.
register_adapter(SharedInputTap, _SharedInputTapAdapter())


class TappedModel(nn.Module):
    """``net`` with a :class:`SharedInputTap` in front of each group of consumers.

    Use it as a context manager: the routing hooks exist only inside ``with``; calling it
    outside is an error. The tap of group ``key`` is the layer ``"taps.<key>"``.

    Parameters
    ----------
    net : nn.Module
        The model (its layers are ``"net.<name>"``).
    groups : mapping key -> sequence of layer names of ``net``
        The consumers of each shared tensor; keys are identifiers (letters, digits, ``_``).
    """

    def __init__(self, net: nn.Module, groups: Mapping[str, Sequence[str]]) -> None:
        super().__init__()
        modules = dict(net.named_modules())
        taps: dict[str, SharedInputTap] = {}
        self._consumers: dict[str, tuple[str, ...]] = {}
        for key, names in groups.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise NFMInputError(f"group keys must be identifiers; got {key!r}")
            names = tuple(names)
            missing = [n for n in names if n not in modules]
            if missing or not names:
                raise LayerSelectionError(
                    f"group {key!r}: no layer(s) {missing or names} in the model"
                )
            taps[key] = SharedInputTap({n: modules[n] for n in names})
            self._consumers[key] = names
        self.net = net
        self.taps = nn.ModuleDict(taps)
        self._handles: list[Any] = []
        self._shared: dict[str, tuple[torch.Tensor, torch.Tensor, set[str]]] = {}

    def __enter__(self) -> TappedModel:
        if self._handles:
            raise NFMInputError("this TappedModel is already entered")
        modules = dict(self.net.named_modules())
        try:
            for key, names in self._consumers.items():
                for name in names:
                    hook = self._route(key, name)
                    # prepended, so the consumer sees the tap's output before any other hook
                    self._handles.append(
                        modules[name].register_forward_pre_hook(hook, prepend=True)
                    )
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._shared.clear()

    def _route(self, key: str, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            if not args or not isinstance(args[0], torch.Tensor):
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) was called without a tensor as "
                    f"its first positional argument; group {key!r} cannot tap its input"
                )
            x = args[0]
            shared = self._shared.get(key)
            if shared is None:
                y = self.taps[key](x)
                self._shared[key] = (x, y, {name})
                return (y, *args[1:])
            x0, y, seen = shared
            if name in seen:
                raise LayerSelectionError(
                    f"layer {name!r} of group {key!r} is called more than once in one forward "
                    "pass; the shared input is then ambiguous"
                )
            if x is not x0:
                raise LayerSelectionError(
                    f"the layers of group {key!r} ({list(self._consumers[key])}) do not receive "
                    f"the same input tensor ({name!r} gets another one); they do not share an "
                    "input"
                )
            seen.add(name)
            return (y, *args[1:])

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._handles:
            raise NFMInputError(
                "a TappedModel routes its taps only inside 'with tapped:'; enter it first"
            )
        self._shared.clear()
        try:
            return self.net(x)
        finally:
            self._shared.clear()
