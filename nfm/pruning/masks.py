r"""Prune units or single weights of ``nn.Linear`` layers by their scores, as masks.

Masks are applied with :func:`torch.nn.utils.prune.custom_from_mask`: the layer keeps its
original weight as the parameter ``weight_orig``, a buffer ``weight_mask`` holds the mask, and a
forward pre-hook sets ``weight = weight_orig * weight_mask`` before every call. A masked entry
therefore stays zero through forward and backward passes and through fine-tuning (its gradient
is zero), until :func:`make_permanent` folds the mask into a plain ``weight`` parameter.

**Removing a unit.** Unit :math:`j` of a layer is entry :math:`h_j` of its input (a hidden unit
of the layer before, or an input feature). It is removed by masking **column** :math:`j` of
the weight of the layer that *reads* it, not row :math:`j` (and bias :math:`j`) of the layer
that *produces* it:

* the output then does not depend on the unit at all, whatever lies between the two layers:
  zeroing the producer's row leaves :math:`h_j = \sigma(0)`, which is :math:`0.5` for a
  sigmoid and a constant the next layer still reads; a normalisation in between would also
  change it;
* the network computes exactly the function of the smaller network without the unit (the
  tests check this against a narrower network built by hand);
* the producer's row then receives zero gradient (nothing downstream reads it), so it can be
  dropped when the network is exported at its smaller size.

**Amount.** ``amount`` is the share of the layer's units (or weights) that are masked after
the call: the :math:`\min(\mathrm{round}(\mathrm{amount} \cdot n),\, n - 1)` lowest-scoring
ones, ties broken by position (the first one goes first). Entries that an earlier mask already
removed stay removed and count towards the amount, so the same call twice gives the same
mask; at least one unit of every layer is kept.

The model passed in is never modified unless ``inplace=True``: by default the functions prune
and return a deep copy. Every argument is checked before anything is pruned, so a failing call
with ``inplace=True`` leaves the model as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from nfm.exceptions import LayerSelectionError, NFMInputError
from nfm.pruning.importance import linear_layers

__all__ = [
    "copy_model",
    "lowest_score_mask",
    "make_permanent",
    "prune_units",
    "prune_weights",
    "pruning_summary",
]


def _check_amount(amount: Any) -> float:
    if (
        isinstance(amount, bool)
        or not isinstance(amount, (int, float, np.integer, np.floating))
        or not math.isfinite(float(amount))
        or not 0.0 <= float(amount) < 1.0
    ):
        raise NFMInputError(
            f"amount must be a number in [0, 1) (the share of units or weights to remove); "
            f"got {amount!r}"
        )
    return float(amount)


def _check_inplace(inplace: Any) -> None:
    if not isinstance(inplace, bool):
        raise NFMInputError(f"inplace must be True or False; got {inplace!r}")


def _as_scores(value: Any, name: str, shape: tuple[int, ...] | None) -> torch.Tensor:
    """``value`` as a finite float64 CPU tensor of ``shape`` (any shape when None)."""
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise NFMInputError(
            f"{name} must be a numeric array of shape {shape}; got {type(value).__name__}"
        ) from exc
    if shape is not None and tuple(t.shape) != shape:
        raise NFMInputError(f"{name} must have shape {shape}; got {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise NFMInputError(f"{name} must be real numbers; got dtype {t.dtype}")
    t = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(t).all():
        raise NFMInputError(f"{name} has NaN or infinite scores")
    return t


def lowest_score_mask(
    scores: Any, amount: float, *, already_removed: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Boolean keep-mask that removes the lowest-scoring entries of ``scores``.

    With :math:`n` entries, :math:`m = \min(\mathrm{round}(\mathrm{amount}\cdot n), n - 1)`
    entries are removed in all: every entry of ``already_removed`` first, then the
    lowest-scoring remaining ones (a stable sort: among equal scores the first position goes
    first) until :math:`m` are removed.

    Parameters
    ----------
    scores : tensor or array, any shape
    amount : float in [0, 1)
    already_removed : bool tensor of the same shape, optional

    Returns
    -------
    bool tensor of the shape of ``scores``
        True = kept.
    """
    amount = _check_amount(amount)
    s = _as_scores(scores, "scores", None)
    flat = s.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise NFMInputError("scores is empty: nothing to prune")
    removed = torch.zeros(n, dtype=torch.bool)
    if already_removed is not None:
        if tuple(already_removed.shape) != tuple(s.shape):
            raise NFMInputError(
                f"already_removed must have shape {tuple(s.shape)}; got "
                f"{tuple(already_removed.shape)}"
            )
        removed = already_removed.reshape(-1).to("cpu", torch.bool).clone()
    target = min(round(amount * n), n - 1)
    extra = target - int(removed.sum())
    if extra > 0:
        candidates = torch.nonzero(~removed).reshape(-1)
        order = torch.argsort(flat[candidates], stable=True)
        removed[candidates[order[:extra]]] = True
    return (~removed).reshape(s.shape)


def _existing_mask(module: nn.Linear) -> torch.Tensor | None:
    mask = getattr(module, "weight_mask", None)
    return mask.detach().to("cpu") if isinstance(mask, torch.Tensor) else None


def _prepare(
    model: nn.Module, scores: Mapping[str, Any], amount: Any, inplace: Any, per_unit: bool
) -> tuple[float, dict[str, torch.Tensor]]:
    amount = _check_amount(amount)
    _check_inplace(inplace)
    if not isinstance(scores, Mapping) or not scores:
        raise NFMInputError(
            "scores must be a non-empty mapping {layer name: scores}, e.g. the result of "
            f"nfm.pruning.{'unit' if per_unit else 'weight'}_importance; "
            f"got {type(scores).__name__}"
        )
    selected = linear_layers(model, list(scores))
    _refuse_functional_use(model, selected)
    checked = {}
    for name, module in selected.items():
        shape = (module.in_features,) if per_unit else tuple(module.weight.shape)
        checked[name] = _as_scores(scores[name], f"scores[{name!r}]", shape)
    return amount, checked


def _refuse_functional_use(model: nn.Module, selected: Mapping[str, nn.Module]) -> None:
    """Refuse linear layers whose weight a parent reads directly instead of calling them.

    ``nn.MultiheadAttention`` passes ``out_proj.weight`` to a functional forward and never
    calls ``out_proj``, so the pruning hook (which recomputes ``weight`` before each call of
    the layer) would not run and a fine-tuned ``weight_orig`` would never reach the output.
    """
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            name = f"{parent_name}.out_proj" if parent_name else "out_proj"
            if name in selected:
                raise LayerSelectionError(
                    f"layer {name!r} is the output projection of nn.MultiheadAttention "
                    f"{parent_name!r}, which reads its weight without calling it; it cannot be "
                    "pruned with a mask hook"
                )


def _apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], inplace: bool) -> nn.Module:
    target = model if inplace else copy_model(model)
    modules = dict(target.named_modules())
    for name, keep in masks.items():
        module = modules[name]
        weight = module.weight
        mask = keep.to(device=weight.device, dtype=weight.dtype).contiguous()
        prune.custom_from_mask(module, "weight", mask)
    return target


def prune_units(
    model: nn.Module, scores: Mapping[str, Any], amount: float, *, inplace: bool = False
) -> nn.Module:
    r"""Remove the lowest-scoring input units of each layer by masking its weight's columns.

    For each ``name, s`` in ``scores``: ``s`` has one score per input unit of the
    ``nn.Linear`` layer ``name`` (``in_features`` of them, e.g. from
    :func:`nfm.pruning.unit_importance`); the columns :math:`j` of the lowest-scoring units
    (see :func:`lowest_score_mask` for the count and ties) are masked in ``weight``, so the
    layer reads nothing of them (module docstring: why columns of the reader and not rows of
    the producer).

    Parameters
    ----------
    model : nn.Module
    scores : mapping
        ``{layer name: (in_features,) scores}``; higher = more important.
    amount : float in [0, 1)
        Share of each layer's units removed after the call.
    inplace : bool
        Prune ``model`` itself; default False: prune and return a deep copy.

    Returns
    -------
    nn.Module
        The pruned copy (or ``model`` when ``inplace``), with a ``torch.nn.utils.prune`` mask on
        the ``weight`` of every layer in ``scores``.

    Raises
    ------
    NFMInputError
        ``amount`` outside [0, 1) (or not a number), scores of the wrong shape or not finite,
        an empty mapping.
    LayerSelectionError
        A layer name that is not in the model, or a layer that is not an ``nn.Linear``.
    """
    amount, checked = _prepare(model, scores, amount, inplace, per_unit=True)
    modules = dict(model.named_modules())
    masks = {}
    for name, s in checked.items():
        existing = _existing_mask(modules[name])
        removed = None if existing is None else (existing == 0).all(dim=0)
        keep = lowest_score_mask(s, amount, already_removed=removed)
        masks[name] = keep[None, :].expand(modules[name].weight.shape)
    return _apply_masks(model, masks, inplace)


def prune_weights(
    model: nn.Module, scores: Mapping[str, Any], amount: float, *, inplace: bool = False
) -> nn.Module:
    r"""Remove the lowest-scoring single weights of each layer (unstructured pruning).

    For each ``name, s`` in ``scores``: ``s`` has the shape ``(out_features, in_features)`` of
    the layer's weight (e.g. from :func:`nfm.pruning.weight_importance`); the
    :math:`\mathrm{round}(\mathrm{amount}\cdot n)` lowest-scoring weights of that layer are
    masked (the amount is per layer). Biases are kept. Arguments, return value and errors as in
    :func:`prune_units`.
    """
    amount, checked = _prepare(model, scores, amount, inplace, per_unit=False)
    modules = dict(model.named_modules())
    masks = {}
    for name, s in checked.items():
        existing = _existing_mask(modules[name])
        removed = None if existing is None else existing == 0
        masks[name] = lowest_score_mask(s, amount, already_removed=removed)
    return _apply_masks(model, masks, inplace)


def _pruned_tensor_names(module: nn.Module) -> list[str]:
    return [
        hook._tensor_name
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    ]


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that also works when it carries ``torch.nn.utils.prune`` masks.

    A pruned tensor (``weight = weight_orig * weight_mask``) is not a graph leaf, and
    ``copy.deepcopy`` refuses such tensors; it is copied as a detached placeholder and then
    recomputed in the copy from the copy's own ``weight_orig`` and ``weight_mask``.
    """
    memo: dict[int, Any] = {}
    pruned = []
    for name, module in model.named_modules():
        for tensor_name in _pruned_tensor_names(module):
            value = getattr(module, tensor_name)
            memo[id(value)] = value.detach().clone()
            pruned.append((name, tensor_name))
    clone = copy.deepcopy(model, memo)
    modules = dict(clone.named_modules())
    for name, tensor_name in pruned:
        module = modules[name]
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == tensor_name:
                setattr(module, tensor_name, hook.apply_mask(module))
    return clone


def make_permanent(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask into its parameter (``prune.remove``).

    Afterwards each pruned tensor is a plain parameter again (``weight``, with the masked
    entries zero), ``weight_orig`` and ``weight_mask`` are gone and so are the pruning hooks;
    further training can move the zeros again.

    Parameters
    ----------
    model : nn.Module
    inplace : bool
        Change ``model`` itself; default False: return a changed deep copy.

    Returns
    -------
    nn.Module
    """
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    _check_inplace(inplace)
    target = model if inplace else copy_model(model)
    for module in target.modules():
        for tensor_name in _pruned_tensor_names(module):
            prune.remove(module, tensor_name)
    return target


def pruning_summary(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What is zero in every ``nn.Linear`` weight, as it acts (masks applied).

    Returns
    -------
    dict[str, dict]
        Per layer, in model order: ``weights`` (count), ``zero_weights``, ``weight_sparsity``
        (their ratio), ``units`` (``in_features``), ``zero_columns`` (input units the layer no
        longer reads), ``masked`` (whether a ``torch.nn.utils.prune`` mask is attached).
    """
    if not isinstance(model, nn.Module):
        raise NFMInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    summary = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight.detach()
        zero = w == 0
        summary[name] = {
            "weights": int(w.numel()),
            "zero_weights": int(zero.sum()),
            "weight_sparsity": float(zero.sum()) / max(int(w.numel()), 1),
            "units": int(module.in_features),
            "zero_columns": int(zero.all(dim=0).sum()),
            "masked": "weight" in _pruned_tensor_names(module),
        }
    return summary
