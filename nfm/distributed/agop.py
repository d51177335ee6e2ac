"""The distributed AGOP pass behind ``process_group=`` in the front ends.

Every rank runs the ordinary single-process pass over its own shard (an empty shard is
allowed here), then every rank takes part in :func:`nfm.distributed.reduce.reduce_checked`:
the metadata exchange (keys, shapes, dtypes, counts, the compute dtype and the layers found to
be output layers) and one all-reduce of the sums. A rank whose local pass raised still joins the
exchange, reporting its error, so the other ranks raise :class:`RemoteRankError` instead of
waiting forever in a collective, and it re-raises its own exception.

A rank with no samples learns the shapes from the ranks that have samples (it has no forward
pass of its own to learn them from: with no data it does not know the input shape), checks that
its own selected keys are theirs, and takes the compute dtype they agree on when neither
``dtype`` nor the model says it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nfm._utils.arrays import ArrayKind
from nfm.distributed.groups import resolve_process_group
from nfm.distributed.reduce import agreed_info, reduce_checked
from nfm.distributed.sharding import check_shard_sampler
from nfm.features.accumulator import AGOPAccumulator
from nfm.features.jacobians import AGOPPass
from nfm.models.state import model_device_dtype

__all__ = ["distributed_agop_pass"]


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _dtype_from_name(name: str) -> torch.dtype:
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):  # pragma: no cover - names come from str(torch.dtype)
        raise ValueError(f"not a torch dtype: {name!r}")
    return value


def distributed_agop_pass(
    model: nn.Module,
    data: Any,
    *,
    process_group: Any,
    dtype: torch.dtype | None,
    **settings: Any,
) -> tuple[AGOPAccumulator, ArrayKind, AGOPPass]:
    """:func:`nfm.features.agop.run_agop_pass` over this rank's shard, summed over the group.

    Returns the same triple as the single-process pass; the accumulator holds the sums of all
    ranks' data, on every rank.
    """
    from nfm.features.agop import run_agop_pass  # the engine imports this module lazily

    group = resolve_process_group(process_group)
    try:
        check_shard_sampler(data, group)
        acc, kind, run = run_agop_pass(
            model, data, dtype=dtype, process_group=None, allow_empty=True, **settings
        )
    except Exception as exc:
        reduce_checked(AGOPAccumulator(), group, failure=_describe(exc))
        raise
    has_samples = len(acc) > 0
    dtype_known = has_samples or dtype is not None or model_device_dtype(model)[1] is not None
    info = {
        "compute dtype": str(run.dtype) if dtype_known else None,
        "output layers": sorted(run.output_layers) if has_samples else None,
    }
    metas = reduce_checked(
        acc, group, expected_keys=run.keys_in_order, info=info, agree_on=("compute dtype",)
    )
    if not dtype_known:
        run.dtype = _dtype_from_name(agreed_info(metas, "compute dtype"))
    run.output_layers = {name for m in metas for name in (m.info.get("output layers") or ())}
    return acc, kind, run
