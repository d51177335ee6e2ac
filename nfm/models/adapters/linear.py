r"""``nn.Linear`` (and its subclasses) and ``nn.Bilinear``: features last, weight ``(out, in)``.

A linear layer maps the last axis of its input, so an input ``(batch, d)`` is one Jacobian of
``d`` features per sample and ``(batch, t_1, ..., d)`` (transformer tokens, or a sequence-first
``(T, batch, d)``) has ``t_1 \cdots`` positions, each one Jacobian. ``nn.Linear.weight`` is
already the ``(out, in)`` matrix :math:`W` of :math:`y = x W^T + b`, so the NFM is :math:`W^T W`.

``nn.Bilinear`` ``y_k = x_1^T A_k x_2 + b_k`` receives ``x_1`` first: its AGOP is taken with respect
to ``x_1`` (features last, as for ``nn.Linear``). Its weight is the three-way tensor ``(out, in1,
in2)``, not one ``(out, in)`` matrix, so it has no NFM.
"""

from __future__ import annotations

import torch
from torch import nn

from nfm.exceptions import LayerSelectionError
from nfm.models.adapters.base import InputLayout, LayerAdapter, features_on_axis, split_blocks
from nfm.models.adapters.probes import HeadSplit, LayerProbe, LinearMapProbe, RowBlock

__all__ = ["BilinearAdapter", "LinearAdapter"]


class LinearAdapter(LayerAdapter):
    """``nn.Linear``: features last, ``weight`` ``(out_features, in_features)``."""

    module_types = (nn.Linear,)

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        return features_on_axis(name, module, shape, batch_size, -1)

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        return module.weight.detach()

    def probe(self, module: nn.Module, name: str, split: HeadSplit | None = None) -> LayerProbe:
        """Input probe; with ``split``, a :class:`LinearMapProbe` with one block per head."""
        if split is None:
            return super().probe(module, name)
        blocks = split_blocks(name, module.weight, split)
        return LinearMapProbe(name, lambda m: m.weight.detach(), blocks)

    def head_blocks(
        self, module: nn.Module, name: str, split: HeadSplit, weight: torch.Tensor
    ) -> list[RowBlock]:
        return split_blocks(name, weight, split)

    def feature_count(self, module: nn.Module) -> int | None:
        return int(module.in_features)

    def expected_input(self, module: nn.Module) -> str | None:
        return f"in_features={module.in_features}"


class BilinearAdapter(LayerAdapter):
    """``nn.Bilinear``: the AGOP with respect to its first input (features last); no NFM."""

    module_types = (nn.Bilinear,)

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        return features_on_axis(name, module, shape, batch_size, -1)

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        raise LayerSelectionError(
            f"layer {name!r} (Bilinear) has a three-way weight of shape "
            f"{tuple(module.weight.shape)} (out, in1, in2), not an (out, in) matrix: it has no "
            "NFM W^T W. Its AGOP (with respect to its first input) is available"
        )

    def feature_count(self, module: nn.Module) -> int | None:
        return int(module.in1_features)

    def expected_input(self, module: nn.Module) -> str | None:
        return f"in1_features={module.in1_features}"
