"""A ridge grid solved in one block CG: every ridge gets what a single solve guarantees.

Each result is checked, like a single solve, against the float64 eigendecomposition reference
of ITS system (``solver_checks``): reported residual = true residual, converged iff it is
<= tol, forward error and fitted values bounded by the residual.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from solver_checks import ShiftedSystem, assert_iterative_solve_guarantees

from nfm.exceptions import NFMInputError, NumericalWarning
from nfm.kernels import GaussianKernel, LaplaceKernel
from nfm.solvers import conjugate_gradient_solve, conjugate_gradient_solve_regs


def _system(n=150, d=4, c=2, seed=0, dtype=torch.float64, kernel=None):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    K = (kernel or LaplaceKernel(3.0)).gram(X, X, torch.eye(d, dtype=torch.float64))
    Y = torch.randn(n, c, generator=gen, dtype=torch.float64)
    return K.to(dtype), Y.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", [0, 30])
def test_every_ridge_of_the_grid_meets_the_single_solve_guarantees(dtype, rank):
    K, Y = _system(dtype=dtype)
    regs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every ridge converges here
        results = conjugate_gradient_solve_regs(
            K, Y, regs, tol=tol, preconditioner_rank=rank, max_iter=2000
        )
    assert [r.diagonal_shift for r in results] == list(regs)
    for reg, result in zip(regs, results, strict=True):
        assert result.converged and result.coef.shape == Y.shape and result.coef.dtype == dtype
        system = assert_iterative_solve_guarantees(K, Y, result, tol=tol)
        assert system.shift == reg
    # the largest ridge is far better conditioned than the smallest: its columns stop first
    assert results[-1].n_iter < results[0].n_iter
    assert len({r.n_products for r in results}) == 1  # one shared block of products


def test_the_grid_agrees_with_separate_solves_within_their_guarantees():
    K, Y = _system(n=120, c=1, kernel=GaussianKernel(2.0))
    regs = (1e-3, 1e-1)
    options = {"tol": 1e-10, "preconditioner_rank": 20, "max_iter": 1000}
    grid = conjugate_gradient_solve_regs(K, Y, regs, **options)
    for reg, result in zip(regs, grid, strict=True):
        alone = conjugate_gradient_solve(K, Y, reg, **options)
        assert result.converged and alone.converged
        system = ShiftedSystem.build(K, Y, reg)
        gap = np.linalg.norm(result.coef.numpy() - alone.coef.numpy())
        # each is within kappa * (its residual + the reference's error) of the reference
        residuals = result.relative_residual + alone.relative_residual + 1e-12
        assert gap <= system.condition * residuals * np.linalg.norm(system.reference()) * 1.01


def test_warm_starts_one_per_ridge_or_shared():
    K, Y = _system(n=200)
    regs = (1e-3, 1e-1)
    cold = conjugate_gradient_solve_regs(K, Y, regs, tol=1e-9, preconditioner_rank=20)
    starts = [0.999 * r.coef for r in cold]
    warm = conjugate_gradient_solve_regs(
        K, Y, regs, tol=1e-9, preconditioner_rank=20, initial=starts
    )
    shared = conjugate_gradient_solve_regs(
        K, Y, regs, tol=1e-9, preconditioner_rank=20, initial=cold[0].coef
    )
    for a, b in zip(cold, warm, strict=True):
        assert b.n_iter < a.n_iter
    for result in (*warm, *shared):
        assert result.converged
        assert_iterative_solve_guarantees(K, Y, result, tol=1e-9)


def test_a_ridge_that_cannot_converge_warns_and_the_others_are_unaffected():
    K, Y = _system(n=200, c=1, kernel=GaussianKernel(3.0))
    with pytest.warns(NumericalWarning, match=r"reached max_iter \(n=200, reg=1e-09"):
        results = conjugate_gradient_solve_regs(
            K, Y, (1e-9, 1.0), tol=1e-10, preconditioner_rank=0, max_iter=60
        )
    small, large = results
    assert not small.converged and large.converged
    assert_iterative_solve_guarantees(K, Y, small, tol=1e-10)
    assert_iterative_solve_guarantees(K, Y, large, tol=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 30),
    c=st.integers(1, 3),
    log_regs=st.lists(st.floats(-5, 0), min_size=1, max_size=4),
    float32=st.booleans(),
    rank=st.sampled_from([0, 5]),
    seed=st.integers(0, 2**16),
)
def test_property_grid_residuals_are_true_and_decide_convergence(
    n, c, log_regs, float32, rank, seed
):
    K, Y = _system(n=n, d=3, c=c, seed=seed, kernel=GaussianKernel(1.5))
    dtype = torch.float32 if float32 else torch.float64
    K, Y = K.to(dtype), Y.to(dtype)
    tol = 1e-4 if float32 else 1e-9
    regs = [10.0**v for v in log_regs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        results = conjugate_gradient_solve_regs(K, Y, regs, tol=tol, preconditioner_rank=rank)
    for reg, result in zip(regs, results, strict=True):
        assert result.diagonal_shift == reg
        assert_iterative_solve_guarantees(K, Y, result, tol=tol)


@pytest.mark.parametrize(
    ("regs", "options", "message"),
    [
        ((), {}, r"regs must be a non-empty sequence"),
        (0.1, {}, r"regs must be a non-empty sequence"),
        ((0.1, -1.0), {}, r"reg must be a finite number >= 0; got -1.0"),
        ((0.1, float("nan")), {}, r"reg must be a finite number >= 0; got nan"),
        ((0.1, 1.0), {"initial": [torch.zeros(6, 2)]}, r"one per reg \(2\); got 1"),
        ((0.1,), {"initial": [torch.zeros(5, 2)]}, r"initial must have Y's shape \(6, 2\)"),
    ],
)
def test_bad_grid_arguments_raise_a_clear_input_error(regs, options, message):
    K, Y = _system(n=6)
    with pytest.raises(NFMInputError, match=message):
        conjugate_gradient_solve_regs(K, Y, regs, **options)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_grid_shares_its_products(dtype):
    # one block product per pass for every ridge, and the convergence claims verified
    # together: far fewer products with K than one solve per ridge (a count, not a timing)
    K, Y = _system(n=300, dtype=dtype)
    regs = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    options = {"preconditioner_rank": 30, "tol": 1e-3 if dtype == torch.float32 else 1e-8}
    grid = conjugate_gradient_solve_regs(K, Y, regs, **options)
    singles = [conjugate_gradient_solve(K, Y, reg, **options) for reg in regs]
    assert grid[0].n_products < sum(s.n_products for s in singles) / 2
    for result, single in zip(grid, singles, strict=True):
        assert result.converged and single.converged
        assert_iterative_solve_guarantees(K, Y, result, tol=options["tol"])
