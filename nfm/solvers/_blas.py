"""BLAS thread control for the solvers' direct LAPACK / BLAS calls (scipy, numpy)."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager

__all__ = ["single_threaded_blas"]


@functools.cache
def _controller():
    """One threadpoolctl controller per process (scipy's and numpy's BLAS are loaded by now).

    Building a controller scans the loaded libraries (about 7 ms); ``threadpool_limits`` does
    that on every call, which added ~0.3 s to a small leave-one-out fit over a reg grid.
    """
    from scipy.linalg import lapack  # noqa: F401  (load scipy's BLAS before the scan)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_threaded_blas() -> AbstractContextManager:
    """Context manager limiting numpy's / scipy's BLAS to one thread (torch's is untouched).

    Multi-threaded OpenBLAS calls on small or memory-bound problems compete with torch's own
    threads and become erratic on a busy machine; one thread is fast and predictable there.
    """
    return _controller().limit(limits=1, user_api="blas")
