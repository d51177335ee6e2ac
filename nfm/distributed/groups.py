"""Which process group a distributed AGOP uses, and where its buffers live.

``process_group=None`` (every front end's default) means *no communication*: each process
computes the AGOP of the data it was given. Reduction is asked for explicitly, with
``"default"`` (the default group of ``torch.distributed.init_process_group``, as under
``torchrun``) or a ``ProcessGroup`` object (e.g. from ``torch.distributed.new_group``). nfm never
reduces because a group happens to be initialised: a script that gives every rank the whole
data set would otherwise count every sample once per rank without noticing.
"""

from __future__ import annotations

from typing import Any

import torch

from nfm.exceptions import NFMInputError

__all__ = [
    "DEFAULT_GROUP",
    "buffer_device",
    "group_rank",
    "is_main_process",
    "resolve_process_group",
]

DEFAULT_GROUP = "default"
"""The value of ``process_group`` that names the default (world) group."""


def resolve_process_group(process_group: Any) -> Any:
    """The ``torch.distributed`` group that ``process_group`` names, checked.

    Parameters
    ----------
    process_group : "default" or torch.distributed.ProcessGroup
        ``"default"``: the default group (``torch.distributed.group.WORLD``); a group object:
        that group, of which this process must be a member.

    Returns
    -------
    torch.distributed.ProcessGroup

    Raises
    ------
    NFMInputError
        ``torch.distributed`` unavailable or not initialised, a string other than
        ``"default"``, an object that is not a process group, or a group this process is not in.
    """
    if not torch.distributed.is_available():
        raise NFMInputError(
            f"process_group={process_group!r} needs torch.distributed, which this PyTorch "
            "build does not provide"
        )
    dist = torch.distributed
    if isinstance(process_group, str):
        if process_group != DEFAULT_GROUP:
            raise NFMInputError(
                f"process_group must be None, {DEFAULT_GROUP!r} or a "
                f"torch.distributed.ProcessGroup; got the string {process_group!r}"
            )
        if not dist.is_initialized():
            raise NFMInputError(
                f"process_group={DEFAULT_GROUP!r} but torch.distributed is not initialised; "
                "call torch.distributed.init_process_group first (torchrun sets up its "
                "environment), or pass process_group=None for a single-process AGOP"
            )
        return dist.group.WORLD
    if isinstance(process_group, dist.ProcessGroup):
        if not dist.is_initialized():
            raise NFMInputError("process_group was given but torch.distributed is not initialised")
        if dist.get_rank(process_group) < 0:
            raise NFMInputError(
                f"this process (global rank {dist.get_rank()}) is not a member of the "
                "process_group passed; call the AGOP only on the group's ranks"
            )
        return process_group
    raise NFMInputError(
        f"process_group must be None, {DEFAULT_GROUP!r} or a torch.distributed.ProcessGroup; "
        f"got {type(process_group).__name__}"
    )


def group_rank(group: Any) -> tuple[int, int]:
    """``(rank of this process in group, group size)``."""
    dist = torch.distributed
    return dist.get_rank(group), dist.get_world_size(group)


def is_main_process(process_group: Any = None) -> bool:
    """Whether this process writes files: always without a group, rank 0 of the group with one."""
    if process_group is None:
        return True
    return group_rank(resolve_process_group(process_group))[0] == 0


def buffer_device(group: Any) -> torch.device:
    """Where the reduce buffer lives: CUDA (current device) when the backend has NCCL, else CPU.

    The rule reads the backend alone, so every rank picks the same kind of device (a group whose
    backend is ``"cpu:gloo,cuda:nccl"`` dispatches by the tensor's device, and ranks that chose
    differently would pair a gloo call with an NCCL one).
    """
    backend = str(torch.distributed.get_backend(group)).lower()
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
