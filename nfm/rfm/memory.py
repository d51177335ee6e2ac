r"""How much memory an exact RFM fit needs, how much the machine has, and the error between them.

The exact fit holds one ``n x n`` Gram matrix in the working dtype (Cholesky factors it in
place; conjugate gradients multiply by it), so its peak is about

.. math:: \text{bytes} \approx n^2 b + \text{workspace},\qquad
          \text{workspace} = n (r + d + 6c)\, 8 + W,

with ``b`` the bytes of the working dtype (4 for float32, 8 for float64), ``r`` the rank of the
conjugate-gradient preconditioner (:data:`CG_PRECONDITIONER_RANK`), ``d`` features, ``c``
target columns and ``W`` the kernel blocks, :data:`BLOCK_WORKSPACE_ENTRIES` float64 entries at
most (fewer when :math:`n^2` is smaller), plus, in float32, :math:`8 \min(n^2, N_{64})` for
the float64 copy that conjugate gradients keep of a Gram matrix of at most :math:`N_{64}` =
:data:`~nfm.solvers.cg.FLOAT64_COPY_MAX_ELEMENTS` entries for their residual checks (charged at
every ``n``, at most 128 MiB, so that the estimate grows with ``n``). With
``selection="holdout"`` the iterations use ``0.8 n`` rows, but the selected predictor is
refitted on all ``n`` rows, so ``n`` is what counts.

:func:`available_memory` reads what the machine can give now: ``MemAvailable`` in
``/proc/meminfo`` (Linux), else ``psutil`` when it is installed, else the physical memory; on
CUDA the free device memory. The estimators' ``memory_limit="auto"`` allows
:data:`MEMORY_FRACTION` of it.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch

from nfm.exceptions import NFMInputError
from nfm.kernels import DEFAULT_BLOCK_ELEMENTS
from nfm.solvers.cg import FLOAT64_COPY_MAX_ELEMENTS

__all__ = [
    "BLOCK_WORKSPACE_ENTRIES",
    "CG_PRECONDITIONER_RANK",
    "MEMORY_FRACTION",
    "ExactFitMemoryError",
    "available_memory",
    "exact_fit_bytes",
    "format_bytes",
    "largest_exact_fit",
    "resolve_memory_limit",
    "tree_fit_bytes",
]

logger = logging.getLogger(__name__)

#: share of the available memory that ``memory_limit="auto"`` lets an exact fit use
MEMORY_FRACTION = 0.8
#: the largest rank of the Nystrom preconditioner of :func:`nfm.solvers.conjugate_gradient_solve`
#: (its default rank, :func:`nfm.solvers.default_preconditioner_rank`, is at most this)
CG_PRECONDITIONER_RANK = 300
#: the kernel drivers' temporaries: a few blocks of at most DEFAULT_BLOCK_ELEMENTS entries each
BLOCK_WORKSPACE_ENTRIES = 8 * DEFAULT_BLOCK_ELEMENTS


class ExactFitMemoryError(NFMInputError, MemoryError):
    """The exact fit's ``n x n`` Gram matrix does not fit in the memory limit.

    Attributes
    ----------
    required_bytes, limit_bytes : int
    n_samples : int
    """

    def __init__(self, message: str, *, required_bytes: int, limit_bytes: int, n_samples: int):
        super().__init__(message)
        self.required_bytes = required_bytes
        self.limit_bytes = limit_bytes
        self.n_samples = n_samples


def format_bytes(value: float) -> str:
    """``value`` bytes in GiB / MiB, e.g. ``'23.8 GiB'``."""
    if value >= 2**30:
        return f"{value / 2**30:.1f} GiB"
    return f"{value / 2**20:.0f} MiB"


def exact_fit_bytes(n: int, d: int, c: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(gram_bytes, workspace_bytes)`` of an exact fit on ``n`` rows (module docstring)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    gram = n * n * itemsize
    blocks = min(BLOCK_WORKSPACE_ENTRIES, 8 * n * n) * 8
    workspace = n * (CG_PRECONDITIONER_RANK + d + 6 * c) * 8 + blocks
    if dtype != torch.float64:  # CG's float64 copy of a small Gram matrix; charged at every n
        workspace += min(n * n, FLOAT64_COPY_MAX_ELEMENTS) * 8  # so that bytes grow with n
    return gram, workspace


def largest_exact_fit(d: int, c: int, dtype: torch.dtype, limit: float) -> int:
    """The largest ``n`` whose :func:`exact_fit_bytes` (Gram plus workspace) is ``<= limit``.

    0 when not even one row fits; ``2**40`` stands for "no limit" (``limit`` infinite).
    """
    if not math.isfinite(limit):
        return 2**40
    low, high = 0, 1
    while sum(exact_fit_bytes(high, d, c, dtype)) <= limit:  # bytes grow with n
        low, high = high, 2 * high
    while high - low > 1:
        mid = (low + high) // 2
        if sum(exact_fit_bytes(mid, d, c, dtype)) <= limit:
            low = mid
        else:
            high = mid
    return low


def tree_fit_bytes(
    n: int, d: int, c: int, leaf_size: int, root_size: int, dtype: torch.dtype
) -> int:
    r"""Estimated peak bytes of a partitioned fit (:mod:`nfm.rfm.partition`) on ``n`` rows.

    .. math:: 2 n (d + c) b + \max(\text{exact}(r), \text{exact}(\ell)),

    the data and its copy in the fitted leaves (rows and coefficients), plus the larger of the
    root's exact fit on ``r = root_size`` rows and one leaf's on ``l = leaf_size`` rows
    (:func:`exact_fit_bytes`; the leaves are fitted one after the other).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    one = max(
        sum(exact_fit_bytes(root_size, d, c, dtype)), sum(exact_fit_bytes(leaf_size, d, c, dtype))
    )
    return 2 * n * (d + c) * itemsize + one


def _meminfo_available() -> int | None:
    try:
        with Path("/proc/meminfo").open(encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device) -> int | None:
    """Bytes the machine can give a fit now on ``device`` (``None`` if it cannot be told).

    CUDA: free device memory (``torch.cuda.mem_get_info``). CPU: ``MemAvailable`` from
    ``/proc/meminfo``, else ``psutil.virtual_memory().available``, else the physical memory
    (``os.sysconf``).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    found = _meminfo_available()
    if found is not None:
        return found
    try:
        import psutil  # optional

        return int(psutil.virtual_memory().available)
    except (ImportError, AttributeError, OSError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def resolve_memory_limit(value: Any, device: torch.device, owner: str) -> float:
    """The byte limit of an exact fit: a number of bytes, ``None`` (no limit) or ``"auto"``.

    ``"auto"`` is :data:`MEMORY_FRACTION` of :func:`available_memory` (no limit when the
    machine cannot tell).

    Raises
    ------
    NFMInputError
        For anything else than a positive number, ``None`` or ``"auto"``.
    """
    if value is None:
        return math.inf
    if isinstance(value, str):
        if value != "auto":
            raise NFMInputError(
                f"{owner}: memory_limit must be a number of bytes > 0, 'auto' or None; "
                f"got {value!r}"
            )
        available = available_memory(device)
        return math.inf if available is None else MEMORY_FRACTION * available
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise NFMInputError(
            f"{owner}: memory_limit must be a number of bytes > 0, 'auto' or None; got {value!r}"
        )
    return float(value)
