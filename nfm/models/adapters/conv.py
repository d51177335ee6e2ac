r"""Convolutions ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d``: patch space.

A convolution applies its filters to input *patches*: for ``nn.Conv2d`` each output pixel is
:math:`W p + b` with :math:`p \in \mathbb{R}^{C_\text{in} k_h k_w}` the unfolded input patch under
it (``torch.nn.functional.unfold`` order: channel major) and :math:`W` the weight read as
``(C_out, C_in * k_h * k_w)``. The convolutional NFM is the filter covariance :math:`W^T W` in
that patch space, and the matching AGOP is the average over samples and patches of the gradient
outer product with respect to each patch.

**The patch-space AGOP is not implemented yet**: the hooks expose a layer's input tensor
``(batch, C_in, H, W)``, not its unfolded patches. Until it is, :meth:`ConvAdapter.input_layout`
raises :class:`~nfm.exceptions.LayerSelectionError` rather than take an AGOP over some axis of the
image (over the width, say), which would be a matrix unrelated to the NFM.

:meth:`ConvAdapter.weight_matrix` gives the patch-space ``(C_out, C_in * prod(kernel_size))``
matrix; with ``groups > 1`` output channel :math:`o` only sees the input channels of its group,
and the matrix has zeros elsewhere (block structure). Transposed convolutions scatter each input
pixel into an output patch; their patch-space reading is not defined here, so they have no NFM
yet either.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters.base import InputLayout, LayerAdapter

__all__ = ["ConvAdapter", "conv_patch_weight"]


def conv_patch_weight(weight: torch.Tensor, in_channels: int, groups: int) -> torch.Tensor:
    """A convolution weight ``(C_out, C_in / groups, *kernel)`` as ``(C_out, C_in * prod(k))``.

    Row :math:`o` holds filter :math:`o` at the columns of the input channels of its group
    (channel major, then the kernel offsets, as ``unfold`` lays out a patch) and zeros at the
    others; for ``groups == 1`` this is ``weight.reshape(C_out, -1)``.
    """
    c_out, c_in_group = weight.shape[0], weight.shape[1]
    kernel = math.prod(weight.shape[2:])
    flat = weight.reshape(c_out, c_in_group * kernel)
    if groups == 1:
        return flat
    out_group = c_out // groups
    full = weight.new_zeros(c_out, in_channels * kernel)
    width = c_in_group * kernel
    for g in range(groups):
        rows = slice(g * out_group, (g + 1) * out_group)
        full[rows, g * width : (g + 1) * width] = flat[rows]
    return full


class ConvAdapter(LayerAdapter):
    """Convolutions: the NFM in patch space; the patch-space AGOP is refused (not implemented)."""

    module_types = (_ConvNd,)

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        kind = type(module).__name__
        raise LayerSelectionError(
            f"layer {name!r} ({kind}) receives an input of shape {shape}: the AGOP of a "
            "convolution is taken with respect to its input patches (patch space, matching "
            "compute_nfm's (C_out, C_in * prod(kernel_size)) weight matrix), and patch-space "
            "AGOP for convolutions is not implemented yet. Select other layers (e.g. "
            "layers=nn.Linear), or layers=[] for the AGOP with respect to the model input"
        )

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        if module.transposed:
            raise LayerSelectionError(
                f"layer {name!r} ({type(module).__name__}) is a transposed convolution; its "
                "NFM in patch space is not defined yet"
            )
        weight = module.weight.detach()
        return conv_patch_weight(weight, int(module.in_channels), int(module.groups))

    def feature_count(self, module: nn.Module) -> int | None:
        return int(module.in_channels)

    def expected_input(self, module: nn.Module) -> str | None:
        return f"in_channels={module.in_channels}"
