"""Slow, obviously correct float64 reference for the AGOP: one sample, one output at a time.

For every sample x_i (alone, batch of one) and every output j, one backward pass gives row j of
the Jacobian of f with respect to the input of each selected layer (and of the model input);
the AGOP is the plain average of J^T J. Positions (token dimensions between the batch and the
feature dimension) each contribute one Jacobian. Works on a float64 deep copy of the model so
the model under test is never touched.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def reference_agop(
    model: nn.Module,
    x: torch.Tensor,
    layer_names: list[str],
    *,
    include_input: bool = True,
    projection: torch.Tensor | None = None,
    centered: bool = False,
) -> dict[str, torch.Tensor]:
    """AGOP per key by a per-sample, per-output autograd loop in float64."""
    net = copy.deepcopy(model).double().eval()
    modules = dict(net.named_modules())
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    jacobians: dict[str, list[torch.Tensor]] = {}
    for i in range(x.shape[0]):
        deltas: dict[str, torch.Tensor] = {}
        handles = []

        def make_hook(name: str, deltas: dict[str, torch.Tensor] = deltas):
            def hook(module, args):
                delta = torch.zeros_like(args[0], requires_grad=True)
                deltas[name] = delta
                return (args[0] + delta, *args[1:])

            return hook

        for name in layer_names:
            handles.append(modules[name].register_forward_pre_hook(make_hook(name)))
        try:
            xi = x[i : i + 1].clone().requires_grad_(True)
            out = net(xi).reshape(-1)
        finally:
            for h in handles:
                h.remove()
        if projection is not None:
            out = projection.double() @ out
        keys = ([("input", xi)] if include_input else []) + [(n, deltas[n]) for n in layer_names]
        rows: dict[str, list[torch.Tensor]] = {k: [] for k, _ in keys}
        for j in range(out.shape[0]):
            grads = torch.autograd.grad(
                out[j], [t for _, t in keys], retain_graph=True, allow_unused=True
            )
            for (k, t), g in zip(keys, grads, strict=True):
                g = torch.zeros_like(t) if g is None else g
                rows[k].append(g)
        for k, t in keys:
            g = torch.stack(rows[k])  # (c, 1, ...)
            if k == "input":
                per_position = g.reshape(g.shape[0], 1, -1)
            else:
                per_position = g.reshape(g.shape[0], -1, t.shape[-1])  # (c, positions, d)
            for p in range(per_position.shape[1]):
                jacobians.setdefault(k, []).append(per_position[:, p, :])
    result: dict[str, torch.Tensor] = {}
    for k, js in jacobians.items():
        stack = torch.stack(js)  # (rows, c, d)
        if centered:
            stack = stack - stack.mean(dim=0, keepdim=True)
        total = torch.zeros(stack.shape[2], stack.shape[2], dtype=torch.float64)
        for j in stack:
            total += j.T @ j
        result[k] = total / stack.shape[0]
    return result
