"""Exact shards of a data set: every sample on exactly one rank.

``torch.utils.data.DistributedSampler`` makes every rank's shard the same length: with
``drop_last=False`` it repeats samples from the start of the data set to pad the last shards,
with ``drop_last=True`` it drops the tail. Either way, when the world size does not divide the
data set's length, the summed AGOP is not the AGOP of the data set (a repeated sample counts
twice, a dropped one not at all). Training does not mind; an average over the data set does.

:func:`shard_range` gives rank ``r`` of ``W`` the contiguous rows
``[floor(r n / W), floor((r + 1) n / W))``: the shards partition the ``n`` rows, their lengths
differ by at most one, and a rank may get none (``n < W``), which the reduce handles.
:func:`shard_rows` slices a tensor or array that way and :class:`ShardSampler` is the same
partition as a ``Sampler`` for a ``DataLoader``. :func:`check_shard_sampler` refuses a
``DistributedSampler`` that would pad or drop samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from nfm.distributed.groups import DEFAULT_GROUP, group_rank, resolve_process_group
from nfm.exceptions import NFMInputError

__all__ = ["ShardSampler", "check_shard_sampler", "shard_range", "shard_rows"]


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise NFMInputError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def shard_range(n: int, rank: int, world_size: int) -> range:
    r"""Rows of rank ``rank`` (:math:`r`) of ``world_size`` (:math:`W`) out of ``n``.

    They are :math:`[\lfloor r n / W\rfloor, \lfloor (r+1) n / W\rfloor)`; the ranges
    of ranks ``0 .. W-1`` partition ``range(n)`` in order.
    """
    n = _check_int(n, "n", 0)
    world_size = _check_int(world_size, "world_size", 1)
    rank = _check_int(rank, "rank", 0)
    if rank >= world_size:
        raise NFMInputError(f"rank must be < world_size={world_size}; got {rank}")
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def _rank_and_size(process_group: Any, rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    group_r, group_w = group_rank(resolve_process_group(process_group))
    return (group_r if rank is None else rank), (group_w if world_size is None else world_size)


def shard_rows(
    data: Any,
    process_group: Any = DEFAULT_GROUP,
    *,
    rank: int | None = None,
    world_size: int | None = None,
) -> Any:
    """This rank's rows of a tensor or array (a view), by :func:`shard_range`.

    ``rank`` and ``world_size`` default to this process's rank in ``process_group`` and the
    group's size.
    """
    if not isinstance(data, (torch.Tensor, np.ndarray)) or data.ndim == 0:
        raise NFMInputError(
            "data must be a tensor or numpy array with a batch dimension first; got "
            f"{type(data).__name__}"
            + (" of 0 dimensions" if isinstance(data, (torch.Tensor, np.ndarray)) else "")
            + " (for a Dataset, use ShardSampler in a DataLoader)"
        )
    r, w = _rank_and_size(process_group, rank, world_size)
    rows = shard_range(int(data.shape[0]), r, w)
    return data[rows.start : rows.stop]


class ShardSampler(Sampler[int]):
    """Indices of this rank's exact shard of a data set (no padding, no dropping, in order).

    Parameters
    ----------
    dataset : sized
        The data set (anything with ``len``), or its length as an int.
    process_group : "default" or ProcessGroup
        Gives ``rank`` and ``num_replicas`` when they are not passed.
    num_replicas, rank : int, optional
        As in ``DistributedSampler``.
    """

    def __init__(
        self,
        dataset: Any,
        process_group: Any = DEFAULT_GROUP,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(dataset, (int, np.integer)) and not isinstance(dataset, bool):
            n = int(dataset)
        else:
            try:
                n = len(dataset)
            except TypeError:
                raise NFMInputError(
                    f"dataset must have a length (or be an int); got {type(dataset).__name__}"
                ) from None
        self.rank, self.num_replicas = _rank_and_size(process_group, rank, num_replicas)
        self.indices = shard_range(n, self.rank, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _samplers_of(data: Any) -> list[Any]:
    found = [getattr(data, "sampler", None)]
    batch_sampler = getattr(data, "batch_sampler", None)
    found.append(getattr(batch_sampler, "sampler", None))
    return [s for s in found if s is not None]


def check_shard_sampler(data: Any, group: Any) -> None:
    """Refuse a data loader whose ``DistributedSampler`` would pad or drop samples, or is set
    up for another rank or world size than this process in ``group``.

    Raises
    ------
    NFMInputError
        With the data set length, the world size and what the sampler would do.
    """
    from torch.utils.data.distributed import DistributedSampler

    rank, world = group_rank(group)
    for sampler in _samplers_of(data):
        if not isinstance(sampler, DistributedSampler):
            continue
        if sampler.num_replicas != world or sampler.rank != rank:
            raise NFMInputError(
                f"the data's DistributedSampler is set up for rank {sampler.rank} of "
                f"{sampler.num_replicas} but this process is rank {rank} of {world} in the "
                "process group"
            )
        n = len(sampler.dataset)
        if n % world != 0:
            what = (
                f"drops the last {n % world} sample(s)"
                if sampler.drop_last
                else f"repeats {sampler.total_size - n} sample(s) to pad the shards"
            )
            raise NFMInputError(
                f"the data's DistributedSampler {what}: the data set has {n} samples and the "
                f"world size {world} does not divide it, so the reduced AGOP would not be the "
                "AGOP of the data set. Use nfm.distributed.ShardSampler(dataset) as the "
                "DataLoader's sampler (an exact partition)"
            )
