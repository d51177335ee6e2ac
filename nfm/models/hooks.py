"""Forward hooks that expose each selected layer's input to autograd.

:class:`LayerInputPerturbation` adds a zero tensor that requires grad to the first positional input
of every selected layer, so the gradient of the model output with respect to that zero tensor is
the gradient with respect to the layer's input, for any ``nn.Module`` and without editing its
``forward``. Hooks are registered on enter and removed on exit, also when an error is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters import layer_feature_count

__all__ = ["LayerInputPerturbation"]


class LayerInputPerturbation:
    """Forward pre-hooks adding a zero tensor (requires grad) to each selected layer's input.

    Registered on enter, removed on exit (also on error). While ``active`` is False the hooks
    do nothing. ``deltas`` maps layer name -> the zero tensor added in the current forward pass.
    Forward hooks also keep each layer's output while ``keep_outputs`` is set (to find layers
    whose output is the model output), and pre-hooks on every layer that declares its input
    feature count (``in_features``, ``in_channels``, ...: see
    :func:`~nfm.models.adapters.layer_feature_count`) record the last one entered (for error
    messages).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, nn.Module]) -> None:
        self.model = model
        self.layers = dict(layers)
        self.deltas: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.active = False
        self.keep_outputs = False
        self.last_entered: tuple[str, nn.Module] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerInputPerturbation:
        try:
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
                self._handles.append(module.register_forward_hook(self._post_hook(name)))
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

    def _pre_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
            if not self.active:
                return None
            if not args or not isinstance(args[0], torch.Tensor):
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) was called without a tensor as "
                    "its first positional argument; the AGOP is taken with respect to that "
                    "argument"
                )
            h = args[0]
            if name in self.deltas:
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) is called more than once in one "
                    "forward pass; the AGOP with respect to 'its input' is then ambiguous. "
                    "Select another layer"
                )
            if not h.is_floating_point():
                raise LayerSelectionError(
                    f"layer {name!r} ({type(module).__name__}) receives a {h.dtype} tensor; "
                    "gradients with respect to integer inputs do not exist. Select layers that "
                    "receive floating-point inputs"
                )
            if h.ndim < 2:
                raise LayerSelectionError(
                    f"layer {name!r} receives a tensor of shape {tuple(h.shape)}; expected a "
                    "batch dimension first and a feature dimension last"
                )
            delta = torch.zeros_like(h, requires_grad=True)
            self.deltas[name] = delta
            return (h + delta, *args[1:])

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self.active and self.keep_outputs:
                self.outputs[name] = output

        return hook
