"""Checked inputs of the diagnostics: samples, targets, losses and the model's device and dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from nfm._utils.arrays import check_finite, to_tensor
from nfm.exceptions import NFMInputError
from nfm.models.state import model_device_dtype

__all__ = ["LossSpec", "as_samples", "as_targets", "per_sample_loss", "probe_rows"]

#: ``"cross_entropy"``, ``"mse"`` or a callable ``(outputs, targets) -> (B,)`` per-sample losses.
LossSpec = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]  # noqa: UP007


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    return model


def as_samples(model: nn.Module, data: Any, name: str = "data") -> torch.Tensor:
    """``data`` as a finite floating tensor ``(n, ...)`` with ``n >= 1`` on the model's device."""
    if not isinstance(data, (torch.Tensor, np.ndarray)):
        raise NFMInputError(
            f"{name} must be a tensor or numpy array of samples (n, ...); got "
            f"{type(data).__name__} (the diagnostics index rows for minibatches)"
        )
    device, dtype = model_device_dtype(model)
    x = to_tensor(data, name)
    if x.ndim < 2 or x.shape[0] < 1:
        raise NFMInputError(
            f"{name} must have shape (n_samples, features...) with n_samples >= 1; got "
            f"{tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise NFMInputError(f"{name} must hold floating-point values; got dtype {x.dtype}")
    check_finite(x, name)
    return x.to(device=device or x.device, dtype=dtype or x.dtype)


def as_targets(targets: Any, n: int, loss: LossSpec, device: torch.device) -> torch.Tensor:
    """Targets with one row per sample: int64 labels for cross-entropy, floats otherwise."""
    if targets is None:
        raise NFMInputError("targets are required for the loss gradients and training steps")
    t = to_tensor(targets, "targets").to(device)
    if t.ndim == 0 or t.shape[0] != n:
        raise NFMInputError(
            f"targets must have one entry per sample ({n}); got shape {tuple(t.shape)}"
        )
    if loss == "cross_entropy":
        if t.is_floating_point():
            if not bool(torch.all(t == t.round())):
                raise NFMInputError(
                    "targets for loss='cross_entropy' must be integer class labels; got "
                    f"non-integer floats of shape {tuple(t.shape)}"
                )
        if t.ndim != 1:
            raise NFMInputError(
                f"targets for loss='cross_entropy' must be 1-D class labels; got shape "
                f"{tuple(t.shape)}"
            )
        t = t.to(torch.int64)
        if int(t.min()) < 0:
            raise NFMInputError(f"targets must be >= 0 class labels; got minimum {int(t.min())}")
    else:
        check_finite(t, "targets")
    return t


def check_loss(loss: Any) -> LossSpec:
    if callable(loss) or loss in ("cross_entropy", "mse"):
        return loss
    raise NFMInputError(
        f"loss must be 'cross_entropy', 'mse' or a callable (outputs, targets) -> per-sample "
        f"losses; got {loss!r}"
    )


def per_sample_loss(loss: LossSpec, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Per-sample losses :math:`\ell_i`, shape ``(B,)``.

    ``"cross_entropy"``: :math:`-\log \mathrm{softmax}(f(x_i))_{y_i}`; ``"mse"``:
    :math:`\lVert f(x_i) - t_i\rVert^2` with integer labels read as one-hot rows.
    """
    if not isinstance(outputs, torch.Tensor):
        raise NFMInputError(f"the model must return one tensor; got {type(outputs).__name__}")
    if loss == "cross_entropy":
        if outputs.ndim != 2:
            raise NFMInputError(
                f"loss='cross_entropy' needs (batch, classes) outputs; got {tuple(outputs.shape)}"
            )
        if int(targets.max()) >= outputs.shape[1]:
            raise NFMInputError(
                f"targets hold label {int(targets.max())} but the model has only "
                f"{outputs.shape[1]} outputs"
            )
        return nn.functional.cross_entropy(outputs, targets, reduction="none")
    if loss == "mse":
        t = targets
        if not t.is_floating_point():
            t = nn.functional.one_hot(t.to(torch.int64), outputs.shape[-1]).to(outputs.dtype)
        t = t.to(outputs.dtype).reshape(outputs.shape[0], -1)
        out = outputs.reshape(outputs.shape[0], -1)
        if t.shape != out.shape:
            raise NFMInputError(
                f"loss='mse' needs targets of the output's shape {tuple(out.shape)} per batch "
                f"(or integer labels); got {tuple(t.shape)}"
            )
        return ((out - t) ** 2).sum(dim=1)
    values = loss(outputs, targets)  # type: ignore[operator]
    if not isinstance(values, torch.Tensor) or values.shape != (outputs.shape[0],):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise NFMInputError(
            f"a callable loss must return one loss per sample, shape ({outputs.shape[0]},); "
            f"got {shape}"
        )
    return values


def probe_rows(n: int, size: int, seed: int) -> torch.Tensor:
    """``min(size, n)`` distinct row indices drawn by a generator seeded with ``seed``, sorted.

    A random subset rather than the first rows: data sets are often sorted by class.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=generator)[: min(size, n)].sort().values
