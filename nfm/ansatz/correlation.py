r"""How well a layer's NFM matches a power of its AGOP: the NFA correlation and the best alpha.

The ansatz (Radhakrishnan et al., Science 2024) states
:math:`W_l^T W_l \propto \mathrm{AGOP}_l^{\alpha}` after training. It is measured by the
correlation between :math:`\mathrm{vec}(W_l^T W_l)` and :math:`\mathrm{vec}(\mathrm{AGOP}_l^\alpha)`
(:func:`nfm.linalg.matrix_correlation`: Pearson or cosine, with or without the diagonal), with the
power taken through a symmetric eigendecomposition, eigenvalues clamped at 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from nfm._utils.arrays import to_tensor
from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError
from nfm.linalg import (
    CorrelationKind,
    PSDEigh,
    matrix_correlation,
    power_from_eigh,
    psd_eigh,
    symmetric_matrix_power,
)

__all__ = [
    "check_fit_settings",
    "correlation_column",
    "fit_alpha",
    "fit_alpha_from_eigh",
    "nfa_correlation",
]


def nfa_correlation(
    nfm_matrix: Any,
    agop_matrix: Any,
    *,
    alpha: float = 0.5,
    kind: CorrelationKind = "pearson",
    exclude_diagonal: bool = False,
) -> float:
    r"""Correlation between an NFM and a power of an AGOP.

    .. math:: \rho_\alpha = \mathrm{corr}\big(\mathrm{vec}(\mathrm{NFM}),\,
              \mathrm{vec}(\mathrm{AGOP}^{\alpha})\big)

    with ``corr`` the Pearson correlation (centred) or the cosine similarity (uncentred) of the
    entries, optionally off the diagonal only (:func:`nfm.linalg.matrix_correlation`), and the
    power from the eigendecomposition with eigenvalues clamped at 0
    (:func:`nfm.linalg.symmetric_matrix_power`).

    Parameters
    ----------
    nfm_matrix, agop_matrix : (d, d) arrays or tensors
    alpha : float
        Power of the AGOP, >= 0 (1/2 in the later papers, 1 in the first statement).
    kind : {"pearson", "cosine"}
    exclude_diagonal : bool

    Returns
    -------
    float in [-1, 1]; ``nan`` when a matrix is constant (Pearson) or zero.
    """
    nfm_t, agop_t = _pair(nfm_matrix, agop_matrix)
    powered = symmetric_matrix_power(agop_t, float(alpha), dtype=torch.float64, name="agop_matrix")
    return matrix_correlation(nfm_t, powered, kind=kind, exclude_diagonal=exclude_diagonal)


def _pair(nfm_matrix: Any, agop_matrix: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The two matrices on the CPU, checked square and of one shape.

    The AGOP keeps its dtype: the float64 power is taken with the rounding tolerance of the
    precision it was computed in (:func:`nfm.linalg.psd_eigh`).
    """
    nfm_t = to_tensor(nfm_matrix, "nfm_matrix").detach().to("cpu", torch.float64)
    agop_t = to_tensor(agop_matrix, "agop_matrix").detach().to("cpu")
    check_square(nfm_t, "nfm_matrix")
    check_square(agop_t, "agop_matrix")
    if nfm_t.shape != agop_t.shape:
        raise NFMInputError(
            f"nfm_matrix and agop_matrix must have the same shape; got {tuple(nfm_t.shape)} "
            f"and {tuple(agop_t.shape)}"
        )
    return nfm_t, agop_t


def fit_alpha(
    nfm_matrix: Any,
    agop_matrix: Any,
    *,
    kind: CorrelationKind = "pearson",
    exclude_diagonal: bool = False,
    bounds: tuple[float, float] = (0.05, 2.0),
    grid_size: int = 25,
) -> tuple[float, float]:
    r"""The power :math:`\alpha` in ``bounds`` that maximises :func:`nfa_correlation`.

    The AGOP is eigendecomposed once, :math:`A = U \Lambda U^T` (:func:`nfm.linalg.psd_eigh`);
    each candidate power is :math:`U \max(\Lambda, 0)^\alpha U^T`
    (:func:`nfm.linalg.power_from_eigh`, the rule of :func:`nfm.linalg.symmetric_matrix_power`,
    without re-decomposing). The correlation is
    evaluated on a log-spaced grid of ``grid_size`` powers (plus 1/2 and 1), then refined by
    bounded scalar minimisation (scipy) between the grid neighbours of the best point.

    Returns
    -------
    (alpha, correlation) : tuple of float
        ``(nan, nan)`` when the correlation is undefined for every power.
    """
    check_fit_settings(bounds, grid_size)
    nfm_t, agop_t = _pair(nfm_matrix, agop_matrix)
    eig = psd_eigh(agop_t, name="agop_matrix", dtype=torch.float64)
    return fit_alpha_from_eigh(
        nfm_t, eig, kind=kind, exclude_diagonal=exclude_diagonal, bounds=bounds, grid_size=grid_size
    )


def check_fit_settings(bounds: tuple[float, float], grid_size: int) -> tuple[float, float]:
    """``(low, high)`` of valid :func:`fit_alpha` bounds; NFMInputError otherwise."""
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise NFMInputError(f"bounds must be finite with 0 < low < high; got {bounds!r}")
    if grid_size < 3:
        raise NFMInputError(f"grid_size must be at least 3; got {grid_size!r}")
    return lo, hi


def fit_alpha_from_eigh(
    nfm_matrix: torch.Tensor,
    eig: PSDEigh,
    *,
    kind: CorrelationKind = "pearson",
    exclude_diagonal: bool = False,
    bounds: tuple[float, float] = (0.05, 2.0),
    grid_size: int = 25,
) -> tuple[float, float]:
    """:func:`fit_alpha` from the AGOP's :func:`nfm.linalg.psd_eigh` (a float64 NFM tensor)."""
    lo, hi = check_fit_settings(bounds, grid_size)

    def correlation(alpha: float) -> float:
        return matrix_correlation(
            nfm_matrix, power_from_eigh(eig, alpha), kind=kind, exclude_diagonal=exclude_diagonal
        )

    # log-spaced grid, plus the powers in use in the literature (1/2, 1) when inside the bounds
    grid = np.geomspace(lo, hi, grid_size)
    grid = np.unique(np.concatenate([grid, [a for a in (0.5, 1.0) if lo <= a <= hi]]))
    values = np.array([correlation(float(a)) for a in grid])
    if np.all(np.isnan(values)):
        return float("nan"), float("nan")
    best = int(np.nanargmax(values))
    best_alpha, best_corr = float(grid[best]), float(values[best])
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    if right > left:
        refined = minimize_scalar(
            lambda a: -np.nan_to_num(correlation(float(a)), nan=-2.0),
            bounds=(float(left), float(right)),
            method="bounded",
            options={"xatol": 1e-6},
        )
        if refined.success and -float(refined.fun) > best_corr:
            best_alpha, best_corr = float(refined.x), -float(refined.fun)
    return best_alpha, best_corr


def correlation_column(kind: str, alpha: float, exclude_diagonal: bool) -> str:
    """Column name of one correlation in :class:`NFAReport` rows (``"pearson_a0.5_offdiag"``)."""
    return f"{kind}_a{alpha:g}" + ("_offdiag" if exclude_diagonal else "")
