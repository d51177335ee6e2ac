"""Solvers: Cholesky (jitter ladder, inverse diagonal) against numpy; CG against Cholesky."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from reference_rfm import reference_kernel_ridge

from nfm.exceptions import NFMError, NFMInputError, NumericalWarning
from nfm.kernels import GaussianKernel, LaplaceKernel
from nfm.solvers import (
    AUTO_CHOLESKY_MAX_N,
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


@pytest.mark.parametrize("reg", [1e-3, 1.0])
@pytest.mark.parametrize("overwrite", [False, True])
def test_cholesky_matches_numpy_solve_and_inverse_diagonal(reg, overwrite):
    K, Y = _system()
    K_np = K.numpy().copy()
    work = K.clone()
    result = cholesky_solve(work, Y, reg, overwrite=overwrite, inverse_diagonal=True)
    np.testing.assert_allclose(
        result.coef.numpy(), reference_kernel_ridge(K_np, Y.numpy(), reg), rtol=1e-8, atol=1e-10
    )
    inverse = np.linalg.inv(K_np + reg * np.eye(K_np.shape[0]))
    np.testing.assert_allclose(result.inverse_diagonal.numpy(), np.diag(inverse), rtol=1e-8)
    assert result.jitter == 0.0
    if not overwrite:
        np.testing.assert_array_equal(work.numpy(), K_np)


def test_cholesky_accepts_a_vector_right_hand_side_and_float32():
    K, Y = _system(dtype=torch.float32)
    coef = cholesky_solve(K, Y[:, 0], 1e-2).coef
    assert coef.shape == (K.shape[0],) and coef.dtype == torch.float32
    expected = reference_kernel_ridge(K.double().numpy(), Y[:, 0].double().numpy(), 1e-2)
    np.testing.assert_allclose(coef.double().numpy(), expected, rtol=2e-3, atol=2e-3)


def test_in_place_factorisation_needs_rebuild_for_the_jitter_ladder():
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    X = torch.cat([X, X[:3]])
    kernel = GaussianKernel(2.0)
    eye = torch.eye(3, dtype=torch.float64)
    K = kernel.gram(X, X, eye)
    Y = torch.ones(33, 1, dtype=torch.float64)
    with pytest.raises(NFMError, match="pass rebuild"):
        cholesky_solve(K.clone(), Y, 0.0, overwrite=True)
    with pytest.warns(NumericalWarning, match="added jitter"):
        result = cholesky_solve(
            K.clone(), Y, 0.0, overwrite=True, rebuild=lambda out: kernel.gram(X, X, eye, out=out)
        )
    with pytest.warns(NumericalWarning, match="added jitter"):
        copy = cholesky_solve(K, Y, 0.0)
    torch.testing.assert_close(result.coef, copy.coef)


def test_jitter_ladder_warns_on_singular_gram_and_leaves_k_unchanged():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    X = torch.cat([X, X[:4]])  # duplicate rows: singular Gram, reg = 0
    K = GaussianKernel(2.0).gram(X, X, torch.eye(3, dtype=torch.float64))
    Y = torch.randn(44, 1, generator=gen, dtype=torch.float64)
    before = K.clone()
    with pytest.warns(NumericalWarning, match="added jitter"):
        result = cholesky_solve(K, Y, 0.0)
    assert result.jitter > 0
    torch.testing.assert_close(K, before, rtol=0, atol=0)
    expected = reference_kernel_ridge(K.numpy(), Y.numpy(), result.jitter)
    np.testing.assert_allclose(result.coef.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_cholesky_raises_when_no_jitter_helps():
    K = -torch.eye(5, dtype=torch.float64)
    with pytest.raises(NFMError, match="not positive definite"):
        cholesky_solve(K, torch.ones(5, 1, dtype=torch.float64), 0.0)


def test_interpolation_with_reg_zero_needs_no_jitter_on_a_pd_gram():
    # the grokking setting: Gaussian kernel on one-hot inputs, reg = 0
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
    torch.testing.assert_close(K @ result.coef, Y, atol=1e-8, rtol=0)


@pytest.mark.parametrize("rank", [0, 20, 500])
def test_conjugate_gradient_agrees_with_cholesky(rank):
    K, Y = _system(n=150)
    direct = cholesky_solve(K, Y, 1e-2).coef
    iterative = conjugate_gradient_solve(K, Y, 1e-2, preconditioner_rank=rank, tol=1e-10)
    assert iterative.converged
    torch.testing.assert_close(iterative.coef, direct, rtol=1e-6, atol=1e-7)


def test_nystrom_preconditioner_and_warm_start_reduce_the_passes():
    K, Y = _system(n=300, c=1)
    plain = conjugate_gradient_solve(K, Y, 1e-3, preconditioner_rank=0, tol=1e-8, max_iter=2000)
    precond = conjugate_gradient_solve(K, Y, 1e-3, preconditioner_rank=60, tol=1e-8)
    assert precond.n_iter < plain.n_iter
    warm = conjugate_gradient_solve(
        K, Y, 1e-3, preconditioner_rank=60, tol=1e-8, initial=precond.coef * 0.999
    )
    assert warm.n_iter < precond.n_iter
    torch.testing.assert_close(warm.coef, precond.coef, rtol=1e-5, atol=1e-6)


def test_conjugate_gradient_warns_when_it_does_not_converge():
    K, Y = _system(n=200)
    with pytest.warns(NumericalWarning, match="conjugate gradient stopped"):
        result = conjugate_gradient_solve(K, Y, 1e-6, preconditioner_rank=0, max_iter=2, tol=1e-12)
    assert not result.converged and result.n_iter == 2


def test_conjugate_gradient_float32():
    K, Y = _system(n=200, dtype=torch.float32)
    result = conjugate_gradient_solve(K, Y, 1e-2)
    expected = cholesky_solve(K.double(), Y.double(), 1e-2).coef
    np.testing.assert_allclose(result.coef.double().numpy(), expected.numpy(), rtol=0, atol=1e-2)


def test_solver_selection_and_argument_checks():
    assert resolve_solver("auto", AUTO_CHOLESKY_MAX_N) == "cholesky"
    assert resolve_solver("auto", AUTO_CHOLESKY_MAX_N + 1) == "cg"
    assert resolve_solver("cg", 10) == "cg"
    with pytest.raises(NFMInputError, match="solver must be"):
        resolve_solver("lu", 10)
    K, Y = _system(n=30)
    torch.testing.assert_close(
        solve_kernel_system(K, Y, 0.1, solver="cg"),
        solve_kernel_system(K, Y, 0.1, solver="cholesky"),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(NFMInputError, match="reg must be"):
        cholesky_solve(K, Y, -1.0)
    with pytest.raises(NFMInputError, match="rows"):
        cholesky_solve(K, Y[:10], 0.1)
    with pytest.raises(NFMInputError, match="square"):
        conjugate_gradient_solve(K[:5], Y, 0.1)
