"""A small multilayer perceptron with reproducible initialisation from a seed (no global seed)."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from nfm.exceptions import NFMInputError

__all__ = ["ACTIVATIONS", "make_mlp"]


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


class _Recorder(Protocol):
    def record(self, step: int, **metrics: Any) -> Any: ...


def make_mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    n_classes: int,
    activation: str = "relu",
    *,
    bias: bool = True,
    seed: int | None = 0,
) -> nn.Sequential:
    r"""Build a fully connected network ``in_dim -> hidden_sizes... -> n_classes``.

    Layers are named ``fc1, act1, fc2, act2, ..., out`` so that reports read naturally. Weights
    and biases are drawn as in PyTorch's default ``nn.Linear`` initialisation,
    :math:`W_{ij}, b_i \sim U(-1/\sqrt{d_{in}}, 1/\sqrt{d_{in}})`, but from a private
    ``torch.Generator`` seeded with ``seed`` (``None``: PyTorch's global generator); the
    global generator is not touched when a seed is given.

    Parameters
    ----------
    in_dim : int
        Number of input features.
    hidden_sizes : sequence of int
        Width of each hidden layer (may be empty: a linear model).
    n_classes : int
        Number of outputs.
    activation : {"relu", "tanh", "gelu", "sigmoid", "silu"}
    bias : bool
        Whether the linear layers have a bias.
    seed : int or None

    Returns
    -------
    torch.nn.Sequential
    """
    if activation not in ACTIVATIONS:
        raise NFMInputError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
    sizes = [int(in_dim), *(int(h) for h in hidden_sizes), int(n_classes)]
    if any(s < 1 for s in sizes):
        raise NFMInputError(
            f"in_dim, hidden_sizes and n_classes must be positive; got {in_dim}, "
            f"{list(hidden_sizes)}, {n_classes}"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    n_hidden = len(sizes) - 2
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        # skip_init: no draw from the global generator (the weights are drawn below)
        linear = nn.utils.skip_init(nn.Linear, fan_in, fan_out, bias=bias)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            if linear.bias is not None:
                linear.bias.uniform_(-bound, bound, generator=generator)
        if index < n_hidden:
            modules[f"fc{index + 1}"] = linear
            modules[f"act{index + 1}"] = ACTIVATIONS[activation]()
        else:
            modules["out"] = linear
    return nn.Sequential(modules)
