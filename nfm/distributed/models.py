"""Wrapped models: data-parallel wrappers are looked through; FSDP models are copied unsharded.

* ``DistributedDataParallel`` and ``DataParallel`` hold the model unchanged as ``.module``; their
  own forward adds collectives (buffer broadcasts) or scatters to devices, which an AGOP pass
  must not trigger (a rank without data would never join them). The engine runs the forward of
  ``.module`` and keeps the wrapper for everything else, so the layer names, the keys of the
  result and :func:`nfm.features.compute_nfm` all use the names of the model as passed
  (``"module.0"`` under DDP). Pass ``ddp_model.module`` for the unprefixed names.
* An FSDP model (``FullyShardedDataParallel`` or ``fully_shard``) holds only a shard of each
  parameter, and its forward all-gathers the parameters in collectives that every rank must
  join in step, which ranks with different numbers of chunks (or none) do not. The engine
  refuses such a model; :func:`full_replica` gathers the full parameters once (a collective
  that every rank joins) into a plain copy of the architecture, on which the AGOP is computed.
  Each rank then holds the whole model, which the Jacobians through every layer need anyway.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from nfm.exceptions import NFMInputError

__all__ = ["full_replica", "sharded_modules", "unwrap_data_parallel"]


def unwrap_data_parallel(model: nn.Module) -> nn.Module:
    """The module inside (nested) ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def sharded_modules(model: nn.Module) -> list[str]:
    """Names of the FSDP modules of ``model`` and of its modules holding ``DTensor`` parameters.

    Looks only when ``torch.distributed.fsdp`` / ``torch.distributed.tensor`` were imported
    (no FSDP or DTensor model can exist otherwise), so it imports nothing.
    """
    kinds: list[type] = []
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None:
        for attribute in ("FullyShardedDataParallel", "FSDPModule"):
            cls = getattr(fsdp, attribute, None)
            if isinstance(cls, type):
                kinds.append(cls)
    tensor_module = sys.modules.get("torch.distributed.tensor")
    dtensor = getattr(tensor_module, "DTensor", None) if tensor_module is not None else None
    if not kinds and dtensor is None:
        return []
    names = []
    for name, module in model.named_modules():
        if kinds and isinstance(module, tuple(kinds)):
            names.append(name)
        elif isinstance(dtensor, type) and any(
            isinstance(p, dtensor) for p in module.parameters(recurse=False)
        ):
            names.append(name)
    return names


def reject_sharded(model: nn.Module) -> None:
    """Raise :class:`NFMInputError` for an FSDP (or DTensor-sharded) model."""
    names = sharded_modules(model)
    if names:
        shown = ", ".join(repr(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
        raise NFMInputError(
            f"model is sharded (FSDP or DTensor parameters in modules {shown}): its forward "
            "gathers parameters in collectives that every rank must join in step, which an "
            "AGOP pass over shards of different sizes cannot promise. Gather a plain copy "
            "first: replica = nfm.distributed.full_replica(model, template) with template a "
            "fresh, unwrapped instance of the architecture, then compute on the replica"
        )


def full_replica(model: nn.Module, template: nn.Module) -> nn.Module:
    """Load the full (unsharded) parameters and buffers of ``model`` into ``template``.

    Every rank of the model's process group must call it (the parameters are all-gathered:
    ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with
    ``full_state_dict=True``). ``model`` is not changed.

    Parameters
    ----------
    model : nn.Module
        An FSDP model (``FullyShardedDataParallel`` or ``fully_shard``); any other module works
        too (its state dict is copied).
    template : nn.Module
        A plain instance of the same architecture (not wrapped, not sharded), e.g. built by
        the same factory as the model; its parameters are overwritten.

    Returns
    -------
    nn.Module
        ``template``, holding the full weights, in ``model``'s training mode.

    Raises
    ------
    NFMInputError
        ``template`` is sharded itself, or its parameter names or shapes do not match.
    """
    if not isinstance(model, nn.Module) or not isinstance(template, nn.Module):
        raise NFMInputError(
            "model and template must be torch.nn.Module objects; got "
            f"{type(model).__name__} and {type(template).__name__}"
        )
    if sharded_modules(template):
        raise NFMInputError(
            "template must be a plain (unsharded) instance of the architecture; it holds FSDP "
            "modules or DTensor parameters"
        )
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    state = {
        name: value.full_tensor() if hasattr(value, "full_tensor") else value
        for name, value in state.items()
    }
    try:
        with torch.no_grad():
            template.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise NFMInputError(
            f"template does not match the model's state: {str(exc).strip().splitlines()[0]}"
        ) from None
    template.train(model.training)
    return template
