"""Forward hooks that expose to autograd what each selected layer's AGOP is taken with respect to.

:class:`LayerInputPerturbation` installs each selected layer's *probe* (from its adapter: see
:mod:`nfm.models.adapters.probes`). A probe adds zero tensors that require grad ("deltas") to the
layer's input, or to its output when the Jacobian with respect to the input follows from it (the
patches of a convolution, one head of a projection), or rebuilds the layer's forward with them
(``nn.MultiheadAttention``). Gradients of the model output with respect to the deltas then give
the Jacobians, for any ``nn.Module`` and without editing its ``forward``. Hooks are registered on
enter and removed on exit, also when an error is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nfm.models.adapters import adapter_for, layer_feature_count
from nfm.models.adapters.probes import HeadSplit, LayerProbe

__all__ = ["LayerInputPerturbation"]


class LayerInputPerturbation:
    """The probes of the selected layers, registered on enter and removed on exit (also on error).

    While ``active`` is False the hooks do nothing. ``deltas`` maps a probe's tensor key to the
    zero tensor added in the current forward pass; ``probes`` maps each layer name to its probe.
    Input probes also keep each layer's output while ``keep_outputs`` is set (to find layers
    whose output is the model output), and pre-hooks on every layer that declares its input
    feature count (``in_features``, ``in_channels``, ...: see
    :func:`~nfm.models.adapters.layer_feature_count`) record the last one entered (for error
    messages).

    Parameters
    ----------
    model : nn.Module
    layers : mapping of str to nn.Module
        The selected layers.
    heads : mapping of str to HeadSplit, optional
        Layers to split into heads (validated by their adapters).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        heads: Mapping[str, HeadSplit] | None = None,
    ) -> None:
        self.model = model
        self.layers = dict(layers)
        heads = dict(heads or {})
        self.probes: dict[str, LayerProbe] = {
            name: adapter_for(module).probe(module, name, heads.get(name))
            for name, module in self.layers.items()
        }
        self.deltas: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, Any] = {}
        self.active = False
        self.keep_outputs = False
        self.last_entered: tuple[str, nn.Module] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerInputPerturbation:
        try:
            for name, module in self.layers.items():
                self._handles.extend(self.probes[name].install(module, self))
            for name, module in self.model.named_modules():
                if isinstance(module, torch.jit.ScriptModule):
                    continue  # no Python hooks on TorchScript modules
                if layer_feature_count(module) is not None:
                    self._handles.append(module.register_forward_pre_hook(self._entry_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.deltas.clear()
        self.outputs.clear()

    def _entry_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            self.last_entered = (name, module)

        return hook
