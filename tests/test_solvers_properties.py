"""Invariants of the direct solver, and the checks of ``solver_checks`` themselves.

The checks must accept the answer of ANY backward-stable solver of the same system (another
LAPACK build is, in effect, another backward-stable solver) and reject a wrong one.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from solver_checks import (
    C_BOUND,
    ShiftedSystem,
    assert_backward_stable,
    assert_direct_solve_guarantees,
    assert_fitted_values_agree,
    assert_forward_error_within_condition,
    unit_roundoff,
)

from nfm.exceptions import NumericalWarning
from nfm.kernels import GaussianKernel
from nfm.solvers import cholesky_solve


def _singular_gram_system():
    """Duplicated points (singular Gaussian Gram), shifted by 1e-10: condition ~2.5e11."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    X = torch.cat([X, X[:4]])
    K = GaussianKernel(2.0).gram(X, X, torch.eye(3, dtype=torch.float64))
    Y = torch.randn(44, 1, generator=gen, dtype=torch.float64)
    return K, Y, 1e-10 * float(K.diagonal().mean())


def _other_solvers(A: np.ndarray, Y: np.ndarray) -> dict[str, np.ndarray]:
    """Backward-stable solvers of A a = Y that round differently (as other builds would)."""
    flip = np.arange(A.shape[0])[::-1]
    reversed_cholesky = scipy.linalg.cho_solve(
        scipy.linalg.cho_factor(A[np.ix_(flip, flip)], lower=True), Y[flip]
    )[np.argsort(flip)]
    return {
        "LU (numpy.linalg.solve)": np.linalg.solve(A, Y),
        "scipy Cholesky, lower": scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, lower=True), Y),
        "scipy Cholesky, upper": scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, lower=False), Y),
        "Cholesky of the reversed ordering": reversed_cholesky,
        "least squares (SVD)": np.linalg.lstsq(A, Y, rcond=None)[0],
    }


@pytest.mark.parametrize("name", list(_other_solvers(np.eye(2), np.ones((2, 1)))))
def test_the_checks_accept_every_backward_stable_solver_of_an_ill_conditioned_system(name):
    K, Y, shift = _singular_gram_system()
    system = ShiftedSystem.build(K, Y, shift)
    assert system.condition > 1e11
    a = _other_solvers(system.A, system.Y)[name]
    assert_backward_stable(system, a, torch.float64)
    assert_forward_error_within_condition(system, a, torch.float64)
    assert_fitted_values_agree(system, a, torch.float64)


def test_the_checks_reject_a_solution_of_a_different_system():
    K, Y, shift = _singular_gram_system()
    system = ShiftedSystem.build(K, Y, shift)
    # the solution for twice the shift: a perfectly good answer to the wrong question
    wrong = np.linalg.solve(system.K + 2 * shift * np.eye(system.n), system.Y)
    with pytest.raises(AssertionError, match="backward error"):
        assert_backward_stable(system, wrong, torch.float64)
    with pytest.raises(AssertionError, match="forward error"):
        assert_forward_error_within_condition(system, wrong, torch.float64)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 3),
    duplicates=st.integers(0, 3),
    log_reg=st.one_of(st.just(None), st.floats(-8, 1)),
    float32=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_cholesky_is_backward_stable_for_the_shift_it_reports(
    n, c, duplicates, log_reg, float32, seed
):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    X = torch.cat([X, X[: min(duplicates, n)]])
    m = X.shape[0]
    K = GaussianKernel(1.5).gram(X, X, torch.eye(3, dtype=torch.float64))
    Y = torch.randn(m, c, generator=gen, dtype=torch.float64)
    dtype = torch.float32 if float32 else torch.float64
    K, Y = K.to(dtype), Y.to(dtype)
    reg = 0.0 if log_reg is None else 10.0**log_reg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cholesky_solve(K, Y, reg, inverse_diagonal=True)
    warned = any(issubclass(w.category, NumericalWarning) for w in caught)
    assert warned == (result.jitter > 0)
    assert result.diagonal_shift == reg + result.jitter
    assert result.coef.dtype == dtype and result.coef.shape == (m, c)
    system = ShiftedSystem.build(K, Y, result.diagonal_shift)
    assert_backward_stable(system, result.coef, dtype)
    if system.eigenvalues.min() > 0 and C_BOUND * m * unit_roundoff(dtype) * system.condition < 0.1:
        # A is positive definite well beyond rounding: the forward bounds are informative
        assert_direct_solve_guarantees(K, Y, result, dtype)
        V = system.eigenvectors
        expected = (V * V / system.eigenvalues).sum(axis=1)
        error = np.abs(result.inverse_diagonal.double().numpy() - expected).max()
        u = unit_roundoff(dtype) + unit_roundoff(torch.float64)
        assert error <= C_BOUND * m * u * system.condition / system.eigenvalues.min()
