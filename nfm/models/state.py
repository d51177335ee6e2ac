"""Leave a model as it was found: modes, ``requires_grad`` flags, device and dtype queries.

:class:`ModelState` records every module's ``training`` flag and every parameter's
``requires_grad`` flag on enter and restores them all on exit (also on error), so code that puts a
model in eval mode for a measurement hands it back exactly as it came -- a frozen batch-norm or
dropout submodule of a model in training mode stays frozen.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nfm.exceptions import NFMInputError

__all__ = ["ModelState", "check_sample_independence", "model_device_dtype"]


class ModelState:
    """Set a model's mode for a block of code; restore every module's mode and grad flags after.

    On enter, every module's ``training`` flag and every parameter's ``requires_grad`` flag are
    recorded and the whole model is put in ``mode`` (``"eval"``, ``"train"``, or ``None`` to
    leave the modes alone). On exit, also after an exception, each flag is put back as it was,
    module by module: restoring only the root (``model.train(was_training)``) would switch a
    frozen batch-norm or dropout submodule back to training.

    Parameters
    ----------
    model : nn.Module
    mode : {"eval", "train"} or None
        The mode inside the block (default ``"eval"``).

    Examples
    --------
    >>> with ModelState(model):          # doctest: +SKIP
    ...     logits = model(x)            # eval mode here; model's modes restored after
    """

    def __init__(self, model: nn.Module, mode: str | None = "eval") -> None:
        if mode not in ("eval", "train", None):
            raise NFMInputError(f"mode must be 'eval', 'train' or None; got {mode!r}")
        self.model = model
        self.mode = mode
        self._modes = {module: module.training for module in model.modules()}
        self._requires_grad = {p: p.requires_grad for p in model.parameters()}

    def __enter__(self) -> ModelState:
        if self.mode is not None:
            self.model.train(self.mode == "train")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Put every recorded mode and ``requires_grad`` flag back."""
        for module, training in self._modes.items():
            module.training = training
        for parameter, flag in self._requires_grad.items():
            if parameter.requires_grad != flag:
                parameter.requires_grad_(flag)


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device, None
    return None, None


def check_sample_independence(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is None:
                raise NFMInputError(
                    f"module {name!r} ({type(module).__name__}) has track_running_stats=False, "
                    "so it normalises with batch statistics even in eval mode and the samples "
                    "of a batch interact; the AGOP needs a per-sample function of the input"
                )
            if module.training:
                warnings.warn(
                    f"module {name!r} ({type(module).__name__}) is in training mode; the AGOP "
                    "is computed in eval mode, i.e. with its running statistics, not batch "
                    "statistics",
                    UserWarning,
                    stacklevel=4,
                )
