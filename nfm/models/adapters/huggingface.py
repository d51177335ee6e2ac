r"""Hugging Face ``Conv1D`` (GPT-2 and relatives): a linear layer with its weight stored (in, out).

``transformers.pytorch_utils.Conv1D(nf, nx)`` computes :math:`y = x W + b` with ``weight`` of shape
``(nx, nf)`` = ``(in, out)`` on the last axis of its input (``(batch, T, nx)`` tokens). Its
``(out, in)`` matrix is ``weight.T``, so its NFM is :math:`W W^T` (``(nx, nx)``), the matrix of the
same input features as its AGOP.

The class is recognised without importing ``transformers``: a module whose class is named
``Conv1D``, with an integer attribute ``nf`` and a 2-D ``weight`` of shape ``(nx, nf)``.
"""

from __future__ import annotations

import torch
from torch import nn

from nfm.models.adapters.base import InputLayout, LayerAdapter, features_on_axis, split_blocks
from nfm.models.adapters.probes import HeadSplit, LayerProbe, LinearMapProbe, RowBlock

__all__ = ["HFConv1DAdapter"]


class HFConv1DAdapter(LayerAdapter):
    """Hugging Face ``Conv1D``: features last, ``weight`` ``(in, out)``, so ``W = weight.T``."""

    def handles(self, module: nn.Module) -> bool:
        nf = getattr(module, "nf", None)
        weight = getattr(module, "weight", None)
        return (
            type(module).__name__ == "Conv1D"
            and isinstance(nf, int)
            and not isinstance(nf, bool)
            and isinstance(weight, torch.Tensor)
            and weight.ndim == 2
            and weight.shape[1] == nf
        )

    def input_layout(
        self, module: nn.Module, shape: tuple[int, ...], batch_size: int, name: str
    ) -> InputLayout:
        return features_on_axis(name, module, shape, batch_size, -1)

    def weight_matrix(self, module: nn.Module, name: str) -> torch.Tensor:
        return module.weight.detach().T

    def probe(self, module: nn.Module, name: str, split: HeadSplit | None = None) -> LayerProbe:
        """Input probe; with ``split`` (e.g. GPT-2's fused ``c_attn``: ``HeadSplit(n_head,
        ("q", "k", "v"))``), one block of rows of ``weight.T`` per part and head."""
        if split is None:
            return super().probe(module, name)
        blocks = split_blocks(name, module.weight.T, split)
        return LinearMapProbe(name, lambda m: m.weight.detach().T, blocks)

    def head_blocks(
        self, module: nn.Module, name: str, split: HeadSplit, weight: torch.Tensor
    ) -> list[RowBlock]:
        return split_blocks(name, weight, split)

    def feature_count(self, module: nn.Module) -> int | None:
        return int(module.weight.shape[0])

    def expected_input(self, module: nn.Module) -> str | None:
        return f"nx={module.weight.shape[0]} input features"
