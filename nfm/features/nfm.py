r"""Neural feature matrices :math:`\mathrm{NFM}_l = W_l^T W_l`, the weight read as ``(out, in)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nfm.models.adapters import adapter_for
from nfm.models.selection import (
    HeadsSpec,
    LayerSpec,
    lift_attention_projections,
    resolve_heads,
    select_layers,
)

__all__ = ["compute_nfm"]


def compute_nfm(
    model: nn.Module,
    layers: LayerSpec | Sequence[LayerSpec] | None = None,
    *,
    dtype: torch.dtype | None = None,
    heads: HeadsSpec = None,
) -> dict[str, torch.Tensor]:
    r"""Neural feature matrix :math:`\mathrm{NFM}_l = W_l^T W_l` of every selected layer.

    :math:`W_l` is the layer's weight read as an ``(out, in)`` matrix by its adapter
    (:meth:`nfm.models.adapters.LayerAdapter.weight_matrix`), so that ``in`` indexes the same
    input features as the layer's AGOP:

    * ``nn.Linear``: ``weight`` itself, ``(out_features, in_features)``;
    * Hugging Face ``Conv1D`` (GPT-2), which stores its weight ``(in, out)``: ``weight.T``, so
      the NFM is ``weight @ weight.T``;
    * convolutions: the weight in patch space, ``(C_out, C_in * prod(kernel_size))`` (the
      filter covariance; with ``groups > 1`` each filter sits at the columns of its group's
      input channels), the space of :func:`nfm.features.compute_agop`'s patch AGOP;
    * ``nn.MultiheadAttention``: keys ``name.q``, ``name.k``, ``name.v`` (the rows of
      ``in_proj_weight`` of each projection) and ``name.out_proj``;
    * with ``heads={name: h}`` (or a :class:`~nfm.models.adapters.probes.HeadSplit`): one NFM
      :math:`W_h^T W_h` per head, :math:`W_h` the head's block of rows of :math:`W`, under
      keys ``name[head=i]`` (``name.q[head=i]`` for attention and fused parts).

    The bias is excluded: the NFM describes how the layer weighs directions of its input. Keys
    match :func:`compute_agop` (no ``"input"`` key: the input has no weight).

    Parameters
    ----------
    model : nn.Module
    layers : LayerSpec or sequence, optional
        Default every ``nn.Linear``.
    dtype : torch.dtype, optional
        Result dtype (default the weight's).
    heads : mapping, optional
        ``{layer name: number of heads or HeadSplit}``: per-head NFMs for those layers.

    Returns
    -------
    dict[str, torch.Tensor]
        ``(d_l, d_l)`` tensors on the weights' device, detached.

    Raises
    ------
    LayerSelectionError
        A selected layer without a weight matrix its adapter can read (an activation, a
        transposed convolution, ``nn.Bilinear``), or a selection that matches nothing.
    """
    selected = lift_attention_projections(model, select_layers(model, layers))
    splits = resolve_heads(heads, selected)
    result: dict[str, torch.Tensor] = {}
    for name, module in selected.items():
        weights = adapter_for(module).weight_matrices(module, name, splits.get(name))
        for key, w in weights.items():
            if dtype is not None:
                w = w.to(dtype)
            result[key] = w.T @ w
    return result
