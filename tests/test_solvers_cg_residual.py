"""Conjugate gradients report, and decide convergence on, the TRUE residual.

The residual CG updates recursively drifts from ``Y - (K + reg I) A`` in floating point; in
float32 it reached ``tol`` while the true residual was orders of magnitude larger, and the
solver reported the recursive value as converged. Every residual below is recomputed
independently in float64 (``solver_checks.ShiftedSystem``) from the returned coefficients.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from solver_checks import ShiftedSystem, assert_iterative_solve_guarantees

from nfm.exceptions import NumericalWarning
from nfm.kernels import GaussianKernel, LaplaceKernel
from nfm.solvers import conjugate_gradient_solve


def _float32_system(kernel, n: int, c: int = 1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    K = kernel.gram(X, X, torch.eye(5, dtype=torch.float64))
    Y = torch.randn(n, c, generator=gen, dtype=torch.float64)
    return K.float(), Y.float()


def test_an_unattainable_float32_tolerance_is_reported_as_such_with_the_true_residual():
    # condition 1.2e5: no float32 coefficient vector has a relative residual near 1e-6 (rounding
    # the exact solution to float32 alone leaves ~1e-4); the old solver said "converged" at
    # a recursive 9.9e-7 while the true residual was 2.4e-3
    K, Y = _float32_system(GaussianKernel(3.0), n=200)
    with pytest.warns(NumericalWarning, match="conjugate gradient stopped.*stalled"):
        result = conjugate_gradient_solve(
            K, Y, 1e-3, tol=1e-6, preconditioner_rank=20, max_iter=1000
        )
    assert not result.converged and result.stalled and result.n_iter < 1000
    system = assert_iterative_solve_guarantees(K, Y, result, tol=1e-6)
    true = system.relative_residual(result.coef)
    # the solver adds the rounding of its float64 iterate to float32 as a float32 product:
    # its report agrees with the independent float64 residual to ~1e-7 relative
    assert result.relative_residual == pytest.approx(true, rel=1e-6)
    assert true > 1e-6
    assert result.column_residuals.tolist() == [result.relative_residual]


@pytest.mark.parametrize("c", [1, 2])
def test_an_attainable_float32_tolerance_is_met_by_the_true_residual(c):
    # condition 1e3: float32 coefficients can reach ~2e-7, so tol = 2e-6 is attainable; the old
    # solver stopped when the recursive residual reached 2e-6 while the true one was 4e-6
    K, Y = _float32_system(LaplaceKernel(3.0), n=200, c=c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = conjugate_gradient_solve(K, Y, 1e-3, tol=2e-6, preconditioner_rank=0)
    assert result.converged
    system = assert_iterative_solve_guarantees(K, Y, result, tol=2e-6)
    assert system.relative_residual(result.coef) <= 2e-6


def test_a_float64_system_below_the_attainable_accuracy_stalls_and_warns():
    # tol 1e-17 is below the unit roundoff: the residual stops decreasing at ~1e-14, and the
    # solver must say so long before max_iter instead of iterating on rounding noise
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    K = LaplaceKernel(3.0).gram(X, X, torch.eye(5, dtype=torch.float64))
    Y = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    with pytest.warns(NumericalWarning, match="stalled"):
        result = conjugate_gradient_solve(
            K, Y, 1e-3, tol=1e-17, preconditioner_rank=20, max_iter=3000
        )
    assert result.stalled and not result.converged and result.n_iter < 1000
    system = assert_iterative_solve_guarantees(K, Y, result, tol=1e-17)
    assert system.relative_residual(result.coef) < 1e-12  # it did get to the floor


def test_an_indefinite_matrix_breaks_conjugate_gradients_down_with_a_warning():
    K = -torch.eye(6, dtype=torch.float64)
    with pytest.warns(NumericalWarning, match="breakdown"):
        result = conjugate_gradient_solve(K, torch.ones(6, 1, dtype=torch.float64), 0.0)
    assert result.stalled and not result.converged and result.n_iter == 1
    assert result.relative_residual == pytest.approx(1.0)  # nothing moved: the residual is Y


def test_the_result_counts_every_product_with_k():
    K, Y = _float32_system(LaplaceKernel(3.0), n=100)
    result = conjugate_gradient_solve(K, Y, 1e-2, preconditioner_rank=0)
    assert result.converged
    # one per iteration plus the true-residual evaluations (at least the final verification)
    assert result.n_products > result.n_iter


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    c=st.integers(1, 3),
    log_reg=st.floats(-6, 0),
    log_tol=st.floats(-12, -2),
    float32=st.booleans(),
    rank=st.sampled_from([0, 5]),
    seed=st.integers(0, 2**16),
)
def test_property_reported_residual_is_the_true_one_and_decides_convergence(
    n, c, log_reg, log_tol, float32, rank, seed
):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    K = GaussianKernel(1.5).gram(X, X, torch.eye(3, dtype=torch.float64))
    Y = torch.randn(n, c, generator=gen, dtype=torch.float64)
    dtype = torch.float32 if float32 else torch.float64
    K, Y = K.to(dtype), Y.to(dtype)
    reg, tol = 10.0**log_reg, 10.0**log_tol
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = conjugate_gradient_solve(K, Y, reg, tol=tol, preconditioner_rank=rank)
    system = ShiftedSystem.build(K, Y, reg)
    assert_iterative_solve_guarantees(K, Y, result, tol=tol)
    assert result.relative_residual == pytest.approx(
        system.relative_residual(result.coef), rel=1e-6
    )
    warned = any(issubclass(w.category, NumericalWarning) for w in caught)
    assert warned == (not result.converged)
    assert result.coef.dtype == dtype and result.coef.shape == (n, c)
