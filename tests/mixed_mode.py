"""A model in training mode with frozen submodules, for the "model comes back unchanged" tests."""

from __future__ import annotations

import torch
from torch import nn


def mixed_mode_model(activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Training mode, with a frozen batch norm (1) and dropout (3) and a frozen weight (4).

    Modules 5 and 6 (a batch norm and a dropout) train. The weights are reproducible; the
    global random generator is restored afterwards.
    """
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(6, 8),
            nn.BatchNorm1d(8),  # 1: frozen
            activation(),
            nn.Dropout(0.5),  # 3: frozen
            nn.Linear(8, 8),  # 4: weight frozen (requires_grad=False)
            nn.BatchNorm1d(8),  # 5: trains
            nn.Dropout(0.5),  # 6: trains
            nn.Linear(8, 3),
        )
    model.train()
    model[1].eval()
    model[3].eval()
    model[4].weight.requires_grad_(False)
    return model


def modes_and_flags(model: nn.Module) -> tuple[list[bool], list[bool]]:
    """Every module's ``training`` flag and every parameter's ``requires_grad``, in order."""
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]
