"""Slow, obviously correct float64 references for the AGOP.

``reference_agop``: one sample, one output at a time. For every sample x_i (alone, batch of
one) and every output j, one backward pass gives row j of the Jacobian of f with respect to the
input of each selected layer (and of the model input); the AGOP is the plain average of J^T J.
Positions (token dimensions between the batch and the feature dimension) each contribute one
Jacobian. Works on a float64 deep copy of the model so the model under test is never touched.
It perturbs layer inputs with forward pre-hooks, the engine's own convention.

``split_reference_agop``: independent of the engine's conventions -- the model written by hand
as explicit functions head(x) -> h and tail(x, h) -> f, Jacobians by ``torch.func.jacrev`` (see
the section below).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

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


# ---------------------------------------------------------------------------------------------
# An independent reference: per-sample Jacobians of a hand-split model with torch.func.jacrev
# ---------------------------------------------------------------------------------------------
#
# ``reference_agop`` above perturbs layer inputs with forward pre-hooks, as the engine does, so
# it shares the engine's convention for what "the Jacobian with respect to a layer input" is.
# ``split_reference_agop`` shares none of it: the model is written by hand as explicit functions
# of one sample, ``head(x) -> h`` (the input of the layer) and ``tail(x, h) -> f`` (the output
# with that layer's input replaced by ``h``; every other use of the intermediate values is
# computed from ``x`` and held fixed), and ``torch.func.jacrev`` differentiates ``tail`` in
# ``h``. No hooks, no engine code, no batching: one sample at a time, in float64.

Head = Callable[[torch.Tensor], torch.Tensor]
Tail = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def split_reference_agop(
    splits: Mapping[str, tuple[Head, Tail]],
    x: torch.Tensor,
    *,
    projection: torch.Tensor | None = None,
    centered: bool = False,
) -> dict[str, torch.Tensor]:
    r"""AGOP per key from per-sample ``jacrev`` Jacobians of hand-written model pieces.

    Parameters
    ----------
    splits : mapping key -> (head, tail)
        ``head(x_i)`` is the layer input of sample ``x_i`` (no batch axis), shape ``(d,)`` or
        ``(t_1, ..., d)`` (features last, every other entry a position); ``tail(x_i, h)`` is the
        model output for sample ``x_i`` with the layer's input replaced by ``h``.
    x : tensor ``(n, ...)``
    projection : tensor ``(k, c)``, optional
        AGOP of ``P f`` instead of ``f``.
    centered : bool
        Subtract the mean Jacobian row-block before the outer products (the definition
        :math:`\frac1m \sum_r (J_r - \bar J)^T (J_r - \bar J)`, not the engine's
        :math:`S/m - \bar J^T \bar J`).

    Returns
    -------
    dict[str, tensor]
        ``(d, d)`` float64 matrices: :math:`\frac1m \sum_r J_r^T J_r` over the ``m`` rows
        (samples times positions).
    """
    x = x.double()
    result: dict[str, torch.Tensor] = {}
    for key, (head, tail) in splits.items():
        rows: list[torch.Tensor] = []
        for xi in x:
            h = head(xi).detach()

            def output(v: torch.Tensor, xi: torch.Tensor = xi, tail: Tail = tail) -> torch.Tensor:
                f = tail(xi, v).reshape(-1)
                return f if projection is None else projection.double() @ f

            jac = torch.func.jacrev(output)(h)  # (k, *h.shape)
            per_position = jac.reshape(jac.shape[0], -1, h.shape[-1])  # (k, positions, d)
            rows.extend(per_position[:, t, :] for t in range(per_position.shape[1]))
        stack = torch.stack(rows)  # (m, k, d)
        if centered:
            stack = stack - stack.mean(dim=0, keepdim=True)
        d = stack.shape[-1]
        total = torch.zeros(d, d, dtype=torch.float64)
        for j in stack:
            total = total + j.T @ j
        result[key] = (total / stack.shape[0]).detach()
    return result


def input_split(model_of_one: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Head, Tail]:
    """(head, tail) of the model input: one flattened vector per sample."""

    def head(xi: torch.Tensor) -> torch.Tensor:
        return xi.reshape(-1)

    def tail(xi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return model_of_one(v.reshape(xi.shape))

    return head, tail
