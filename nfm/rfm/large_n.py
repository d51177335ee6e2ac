r"""The choice between the exact RFM fit and the partitioned one (``leaf_size``, ``memory_limit``).

The exact fit holds an ``n x n`` Gram matrix, so its memory grows as :math:`n^2` and its time
as :math:`n^2`-:math:`n^3`. Above a size the estimators switch to the AGOP-split tree of
:mod:`nfm.rfm.partition`, whose leaves are exact fits of at most ``leaf_size`` rows in the
metric of a root fit on a subsample of at most :data:`AUTO_EXACT_MAX_N` rows:

* ``leaf_size="auto"`` (default): exact for ``n <=`` :data:`AUTO_EXACT_MAX_N` when its memory
  fits ``memory_limit``; otherwise the tree with leaves of at most :data:`AUTO_LEAF_SIZE` rows
  (fewer when a leaf of that size does not fit ``memory_limit``: the largest that does, but not
  under :data:`MIN_AUTO_LEAF_SIZE`);
* ``leaf_size=None``: always exact; where the Gram matrix does not fit ``memory_limit`` an
  :class:`~nfm.rfm.memory.ExactFitMemoryError` names the bytes it needs and the parameter to use
  (before anything is allocated);
* ``leaf_size=k`` (an integer): the tree whenever ``n > k``.

The root of the tree is fitted on :math:`r = \min(n, \max(\text{leaf\_size},
\text{AUTO\_EXACT\_MAX\_N}))` rows, the largest subsample the exact path would take, reduced to
the largest size that fits ``memory_limit`` (at least ``leaf_size``): see :func:`root_size`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from nfm.exceptions import NFMInputError
from nfm.rfm.memory import (
    ExactFitMemoryError,
    exact_fit_bytes,
    format_bytes,
    largest_exact_fit,
    resolve_memory_limit,
)

__all__ = [
    "AUTO_EXACT_MAX_N",
    "AUTO_LEAF_SIZE",
    "MIN_AUTO_LEAF_SIZE",
    "MIN_LEAF_SIZE",
    "choose_leaf_size",
    "root_size",
]

#: ``leaf_size="auto"`` fits exactly up to this many rows (memory permitting); it is also the
#: size of the subsample on which the tree's root metric, ridge and bandwidth are learned
AUTO_EXACT_MAX_N = 20000
#: ``leaf_size="auto"``: the most rows per leaf of the tree above :data:`AUTO_EXACT_MAX_N`
#: (a 16,000-row float32 Gram matrix is 1 GB; the leaves' solves are conjugate gradients)
AUTO_LEAF_SIZE = 16000
#: ``leaf_size="auto"`` shrinks its leaves to fit ``memory_limit``, but not below this
MIN_AUTO_LEAF_SIZE = 1000
#: the smallest accepted ``leaf_size``
MIN_LEAF_SIZE = 10


def _check_leaf_size(value: Any, owner: str) -> int | str | None:
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < MIN_LEAF_SIZE:
        raise NFMInputError(
            f"{owner}: leaf_size must be 'auto', None (always the exact fit) or an integer >= "
            f"{MIN_LEAF_SIZE}; got {value!r}"
        )
    return int(value)


def _fits(n: int, d: int, c: int, dtype: torch.dtype, limit: float) -> bool:
    gram, workspace = exact_fit_bytes(n, d, c, dtype)
    return gram + workspace <= limit


def _memory_error(
    owner: str, n: int, d: int, c: int, dtype: torch.dtype, limit: float, leaf: bool
) -> ExactFitMemoryError:
    gram, workspace = exact_fit_bytes(n, d, c, dtype)
    bytes_per = torch.empty((), dtype=dtype).element_size()
    what = f"a leaf of {n:,} rows (leaf_size={n})" if leaf else f"the exact fit on {n:,} rows"
    fitting = largest_exact_fit(d, c, dtype, limit)
    hint = f"; at most {fitting:,} rows fit" if fitting >= MIN_LEAF_SIZE else ""
    # the example must itself fit: at most the rows that fit, and fewer than n
    example = max(MIN_LEAF_SIZE, min(AUTO_LEAF_SIZE, n - 1, fitting))
    advice = (
        f"use a smaller leaf_size{hint}"
        if leaf
        else "use leaf_size='auto' or an integer (the AGOP-split tree of nfm.rfm.partition, "
        f"leaves of at most that many rows; e.g. leaf_size={example}"
        f"{hint})"
    )
    return ExactFitMemoryError(
        f"{owner}: {what} needs about {format_bytes(gram + workspace)} (the {n:,} x {n:,} Gram "
        f"matrix: n^2 x {bytes_per} bytes = {format_bytes(gram)}, plus "
        f"{format_bytes(workspace)} workspace), more than memory_limit allows "
        f"({format_bytes(limit)}); {advice}, or raise memory_limit (bytes, or None for no check)",
        required_bytes=gram + workspace,
        limit_bytes=int(limit) if math.isfinite(limit) else -1,
        n_samples=n,
    )


def choose_leaf_size(
    estimator: Any, n: int, d: int, c: int, *, dtype: torch.dtype, device: torch.device
) -> int | None:
    """The leaf size of the tree for a fit on ``n`` rows, or ``None`` for the exact fit.

    Reads the estimator's ``leaf_size`` and ``memory_limit`` (module docstring); ``c`` is the
    number of target columns.

    Raises
    ------
    NFMInputError
        For a bad ``leaf_size`` or ``memory_limit``.
    ExactFitMemoryError
        When the exact fit (``leaf_size=None``) or one leaf does not fit ``memory_limit``.
    """
    owner = type(estimator).__name__
    leaf_size = _check_leaf_size(getattr(estimator, "leaf_size", None), owner)
    limit = resolve_memory_limit(getattr(estimator, "memory_limit", None), device, owner)
    if leaf_size is None:
        if not _fits(n, d, c, dtype, limit):
            raise _memory_error(owner, n, d, c, dtype, limit, leaf=False)
        return None
    if leaf_size == "auto":
        if n <= AUTO_EXACT_MAX_N and _fits(n, d, c, dtype, limit):
            return None
        leaf_size = AUTO_LEAF_SIZE
        if not _fits(leaf_size, d, c, dtype, limit):  # the largest leaf that fits
            leaf_size = max(MIN_AUTO_LEAF_SIZE, largest_exact_fit(d, c, dtype, limit))
    if n <= leaf_size:
        if not _fits(n, d, c, dtype, limit):
            raise _memory_error(owner, n, d, c, dtype, limit, leaf=False)
        return None
    if not _fits(leaf_size, d, c, dtype, limit):
        raise _memory_error(owner, leaf_size, d, c, dtype, limit, leaf=True)
    return leaf_size


def root_size(
    estimator: Any,
    n: int,
    d: int,
    c: int,
    leaf_size: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> int:
    r"""Rows of the tree's root fit.

    .. math:: r = \min(n, \max(\text{leaf\_size}, \text{AUTO\_EXACT\_MAX\_N})),

    reduced to the largest exact fit that ``memory_limit`` allows, but never below
    ``leaf_size`` (which :func:`choose_leaf_size` has checked to fit).
    """
    owner = type(estimator).__name__
    size = min(n, max(leaf_size, AUTO_EXACT_MAX_N))
    limit = resolve_memory_limit(getattr(estimator, "memory_limit", None), device, owner)
    if not _fits(size, d, c, dtype, limit):
        size = max(min(leaf_size, n), min(size, largest_exact_fit(d, c, dtype, limit)))
    return int(size)
