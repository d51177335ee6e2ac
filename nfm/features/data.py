"""Data for the feature-matrix passes: tensors, arrays or iterables of batches, in chunks.

:func:`iter_chunks` turns any supported data source into ``(first row, chunk)`` pairs of at most
``chunk_size`` samples; :func:`prepare_chunk` moves a chunk to the compute device and dtype and
rejects non-finite, complex or (when gradients are needed) integer data with a clear message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from nfm._utils.arrays import ArrayKind, to_tensor
from nfm.exceptions import NFMInputError

__all__ = ["iter_chunks", "prepare_chunk"]


def _batch_input(batch: Any, index: int) -> Any:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise NFMInputError(f"data batch {index} is an empty {type(batch).__name__}")
        return batch[0]
    if isinstance(batch, Mapping):
        raise NFMInputError(
            f"data batch {index} is a mapping (keys {list(batch)[:5]}); pass batches as "
            "tensors, arrays or (x, y) tuples"
        )
    return batch


def iter_chunks(
    data: Any, chunk_size: int, allow_empty: bool = False
) -> tuple[ArrayKind, int | None, Iterator[tuple[int, Any]]]:
    """Return (kind, total rows or None, iterator of (first row index, raw chunk)).

    An iterable that yields no batch is an error unless ``allow_empty`` (a rank's empty shard
    in a distributed pass), which gives kind ``"torch"`` and no chunks.
    """
    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim == 0:
            raise NFMInputError(
                f"data must have a batch dimension first; got a scalar of type "
                f"{type(data).__name__}"
            )
        kind: ArrayKind = "torch" if isinstance(data, torch.Tensor) else "numpy"
        n = int(data.shape[0])

        def array_chunks() -> Iterator[tuple[int, Any]]:
            for start in range(0, n, chunk_size):
                yield start, data[start : start + chunk_size]

        return kind, n, array_chunks()
    if _is_nested_numbers(data):  # [[1.0, 2.0], [3.0, 4.0]]: one array, not batches
        return iter_chunks(np.asarray(data), chunk_size)
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise NFMInputError(
            "data must be a tensor, a numpy array or an iterable of batches (tensors, arrays "
            f"or (x, y) tuples, e.g. a DataLoader); got {type(data).__name__}"
        )
    iterator = iter(data)
    try:
        first = next(iterator)
    except StopIteration:
        if allow_empty:
            return "torch", 0, iter(())
        raise NFMInputError("data is empty: the iterable yielded no batch") from None
    first_x = _batch_input(first, 0)
    kind = "torch" if isinstance(first_x, torch.Tensor) else "numpy"
    total = None  # the number of rows of an iterable is not known up front

    def batch_chunks() -> Iterator[tuple[int, Any]]:
        start = 0
        for index, batch in enumerate(_chain_first(first, iterator)):
            x = _batch_input(batch, index)
            if not isinstance(x, torch.Tensor):
                x = to_tensor(x, f"data batch {index}")
            if x.ndim == 0:
                raise NFMInputError(f"data batch {index} is a scalar; expected a batch of samples")
            for offset in range(0, x.shape[0], chunk_size):
                yield start + offset, x[offset : offset + chunk_size]
            start += x.shape[0]

    return kind, total, batch_chunks()


def _is_nested_numbers(data: Any) -> bool:
    """A (nested) list of plain numbers, as opposed to a list of batches."""
    probe = data
    while isinstance(probe, list) and probe:
        probe = probe[0]
    return isinstance(data, list) and isinstance(probe, (int, float, np.number))


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def prepare_chunk(
    raw: Any,
    start: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    needs_grad_input: bool,
) -> torch.Tensor:
    x = raw if isinstance(raw, torch.Tensor) else to_tensor(raw, "data")
    if x.ndim == 0:
        raise NFMInputError("data must have a batch dimension first")
    if x.is_complex():
        raise NFMInputError(f"data has complex dtype {x.dtype}; expected real numbers")
    if x.is_floating_point():
        x = x.detach().to(device=device, dtype=dtype)
    elif needs_grad_input:
        raise NFMInputError(
            f"data has dtype {x.dtype}: the AGOP with respect to the model input needs "
            "gradients, which integer or boolean inputs cannot carry. Cast the data to float "
            "(e.g. x.float() or x.astype(np.float32)), or pass include_input=False if the "
            "model embeds integer tokens"
        )
    else:
        x = x.detach().to(device=device)
    if x.is_floating_point():
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            rows = (~finite).nonzero().flatten()
            raise NFMInputError(
                f"data contains NaN or infinite values in {rows.numel()} row(s) of rows {start} "
                f"to {start + x.shape[0] - 1} (first bad row: {start + int(rows[0])}); remove "
                "or impute them first"
            )
    return x
