r"""All-reduce of AGOP partial sums across a ``torch.distributed`` process group.

Every field of an :class:`~nfm.features.accumulator.AGOPAccumulator` is a plain sum over data,
so for disjoint shards :math:`D_1, \dots, D_W` of a data set :math:`D` (one per rank),

.. math::

    \sum_{r \in D} J_r^T J_r = \sum_{w=1}^{W} \sum_{r \in D_w} J_r^T J_r ,

and likewise for :math:`\sum_r J_r` and the counts: an element-wise SUM all-reduce of the
per-rank sums gives every rank the sums of the whole data set, and hence its AGOP.

:func:`reduce_accumulator` does it in two steps that every rank of the group takes:

1. **metadata** (``all_gather_object``, a few hundred bytes per rank): each rank's keys, the
   shapes and dtypes of its sums, its counts, whether its ``sum_jtj`` are exactly symmetric, and
   (for a rank with no samples) the keys it expects. Every rank checks the same gathered list
   with the same code, so a mismatch raises the same :class:`~nfm.exceptions.NFMInputError`
   (naming the rank, the key and the shapes) on every rank and no rank is left waiting in a
   collective. A rank with no samples has no shapes of its own: it takes them from the ranks
   that have samples and contributes zeros.
2. **one** ``all_reduce`` (SUM) of a flat float64 buffer that packs, key after key, the counts
   :math:`(n_\text{samples}, n_\text{rows})`, the upper triangle of ``sum_jtj`` (the whole matrix
   when some rank's is not exactly symmetric) and ``sum_j``: :math:`2 + d(d+1)/2 + k d` numbers
   per key. The reduced counts are then checked against the sum of the gathered counts.

The buffer lives on CUDA when the group's backend has NCCL and on the CPU otherwise
(:func:`nfm.distributed.groups.buffer_device`); the reduced sums are written back in place, on
the accumulator's device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nfm.distributed.groups import buffer_device, group_rank, resolve_process_group
from nfm.exceptions import NFMError, NFMInputError
from nfm.features.accumulator import AGOPAccumulator

logger = logging.getLogger(__name__)

__all__ = [
    "KeyMeta",
    "RankMeta",
    "RemoteRankError",
    "Slot",
    "exchange_metadata",
    "local_metadata",
    "pack",
    "plan_reduce",
    "raise_remote_failures",
    "reduce_accumulator",
    "reduce_checked",
    "reduced_sizes",
    "unpack_into",
]

_FLOAT64 = str(torch.float64)
_MAX_FAILURE_CHARS = 2000


class RemoteRankError(NFMError):
    """Another rank of the process group failed before the reduce (its message is quoted)."""


@dataclass(frozen=True)
class KeyMeta:
    """What one rank holds under one key (plain values, cheap to pickle)."""

    key: str
    jtj_shape: tuple[int, ...]
    j_shape: tuple[int, ...]
    dtypes: tuple[str, str, str]
    n_samples: float
    n_rows: float
    symmetric: bool


@dataclass(frozen=True)
class RankMeta:
    """One rank's metadata: its keys (empty when it has no samples) and what it expects."""

    rank: int
    keys: tuple[KeyMeta, ...]
    expected_keys: tuple[str, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None


@dataclass(frozen=True)
class Slot:
    """Where one key's sums sit in the flat buffer."""

    key: str
    d: int
    k: int
    triangle: bool
    offset: int

    @property
    def size(self) -> int:
        """Numbers in the buffer: 2 counts, ``sum_jtj`` (its upper triangle) and ``sum_j``."""
        return (
            2 + (self.d * (self.d + 1) // 2 if self.triangle else self.d * self.d) + self.k * self.d
        )


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def local_metadata(
    accumulator: AGOPAccumulator,
    rank: int,
    *,
    expected_keys: Iterable[str] | None = None,
    info: dict[str, Any] | None = None,
    failure: str | None = None,
) -> RankMeta:
    """This rank's :class:`RankMeta` (keys in the accumulator's order)."""
    if not isinstance(accumulator, AGOPAccumulator):
        raise NFMInputError(
            f"accumulator must be an AGOPAccumulator; got {type(accumulator).__name__}"
        )
    keys = []
    for key, fields in accumulator.state_dict().items():
        counts, sum_jtj, sum_j = fields["counts"], fields["sum_jtj"], fields["sum_j"]
        keys.append(
            KeyMeta(
                key=key,
                jtj_shape=tuple(sum_jtj.shape),
                j_shape=tuple(sum_j.shape),
                dtypes=(str(counts.dtype), str(sum_jtj.dtype), str(sum_j.dtype)),
                n_samples=float(counts[0]),
                n_rows=float(counts[1]),
                symmetric=bool(torch.equal(sum_jtj, sum_jtj.T)),
            )
        )
    return RankMeta(
        rank=rank,
        keys=tuple(keys),
        expected_keys=None if expected_keys is None else tuple(expected_keys),
        info=dict(info or {}),
        failure=failure,
    )


def exchange_metadata(meta: RankMeta, group: Any) -> list[RankMeta]:
    """Every rank's :class:`RankMeta`, in group-rank order (one ``all_gather_object``)."""
    _, world = group_rank(group)
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, meta, group=group)
    return gathered


def raise_remote_failures(metas: Sequence[RankMeta], own_rank: int) -> None:
    """Raise :class:`RemoteRankError` if a rank other than ``own_rank`` reported a failure.

    The failing rank itself is expected to re-raise its own exception after the exchange.
    """
    failed = [m for m in metas if m.failure is not None]
    if failed and all(m.rank != own_rank for m in failed):
        details = "; ".join(f"rank {m.rank}: {m.failure}" for m in failed)
        raise RemoteRankError(
            f"the distributed AGOP was abandoned on every rank because {len(failed)} rank(s) "
            f"failed before the reduce: {details}"
        )


def _key_names(meta: RankMeta) -> tuple[list[str] | None, str]:
    if meta.keys:
        return [k.key for k in meta.keys], "holds"
    if meta.expected_keys is not None:
        return list(meta.expected_keys), "expects (it has no samples)"
    return None, ""


def _check_counts(meta: RankMeta, km: KeyMeta) -> None:
    for name, value in (("n_samples", km.n_samples), ("n_rows", km.n_rows)):
        if not math.isfinite(value) or value < 0 or value != round(value):
            raise NFMInputError(
                f"rank {meta.rank} holds {name}={value!r} under key {km.key!r}; counts must be "
                "non-negative whole numbers"
            )


def plan_reduce(metas: Sequence[RankMeta]) -> list[Slot]:
    """Check that the ranks agree and lay the keys out in the buffer (reference rank's order).

    The reference is the first rank (in group order) that holds sums. Every rank that holds
    sums must hold the same keys with the same shapes, float64 sums and whole, non-negative
    counts; a rank without samples that says which keys it expects must expect the same keys.

    Raises
    ------
    NFMInputError
        No rank holds sums, or a rank disagrees (the message names the rank, the key, the
        shapes or dtypes, and the reference rank).
    """
    holders = [m for m in metas if m.keys]
    if not holders:
        raise NFMInputError(
            f"no rank of the process group holds AGOP sums: the data is empty on all "
            f"{len(metas)} ranks; give at least one rank some samples"
        )
    ref = holders[0]
    ref_keys = [k.key for k in ref.keys]
    ref_by_key = {k.key: k for k in ref.keys}
    for meta in metas:
        names, verb = _key_names(meta)
        if names is None:
            continue
        if len(set(names)) != len(names) or set(names) != set(ref_keys):
            missing = [k for k in ref_keys if k not in names]
            extra = [k for k in names if k not in ref_by_key]
            raise NFMInputError(
                f"the ranks disagree on the AGOP keys: rank {meta.rank} {verb} {names} but "
                f"rank {ref.rank} holds {ref_keys} (missing on rank {meta.rank}: {missing}; "
                f"extra: {extra}). Every rank must select the same layers and include_input"
            )
        for km in meta.keys:
            r = ref_by_key[km.key]
            if km.jtj_shape != r.jtj_shape or km.j_shape != r.j_shape:
                raise NFMInputError(
                    f"the ranks disagree on the shapes under key {km.key!r}: rank {meta.rank} "
                    f"holds sum_jtj {km.jtj_shape} and sum_j {km.j_shape}, rank {ref.rank} "
                    f"holds sum_jtj {r.jtj_shape} and sum_j {r.j_shape}. The ranks' models "
                    "(layer widths) or output selections differ"
                )
            if km.dtypes != (_FLOAT64,) * 3:
                raise NFMInputError(
                    f"rank {meta.rank} holds sums of dtypes {km.dtypes} (counts, sum_jtj, "
                    f"sum_j) under key {km.key!r}; AGOP sums must be float64"
                )
            _check_counts(meta, km)
    slots: list[Slot] = []
    offset = 0
    for key in ref_keys:
        r = ref_by_key[key]
        symmetric = all(km.symmetric for meta in holders for km in meta.keys if km.key == key)
        slot = Slot(key=key, d=r.jtj_shape[0], k=r.j_shape[0], triangle=symmetric, offset=offset)
        slots.append(slot)
        offset += slot.size
    return slots


def agreed_info(metas: Sequence[RankMeta], name: str) -> Any:
    """The value of ``info[name]`` that the ranks reporting one agree on (None if none does).

    Raises
    ------
    NFMInputError
        Two ranks report different values (the message names both ranks).
    """
    reported = [(m.rank, m.info.get(name)) for m in metas if m.info.get(name) is not None]
    if not reported:
        return None
    first_rank, first = reported[0]
    for rank, value in reported[1:]:
        if value != first:
            raise NFMInputError(
                f"the ranks disagree on {name}: rank {rank} has {value!r} but rank "
                f"{first_rank} has {first!r}; every rank must call with the same settings"
            )
    return first


# --------------------------------------------------------------------------------------------
# The buffer
# --------------------------------------------------------------------------------------------


def pack(accumulator: AGOPAccumulator, slots: Sequence[Slot], device: torch.device) -> torch.Tensor:
    """The flat float64 buffer of ``accumulator``'s sums laid out by ``slots`` (zeros if absent)."""
    total = sum(slot.size for slot in slots)
    buffer = torch.zeros(total, dtype=torch.float64, device=device)
    state = accumulator.state_dict()
    for slot in slots:
        if slot.key not in state:
            continue  # a rank without samples contributes zeros
        fields = state[slot.key]
        jtj = fields["sum_jtj"].to(device)
        n_jtj = slot.size - 2 - slot.k * slot.d
        lo = slot.offset
        buffer[lo : lo + 2] = fields["counts"].to(device)
        if slot.triangle:
            rows, cols = torch.triu_indices(slot.d, slot.d, device=device)
            buffer[lo + 2 : lo + 2 + n_jtj] = jtj[rows, cols]
        else:
            buffer[lo + 2 : lo + 2 + n_jtj] = jtj.reshape(-1)
        buffer[lo + 2 + n_jtj : lo + slot.size] = fields["sum_j"].to(device).reshape(-1)
    return buffer


def unpack_into(accumulator: AGOPAccumulator, slots: Sequence[Slot], buffer: torch.Tensor) -> None:
    """Write the sums in ``buffer`` into ``accumulator`` in place (keys it lacks are added)."""
    missing = {
        slot.key: {
            "counts": torch.zeros(2, dtype=torch.float64),
            "sum_jtj": torch.zeros(slot.d, slot.d, dtype=torch.float64),
            "sum_j": torch.zeros(slot.k, slot.d, dtype=torch.float64),
        }
        for slot in slots
        if slot.key not in accumulator
    }
    if missing:
        accumulator.merge(AGOPAccumulator.from_state_dict(missing))
    state = accumulator.state_dict()
    for slot in slots:
        fields = state[slot.key]
        n_jtj = slot.size - 2 - slot.k * slot.d
        lo = slot.offset
        fields["counts"].copy_(buffer[lo : lo + 2])
        values = buffer[lo + 2 : lo + 2 + n_jtj]
        if slot.triangle:
            rows, cols = torch.triu_indices(slot.d, slot.d, device=buffer.device)
            jtj = torch.zeros(slot.d, slot.d, dtype=torch.float64, device=buffer.device)
            jtj[rows, cols] = values
            jtj[cols, rows] = values
        else:
            jtj = values.reshape(slot.d, slot.d)
        fields["sum_jtj"].copy_(jtj)
        fields["sum_j"].copy_(buffer[lo + 2 + n_jtj : lo + slot.size].reshape(slot.k, slot.d))


def _check_reduced_counts(
    accumulator: AGOPAccumulator, slots: Sequence[Slot], metas: Sequence[RankMeta]
) -> None:
    """The reduced counts must be the sums of the gathered ones (exact: whole numbers < 2**53)."""
    for slot in slots:
        expected = sum(km.n_rows for m in metas for km in m.keys if km.key == slot.key)
        got = float(accumulator.state_dict()[slot.key]["counts"][1])
        if got != expected:
            raise NFMError(
                f"the all-reduce returned n_rows={got} under key {slot.key!r} but the ranks "
                f"reported {expected} in total; the collective did not sum the buffers"
            )


def reduce_checked(
    accumulator: AGOPAccumulator,
    group: Any,
    *,
    expected_keys: Iterable[str] | None = None,
    info: dict[str, Any] | None = None,
    agree_on: Sequence[str] = (),
    failure: str | None = None,
) -> list[RankMeta]:
    """Metadata exchange, checks, then one all-reduce into ``accumulator`` (in place).

    ``info`` holds small picklable values that travel with the metadata (the front ends send
    their compute dtype and the layers found to be output layers); ``failure``, when set, tells
    the other ranks that this rank's local pass failed (they raise :class:`RemoteRankError`,
    this rank returns the metadata without reducing, for the caller to re-raise its own
    exception). The ranks reporting an ``info`` entry named in ``agree_on`` must report the
    same value (:func:`agreed_info`), checked before the reduce. Returns every rank's metadata.
    """
    rank, _ = group_rank(group)
    meta = local_metadata(
        accumulator, rank, expected_keys=expected_keys, info=info, failure=failure
    )
    metas = exchange_metadata(meta, group)
    if failure is not None:
        return metas
    raise_remote_failures(metas, rank)
    slots = plan_reduce(metas)
    for name in agree_on:
        agreed_info(metas, name)
    device = buffer_device(group)
    buffer = pack(accumulator, slots, device)
    logger.debug(
        "all-reduce of %d AGOP keys: %d float64 numbers (%d bytes) on %s",
        len(slots),
        buffer.numel(),
        8 * buffer.numel(),
        device,
    )
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM, group=group)
    unpack_into(accumulator, slots, buffer)
    _check_reduced_counts(accumulator, slots, metas)
    return metas


def reduce_accumulator(
    accumulator: AGOPAccumulator,
    process_group: Any = "default",
    *,
    expected_keys: Iterable[str] | None = None,
) -> AGOPAccumulator:
    r"""Sum ``accumulator`` over every rank of ``process_group``, in place; return it.

    After the call every rank holds the partial sums of the union of the ranks' data, so
    :meth:`~nfm.features.AGOPAccumulator.result` gives the AGOP of the whole data set (when the
    ranks' data are disjoint). Every rank of the group must call it, also those with no
    samples.

    Parameters
    ----------
    accumulator : AGOPAccumulator
        This rank's partial sums. An empty accumulator (a rank with no samples) takes the keys
        and shapes of the other ranks and contributes zeros.
    process_group : "default" or torch.distributed.ProcessGroup
        The group to reduce over (:func:`~nfm.distributed.resolve_process_group`).
    expected_keys : iterable of str, optional
        For a rank with no samples, the keys it would have produced (its layer names, and
        ``"input"``): they are checked against the other ranks' keys.

    Returns
    -------
    AGOPAccumulator
        ``accumulator``, now holding the sums over all ranks.

    Raises
    ------
    NFMInputError
        The ranks hold different keys, shapes or dtypes, invalid counts, or no rank holds
        sums; raised on every rank alike, before any sums are communicated.
    """
    group = resolve_process_group(process_group)
    reduce_checked(accumulator, group, expected_keys=expected_keys)
    return accumulator


def reduced_sizes(accumulator: AGOPAccumulator) -> dict[str, int]:
    r"""Float64 numbers each key puts in the reduce buffer: :math:`2 + d(d+1)/2 + k d`.

    The whole buffer (their sum, times 8 bytes) is what each rank contributes to one
    all-reduce, whatever the number of samples. This counts the upper triangle of
    ``sum_jtj``, which is what travels when every rank's ``sum_jtj`` is exactly symmetric (as
    the engine's always are); otherwise the key sends :math:`2 + d^2 + k d` numbers.
    """
    sizes: dict[str, int] = {}
    for key, fields in accumulator.state_dict().items():
        d = fields["sum_jtj"].shape[0]
        k = fields["sum_j"].shape[0]
        sizes[key] = Slot(key=key, d=d, k=k, triangle=True, offset=0).size
    return sizes
