"""Feature matrices past one process: ``torch.distributed`` reductions, data shards, wrapped models.

An AGOP is a sum over data divided by a count, so the partial sums of disjoint data shards
(one per process) add up to the sums of the whole data set. This subpackage does that addition
across a ``torch.distributed`` process group, checked and in one collective:

==========================  ==================================================================
:func:`reduce_accumulator`  all-reduce an :class:`~nfm.features.AGOPAccumulator` (metadata
                            check first, then one ``all_reduce`` of a flat float64 buffer)
:func:`resolve_process_group`  ``"default"`` or a ``ProcessGroup`` -> the group, checked
:func:`shard_rows`,         an exact partition of the data (no padded or dropped sample), unlike
:class:`ShardSampler`       ``DistributedSampler`` on a data set whose size the world size does
                            not divide
:func:`full_replica`        a plain, unsharded copy of an FSDP model for the AGOP pass
:class:`RemoteRankError`    raised on every other rank when one rank's local pass failed
==========================  ==================================================================

The front ends take it through one argument: ``compute_agop(..., process_group="default")``
(also :func:`~nfm.features.accumulate_agop`, :func:`~nfm.ansatz.nfa_report` and
:class:`~nfm.tracking.NFATracker`). ``process_group=None``, the default, never communicates,
even under ``torchrun``: see ``docs/distributed.md``.

The names are loaded on first use, so importing a submodule (the engine imports
:mod:`nfm.distributed.models`) loads nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "DEFAULT_GROUP": "nfm.distributed.groups",
    "resolve_process_group": "nfm.distributed.groups",
    "is_main_process": "nfm.distributed.groups",
    "RemoteRankError": "nfm.distributed.reduce",
    "reduce_accumulator": "nfm.distributed.reduce",
    "reduced_sizes": "nfm.distributed.reduce",
    "ShardSampler": "nfm.distributed.sharding",
    "shard_range": "nfm.distributed.sharding",
    "shard_rows": "nfm.distributed.sharding",
    "full_replica": "nfm.distributed.models",
    "unwrap_data_parallel": "nfm.distributed.models",
}

__all__ = [
    "DEFAULT_GROUP",
    "RemoteRankError",
    "ShardSampler",
    "full_replica",
    "is_main_process",
    "reduce_accumulator",
    "reduced_sizes",
    "resolve_process_group",
    "shard_range",
    "shard_rows",
    "unwrap_data_parallel",
]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'nfm.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from nfm.distributed.groups import DEFAULT_GROUP, is_main_process, resolve_process_group
    from nfm.distributed.models import full_replica, unwrap_data_parallel
    from nfm.distributed.reduce import RemoteRankError, reduce_accumulator, reduced_sizes
    from nfm.distributed.sharding import ShardSampler, shard_range, shard_rows
