"""Solvers: what Cholesky and CG guarantee, against float64 eigendecomposition references.

No test compares coefficients of an ill-conditioned system entry by entry: see
``solver_checks`` for the backward-error, forward-error and fitted-value bounds used instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from solver_checks import (
    C_BOUND,
    ShiftedSystem,
    assert_backward_stable,
    assert_direct_solve_guarantees,
    assert_fitted_values_agree,
    assert_forward_error_within_condition,
    assert_iterative_solve_guarantees,
    unit_roundoff,
)

from nfm.exceptions import NFMError, NumericalWarning
from nfm.kernels import GaussianKernel, LaplaceKernel
from nfm.solvers import (
    AUTO_CHOLESKY_MAX_N,
    JITTER_LADDER,
    cholesky_solve,
    conjugate_gradient_solve,
    resolve_solver,
    solve_kernel_system,
)


def _system(n: int = 120, d: int = 5, c: int = 2, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    K = LaplaceKernel(3.0).gram(X, X, torch.eye(d, dtype=torch.float64))
    Y = torch.randn(n, c, generator=gen, dtype=torch.float64)
    return K.to(dtype), Y.to(dtype)


def _gram_with_duplicates(seed: int, n: int, repeats: int):
    """A Gaussian Gram matrix of n points plus ``repeats`` duplicated ones (exactly singular)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    X = torch.cat([X, X[:repeats]])
    kernel, eye = GaussianKernel(2.0), torch.eye(3, dtype=torch.float64)
    return X, kernel, eye, gen


#: the indefinite Grams below have eigenvalues -INDEFINITE x mean diagonal: the rungs below
#: 1e-8 of the ladder fail on any LAPACK (the Cholesky of a matrix with an eigenvalue
#: -9e-10 ||A|| cannot succeed, its backward error is ~ n^2 u ||A|| = 2e-13 ||A||) and 1e-8
#: succeeds (smallest eigenvalue +9e-9 ||A||), so the rung used is known.
INDEFINITE = 1e-9


@pytest.mark.parametrize("reg", [1e-3, 1.0])
@pytest.mark.parametrize("overwrite", [False, True])
def test_cholesky_is_backward_stable_and_its_inverse_diagonal_is_accurate(reg, overwrite):
    K, Y = _system()
    original = K.clone()
    work = K.clone()
    result = cholesky_solve(work, Y, reg, overwrite=overwrite, inverse_diagonal=True)
    assert result.jitter == 0.0 and result.diagonal_shift == reg
    system = assert_direct_solve_guarantees(original, Y, result, torch.float64)
    # diag(A^-1) from the eigendecomposition; a backward-stable inverse has normwise error
    # <= c n u kappa ||A^-1||, so every diagonal entry is within that
    V = system.eigenvectors
    expected = (V * V / system.eigenvalues).sum(axis=1)
    error = np.abs(result.inverse_diagonal.numpy() - expected).max()
    bound = C_BOUND * system.n * 2 * unit_roundoff(torch.float64) * system.condition
    assert error <= bound / system.eigenvalues.min()
    if not overwrite:
        torch.testing.assert_close(work, original, rtol=0, atol=0)


def test_cholesky_accepts_a_vector_right_hand_side_and_float32():
    K, Y = _system(dtype=torch.float32)
    result = cholesky_solve(K, Y[:, 0], 1e-2)
    assert result.coef.shape == (K.shape[0],) and result.coef.dtype == torch.float32
    assert_direct_solve_guarantees(K, Y[:, 0], result, torch.float32)


def test_in_place_factorisation_needs_rebuild_for_the_jitter_ladder():
    X, kernel, eye, _ = _gram_with_duplicates(seed=2, n=30, repeats=3)

    def fill(out):
        kernel.gram(X, X, eye, out=out)
        out.diagonal().sub_(INDEFINITE)  # mean diagonal 1: eigenvalues down to -1e-9
        return out

    K = fill(torch.empty(33, 33, dtype=torch.float64))
    Y = torch.ones(33, 1, dtype=torch.float64)
    with pytest.raises(NFMError, match="pass rebuild"):
        cholesky_solve(K.clone(), Y, 0.0, overwrite=True)
    with pytest.warns(NumericalWarning, match="added jitter"):
        in_place = cholesky_solve(K.clone(), Y, 0.0, overwrite=True, rebuild=fill)
    with pytest.warns(NumericalWarning, match="added jitter"):
        copy = cholesky_solve(K, Y, 0.0)
    mean_diagonal = float(K.diagonal().mean())
    for result in (in_place, copy):
        assert result.jitter == pytest.approx(1e-8 * mean_diagonal, rel=1e-12)
        assert_direct_solve_guarantees(K, Y, result, torch.float64)


def test_jitter_ladder_climbs_to_the_first_rung_that_factors_and_leaves_k_unchanged():
    X, kernel, eye, gen = _gram_with_duplicates(seed=1, n=40, repeats=4)
    K = kernel.gram(X, X, eye)
    K.diagonal().sub_(INDEFINITE * float(K.diagonal().mean()))
    Y = torch.randn(44, 1, generator=gen, dtype=torch.float64)
    before = K.clone()
    with pytest.warns(NumericalWarning, match="added jitter 1e-08"):
        result = cholesky_solve(K, Y, 0.0)
    torch.testing.assert_close(K, before, rtol=0, atol=0)
    mean_diagonal = float(K.diagonal().mean())
    assert result.jitter == pytest.approx(JITTER_LADDER[1] * mean_diagonal, rel=1e-12)
    assert result.diagonal_shift == result.jitter
    system = assert_direct_solve_guarantees(K, Y, result, torch.float64)
    assert system.condition > 1e9  # the coefficients are ill-conditioned (|a| ~ 1e8) ...
    # ... and a result that misreported its shift by one rung would fail the backward check
    wrong = ShiftedSystem.build(K, Y, JITTER_LADDER[0] * mean_diagonal)
    assert wrong.backward_error(result.coef) > 1e3 * C_BOUND * 44 * unit_roundoff(torch.float64)


def test_jitter_ladder_on_an_exactly_singular_gram_solves_the_system_it_reports():
    # duplicated rows: K is singular in exact arithmetic, and whether the unjittered
    # factorisation breaks down depends on the rounding of the LAPACK build, so the test
    # asserts what holds either way
    X, kernel, eye, gen = _gram_with_duplicates(seed=1, n=40, repeats=4)
    K = kernel.gram(X, X, eye)
    Y = torch.randn(44, 1, generator=gen, dtype=torch.float64)
    before = K.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cholesky_solve(K, Y, 0.0)
    torch.testing.assert_close(K, before, rtol=0, atol=0)
    jitter_warnings = [w for w in caught if issubclass(w.category, NumericalWarning)]
    assert (result.jitter > 0) == (len(jitter_warnings) == 1)
    system = ShiftedSystem.build(K, Y, result.diagonal_shift)
    assert_backward_stable(system, result.coef, torch.float64)
    if result.jitter > 0:  # then A is positive definite and the forward bounds are informative
        kappa = system.condition
        assert kappa > 1e10 and C_BOUND * 44 * unit_roundoff(torch.float64) * kappa < 0.1
        assert_forward_error_within_condition(system, result.coef, torch.float64)
        assert_fitted_values_agree(system, result.coef, torch.float64)


def test_cholesky_raises_when_no_jitter_helps():
    K = -torch.eye(5, dtype=torch.float64)
    with pytest.raises(NFMError, match="not positive definite"):
        cholesky_solve(K, torch.ones(5, 1, dtype=torch.float64), 0.0)


def test_interpolation_with_reg_zero_needs_no_jitter_on_a_pd_gram():
    # the grokking setting: Gaussian kernel on one-hot inputs, reg = 0; its smallest eigenvalue
    # is 0.02 (condition ~1.7e3): positive definite far beyond rounding on any build
    p = 7
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    X = np.zeros((p * p, 2 * p))
    X[np.arange(p * p), a.ravel()] = 1
    X[np.arange(p * p), p + b.ravel()] = 1
    Xt = torch.from_numpy(X)
    K = GaussianKernel(2.5).gram(Xt, Xt, torch.eye(2 * p, dtype=torch.float64))
    Y = torch.from_numpy(np.eye(p)[(a + b).ravel() % p])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cholesky_solve(K, Y, 0.0)
    assert result.jitter == 0.0
    system = assert_direct_solve_guarantees(K, Y, result, torch.float64)
    assert system.condition < 1e4
    # interpolation: the fitted values reproduce the labels up to the backward error
    scale = system.norm * np.linalg.norm(result.coef.numpy()) + np.linalg.norm(Y.numpy())
    bound = C_BOUND * system.n * unit_roundoff(torch.float64) * scale
    assert np.linalg.norm(K.numpy() @ result.coef.numpy() - Y.numpy()) <= bound


@pytest.mark.parametrize("rank", [0, 20, 500])
def test_conjugate_gradient_meets_its_tolerance_on_the_true_residual(rank):
    K, Y = _system(n=150)
    result = conjugate_gradient_solve(K, Y, 1e-2, preconditioner_rank=rank, tol=1e-10)
    assert result.converged and result.relative_residual <= 1e-10
    assert_iterative_solve_guarantees(K, Y, result, tol=1e-10)
    direct = cholesky_solve(K, Y, 1e-2)
    system = ShiftedSystem.build(K, Y, 1e-2)
    # both are within their bounds of the reference, hence of each other (normwise)
    gap = np.linalg.norm(result.coef.numpy() - direct.coef.numpy())
    bound = system.condition * (1e-10 + C_BOUND * system.n * 2 * unit_roundoff(torch.float64))
    assert gap <= 2 * bound * np.linalg.norm(direct.coef.numpy())


def test_nystrom_preconditioner_and_warm_start_reduce_the_iterations():
    K, Y = _system(n=300, c=1)
    plain = conjugate_gradient_solve(K, Y, 1e-3, preconditioner_rank=0, tol=1e-8, max_iter=2000)
    precond = conjugate_gradient_solve(K, Y, 1e-3, preconditioner_rank=60, tol=1e-8)
    assert precond.n_iter < plain.n_iter
    warm = conjugate_gradient_solve(
        K, Y, 1e-3, preconditioner_rank=60, tol=1e-8, initial=precond.coef * 0.999
    )
    assert warm.n_iter < precond.n_iter
    for result in (plain, precond, warm):
        assert result.converged
        assert_iterative_solve_guarantees(K, Y, result, tol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reg", [1e-4, 1e-1])
def test_nystrom_preconditioner_is_symmetric_positive_definite_with_eigenvalues_at_most_one(
    dtype, reg
):
    # P^{-1} = I + U diag(scale) U^T with orthonormal U and scale in (-1, 0]: its eigenvalues
    # lie in (0, 1]. Built in float32 (n x rank products in K's dtype), U is orthonormal only to
    # rounding; the operator must still be SPD, or CG loses its guarantees.
    from nfm.solvers.preconditioners import NystromPreconditioner

    gen = torch.Generator().manual_seed(3)
    X = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    K = LaplaceKernel(3.0).gram(X, X, torch.eye(6, dtype=torch.float64)).to(dtype)
    precond = NystromPreconditioner(K, reg, 80, torch.Generator().manual_seed(0))
    P_inv = precond.apply(torch.eye(400, dtype=dtype)).to(torch.float64)
    eps = torch.finfo(dtype).eps
    assert torch.allclose(P_inv, P_inv.T, atol=100 * eps)
    eigenvalues = torch.linalg.eigvalsh(0.5 * (P_inv + P_inv.T))
    assert float(eigenvalues.min()) > 0
    assert float(eigenvalues.max()) <= 1 + 100 * eps


def test_conjugate_gradient_never_returns_a_non_finite_iterate_over_a_verified_one(monkeypatch):
    # a preconditioner that turns NaN after a few applications poisons the recursion: the
    # solver must return its best verified iterate (finite, with its true residual), not NaN
    import nfm.solvers.cg as cg_module

    original = cg_module.NystromPreconditioner.apply
    calls = {"n": 0}

    def poisoned(self, R):
        calls["n"] += 1
        out = original(self, R)
        return out * float("nan") if calls["n"] > 4 else out

    monkeypatch.setattr(cg_module.NystromPreconditioner, "apply", poisoned)
    K, Y = _system(n=200)
    with pytest.warns(NumericalWarning):
        result = conjugate_gradient_solve(K, Y, 1e-2, preconditioner_rank=20, tol=1e-12)
    assert bool(torch.isfinite(result.coef).all())
    assert np.isfinite(result.relative_residual) and not result.converged
    system = ShiftedSystem.build(K, Y, 1e-2)
    true = system.relative_residual(result.coef)
    assert result.relative_residual == pytest.approx(true, rel=1e-6)


def test_conjugate_gradient_warns_when_it_reaches_max_iter():
    K, Y = _system(n=200)
    with pytest.warns(NumericalWarning, match="conjugate gradient stopped.*reached max_iter"):
        result = conjugate_gradient_solve(K, Y, 1e-6, preconditioner_rank=0, max_iter=2, tol=1e-12)
    assert not result.converged and not result.stalled and result.n_iter == 2
    assert_iterative_solve_guarantees(K, Y, result, tol=1e-12)


def test_conjugate_gradient_float32():
    K, Y = _system(n=200, dtype=torch.float32)
    result = conjugate_gradient_solve(K, Y, 1e-2)
    assert result.coef.dtype == torch.float32
    assert result.converged and result.relative_residual <= 1e-4  # the float32 default tol
    assert_iterative_solve_guarantees(K, Y, result, tol=1e-4)


def test_solver_selection():
    assert resolve_solver("auto", AUTO_CHOLESKY_MAX_N) == "cholesky"
    assert resolve_solver("auto", AUTO_CHOLESKY_MAX_N + 1) == "cg"
    assert resolve_solver("cg", 10) == "cg"
    K, Y = _system(n=30)
    for solver in ("cg", "cholesky", "auto"):
        coef = solve_kernel_system(K, Y, 0.1, solver=solver)
        system = ShiftedSystem.build(K, Y, 0.1)
        # the default CG tolerance in float64 is 1e-7 on the relative residual
        assert system.relative_residual(coef) <= 1e-7
