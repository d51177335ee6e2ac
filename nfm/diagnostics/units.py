r"""Dead and saturated units: where an elementwise activation passes no gradient.

For an activation :math:`\sigma` applied to the pre-activation :math:`z_{iu}` of unit :math:`u`
on sample :math:`i`, the unit is *flat* on that sample when its slope is below a small share
of the activation's largest slope,

.. math:: |\sigma'(z_{iu})| < \tau \, \max_z |\sigma'(z)|, \qquad \tau = 0.01 \text{ by default}.

(ReLU: :math:`z \le 0`; tanh: :math:`|\tanh z| > 0.995`; sigmoid: :math:`|z| > 5.99`.) The
slope comes from autograd on the captured pre-activation, so every elementwise activation
module works; the largest slope is found once per module on a grid of :math:`z \in [-30, 30]`.
A unit flat on **every** probe sample is *dead* (it never passes a gradient back on this
data); one flat on at least ``saturated_share`` (99%) of them is *saturated* (dead units
included). Only activation **modules** are seen: an activation called as a function inside
``forward`` (``torch.relu(x)``) is invisible to hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nfm.diagnostics._data import as_samples, check_model
from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.models.state import ModelState

__all__ = ["ELEMENTWISE_ACTIVATIONS", "SATURATING_ACTIVATIONS", "unit_activity"]

#: Activation modules that act entry by entry (the slope of each unit is its own derivative).
ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.Tanhshrink,
)
#: Bounded activations, whose flat units are called saturated rather than dead.
SATURATING_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Softsign,
)


def _slope(module: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of the module at ``z``, without triggering its hooks."""
    with torch.enable_grad():
        leaf = z.detach().clone().requires_grad_(True)
        value = module.forward(leaf * 1.0)  # a non-leaf, so an in-place activation is fine
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    return grad.abs()


def _max_slope(module: nn.Module, dtype: torch.dtype, device: torch.device) -> float:
    grid = torch.linspace(-30.0, 30.0, 60001, dtype=torch.float64).to(device=device, dtype=dtype)
    if isinstance(module, nn.PReLU) and module.num_parameters > 1:
        grid = grid[:, None].expand(-1, module.num_parameters)
    return float(_slope(module, grid).max())


def _select_activations(
    model: nn.Module, modules: Sequence[str] | None
) -> tuple[dict[str, nn.Module], bool]:
    named = dict(model.named_modules())
    if modules is None:
        found = {n: m for n, m in named.items() if n and isinstance(m, ELEMENTWISE_ACTIVATIONS)}
        return found, False
    if isinstance(modules, str):
        modules = [modules]
    chosen: dict[str, nn.Module] = {}
    for name in modules:
        if name not in named:
            raise LayerSelectionError(f"modules: no module named {name!r} in the model")
        if not isinstance(named[name], ELEMENTWISE_ACTIVATIONS):
            raise LayerSelectionError(
                f"modules: {name!r} is a {type(named[name]).__name__}, not one of the "
                "elementwise activations nfm can read unit by unit "
                f"({', '.join(t.__name__ for t in ELEMENTWISE_ACTIVATIONS)})"
            )
        chosen[name] = named[name]
    return chosen, True


def unit_activity(
    model: nn.Module,
    data: Any,
    *,
    modules: Sequence[str] | None = None,
    flat_tolerance: float = 0.01,
    saturated_share: float = 0.99,
    unit_axis: int | None = None,
    chunk_size: int = 256,
) -> list[dict[str, Any]]:
    r"""Dead and saturated units of every elementwise activation module on the probe data.

    Parameters
    ----------
    model : nn.Module
    data : (n, ...) tensor or array
        Probe samples.
    modules : sequence of str, optional
        Names of activation modules; default every module of a type in
        :data:`ELEMENTWISE_ACTIVATIONS`.
    flat_tolerance : float in (0, 1)
        :math:`\tau` above.
    saturated_share : float in (0, 1]
        Share of samples on which a unit must be flat to count as saturated.
    unit_axis : int, optional
        Axis of the units for inputs of three or more dimensions (1 for the channels of a
        convolution, -1 for the features of tokens); the other axes are samples. A 2-D input
        ``(batch, units)`` needs none. Without it, such activations are refused when named in
        ``modules`` and skipped (row with ``skipped`` set) otherwise.
    chunk_size : int
        Samples per forward pass.

    Returns
    -------
    list of dict
        One per activation module in model order: ``module``, ``activation`` (class name),
        ``saturating`` (bounded activation), ``units``, ``samples`` (rows seen per unit),
        ``dead_fraction``, ``saturated_fraction``, ``flat_share`` (share of all
        (sample, unit) pairs that are flat), ``max_slope``, ``skipped`` (``None`` or why).

    Raises
    ------
    NFMInputError, LayerSelectionError
        Bad tolerances or data; a named module that is missing or not an elementwise
        activation; an activation of three or more dimensions named without ``unit_axis``.
    """
    check_model(model)
    if not 0.0 < float(flat_tolerance) < 1.0:
        raise NFMInputError(f"flat_tolerance must be in (0, 1); got {flat_tolerance!r}")
    if not 0.0 < float(saturated_share) <= 1.0:
        raise NFMInputError(f"saturated_share must be in (0, 1]; got {saturated_share!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise NFMInputError(f"chunk_size must be a positive integer; got {chunk_size!r}")
    x = as_samples(model, data)
    chosen, explicit = _select_activations(model, modules)
    counts: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    errors: list[Exception] = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if errors or name in skipped or not args or not isinstance(args[0], torch.Tensor):
                return
            z = args[0].detach()
            if z.ndim > 2 and unit_axis is None:
                reason = (
                    f"input of shape {tuple(z.shape)}: pass unit_axis (1 for convolution "
                    "channels, -1 for token features)"
                )
                if explicit:
                    errors.append(NFMInputError(f"unit_axis is needed for {name!r}: {reason}"))
                skipped[name] = reason
                return
            axis = 1 if z.ndim == 2 else unit_axis
            try:
                slope = _slope(module, z)
                slope = slope.movedim(axis, -1).reshape(-1, z.shape[axis])
            except (IndexError, RuntimeError) as exc:
                errors.append(
                    NFMInputError(f"unit_axis={unit_axis!r} does not fit {name!r}'s input: {exc}")
                )
                return
            entry = counts.get(name)
            if entry is None:
                entry = counts[name] = {
                    "max_slope": _max_slope(module, z.dtype, z.device),
                    "flat": torch.zeros(slope.shape[1], dtype=torch.int64),
                    "samples": 0,
                }
            flat = slope < flat_tolerance * entry["max_slope"]
            entry["flat"] = entry["flat"] + flat.sum(dim=0).cpu()
            entry["samples"] += int(slope.shape[0])

        return hook

    handles = []
    try:
        with ModelState(model, mode="eval"), torch.no_grad():
            for name, module in chosen.items():
                handles.append(module.register_forward_pre_hook(make_hook(name)))
            for start in range(0, x.shape[0], chunk_size):
                model(x[start : start + chunk_size])
                if errors:
                    raise errors[0]
    finally:
        for handle in handles:
            handle.remove()
    rows: list[dict[str, Any]] = []
    for name, module in chosen.items():
        row: dict[str, Any] = {
            "module": name,
            "activation": type(module).__name__,
            "saturating": isinstance(module, SATURATING_ACTIVATIONS),
            "skipped": skipped.get(name),
        }
        entry = counts.get(name)
        if entry is None:
            row["skipped"] = row["skipped"] or "never called by the forward pass"
            rows.append(row)
            continue
        share = entry["flat"].to(torch.float64) / entry["samples"]
        row.update(
            units=int(share.numel()),
            samples=int(entry["samples"]),
            dead_fraction=float((entry["flat"] == entry["samples"]).double().mean()),
            saturated_fraction=float((share >= saturated_share).double().mean()),
            flat_share=float(share.mean()),
            max_slope=entry["max_slope"],
        )
        rows.append(row)
    return rows
