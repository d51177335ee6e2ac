r"""Convolutions ``nn.Conv1d/2d/3d``: AGOP and NFM in patch space.

A convolution applies its filters to input *patches*: for ``nn.Conv2d`` each output pixel
:math:`l` is :math:`y_l = W u_l + b` with :math:`u_l \in \mathbb{R}^{C_\text{in} k_h k_w}` the
unfolded (zero-padded, strided, dilated) input patch under it, in
``torch.nn.functional.unfold`` order (channel major, then the kernel offsets), and :math:`W` the
weight read as ``(C_out, C_in * k_h * k_w)``. The convolutional NFM is the filter covariance
:math:`W^T W` in that patch space, and the matching AGOP is

.. math::

    \mathrm{AGOP} = \frac{1}{n L} \sum_{i=1}^{n} \sum_{l=1}^{L} J_{il}^T J_{il}, \qquad
    J_{il} = \frac{\partial f(x_i)}{\partial u_{il}} = \frac{\partial f(x_i)}{\partial y_{il}} W,

the Jacobian with respect to each patch taken as a variable of its own (the layer rewritten as
``unfold`` followed by a matrix product), averaged over samples and the :math:`L` output
positions. The engine obtains it without unfolding anything: it differentiates with respect to
the layer *output* and multiplies by :math:`W`
(:class:`~nfm.models.adapters.probes.LinearMapProbe`).

With ``groups > 1`` output channel :math:`o` only sees the input channels of its group: the
weight matrix has zeros at the other groups' columns (block structure), the patch has all
:math:`C_\text{in} k` entries, and the AGOP has the cross-group blocks that the data and the
later layers create, while the NFM's are zero.

Transposed convolutions scatter each input pixel into an output patch; their patch-space reading
is not defined here, so they are refused.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters.base import InputLayout, LayerAdapter
from nfm.models.adapters.probes import HeadSplit, LayerProbe, LinearMapProbe, RowBlock

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
    """Convolutions: AGOP and NFM in patch space (``C_in * prod(kernel_size)`` features)."""

    module_types = (_ConvNd,)

    def _refuse_transposed(self, module: nn.Module, name: str) -> None:
        if module.transposed:
            raise LayerSelectionError(
                f"layer {name!r} ({type(module).__name__}) is a transposed convolution; its "
                "AGOP and NFM in patch space are not defined. Select the layers around it"
            )

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        raise LayerSelectionError(  # pragma: no cover - probe() never asks for it
            f"layer {name!r} ({type(module).__name__}): a convolution's AGOP is taken in patch "
            "space through its probe, not from its input layout"
        )

    def probe(self, module: nn.Module, name: str, split: HeadSplit | None = None) -> LayerProbe:
        """A :class:`LinearMapProbe` on the output, with the patch-space weight."""
        self._refuse_transposed(module, name)
        if split is not None:
            raise LayerSelectionError(
                f"layer {name!r} ({type(module).__name__}) cannot be split into heads"
            )
        in_channels, groups = int(module.in_channels), int(module.groups)

        def weight_of(m: nn.Module) -> torch.Tensor:
            return conv_patch_weight(m.weight.detach(), in_channels, groups)

        return LinearMapProbe(name, weight_of, [RowBlock(name, slice(None))], feature_axis=1)

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        self._refuse_transposed(module, name)
        weight = module.weight.detach()
        return conv_patch_weight(weight, int(module.in_channels), int(module.groups))

    def feature_count(self, module: nn.Module) -> int | None:
        return int(module.in_channels)

    def expected_input(self, module: nn.Module) -> str | None:
        return f"in_channels={module.in_channels}"
