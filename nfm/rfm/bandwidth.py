"""The ``bandwidth="median"`` rule: the median pairwise distance in the starting metric."""

from __future__ import annotations

import numpy as np
import torch

from nfm.linalg import symmetric_matrix_power

__all__ = ["MEDIAN_SAMPLE_SIZE", "median_bandwidth"]

#: at most this many random training rows enter the median.
MEDIAN_SAMPLE_SIZE = 1000


def median_bandwidth(
    X: torch.Tensor, M0: torch.Tensor, rng: np.random.Generator, *, p: float = 2.0
) -> float:
    r"""Median of :math:`\lVert M_0^{1/2}(x_i - x_j)\rVert_p` over distinct pairs ``i < j``.

    Over up to :data:`MEDIAN_SAMPLE_SIZE` random rows of ``X``; zero distances (duplicates) are
    left out, and 1.0 is returned when every distance is zero.
    """
    n = X.shape[0]
    rows = np.sort(rng.choice(n, size=min(n, MEDIAN_SAMPLE_SIZE), replace=False))
    sub = X[torch.as_tensor(rows, device=X.device)]
    proj = sub @ symmetric_matrix_power(M0, 0.5)
    dist = torch.cdist(proj, proj, p=p)
    upper = dist[torch.triu(torch.ones_like(dist, dtype=torch.bool), diagonal=1)]
    upper = upper[upper > 0]
    if upper.numel() == 0:
        return 1.0
    return float(upper.median())
