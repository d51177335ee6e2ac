r"""Neural feature matrices NFM = W^T W of the selected layers, the weight read as (out, in)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.selection import LayerSpec, select_layers

__all__ = ["compute_nfm"]


def compute_nfm(
    model: nn.Module,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    r"""Neural feature matrix :math:`\mathrm{NFM}_l = W_l^T W_l` of every selected layer.

    The bias is excluded: the NFM describes how the layer weighs directions of its input.
    For a convolution the weight is reshaped to ``(C_out, C_in * kh * kw)`` first (the filter
    covariance). Keys match :func:`compute_agop` (no ``"input"`` key: the input has no weight).

    Parameters
    ----------
    model : nn.Module
    layers : LayerSpec or sequence, optional
        Default every ``nn.Linear``. Every selected module must have a 2-D or higher ``weight``.
    dtype : torch.dtype, optional
        Result dtype (default the weight's).

    Returns
    -------
    dict[str, torch.Tensor]
        ``(d_l, d_l)`` tensors on the weights' device, detached.
    """
    selected = select_layers(model, layers)
    result: dict[str, torch.Tensor] = {}
    for name, module in selected.items():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            raise LayerSelectionError(
                f"layer {name!r} ({type(module).__name__}) has no weight matrix; the NFM "
                "W^T W is defined for nn.Linear (and convolution) layers"
            )
        w = weight.detach().reshape(weight.shape[0], -1)
        if dtype is not None:
            w = w.to(dtype)
        result[name] = w.T @ w
    return result
