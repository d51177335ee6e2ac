"""float32 kernel values against float64 references built from explicit differences.

The references never use the expansion x^T M x + z^T M z - 2 x^T M z: they form every
difference x - z in float64 from the float32-rounded inputs, so they measure the kernel code's
own rounding only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_rfm import reference_kernel

from nfm.kernels import GaussianKernel, LaplaceKernel, MahalanobisDistances, rounding_threshold

EPS32 = float(torch.finfo(torch.float32).eps)


def _spd(d: int, gen: torch.Generator) -> torch.Tensor:
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return A @ A.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _data(mean: float, d: int, seed: int = 0):
    """Training rows with feature mean ``mean``; queries = near copies, exact copies, new rows."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(200, d, generator=gen, dtype=torch.float64) + mean
    near = X[:40] + 1e-3 * torch.randn(40, d, generator=gen, dtype=torch.float64)
    Q = torch.cat([near, X[40:80].clone(), torch.randn(40, d, generator=gen) + mean])
    return X.float(), Q.float(), _spd(d, gen)


@pytest.mark.parametrize("kernel", [LaplaceKernel(10.0), LaplaceKernel(1.0), GaussianKernel(3.0)])
@pytest.mark.parametrize("mean", [0.0, 10.0])
@pytest.mark.parametrize("d", [4, 20])
@pytest.mark.parametrize("identity", [True, False])
def test_float32_gram_matches_float64_direct_differences(kernel, mean, d, identity):
    X, Q, M = _data(mean, d)
    M = torch.eye(d, dtype=torch.float64) if identity else M
    M32 = M.float()
    for A in (X, Q):
        got = kernel.gram(A, X, M32).double()
        expected = reference_kernel(
            A.double(), X.double(), M32.double(), kernel.name, kernel.bandwidth
        )
        # the expansion alone is off by up to ~1e-3 here (1e-2 for bandwidth 1)
        assert float((got - expected).abs().max()) <= 64 * EPS32
    K = kernel.gram(X, X, M32)
    assert bool((K.diagonal() == 1).all())
    # exact copies in a different tensor: distance exactly 0, kernel exactly 1
    assert bool((kernel.gram(Q[40:80], X, M32)[:, 40:80].diagonal() == 1).all())


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shift=st.floats(-100.0, 100.0),
    which=st.sampled_from(["laplace", "gaussian"]),
)
def test_float32_kernel_values_are_translation_invariant(seed, shift, which):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(30, 5, generator=gen)
    Z = torch.cat([X[:10], torch.randn(20, 5, generator=gen)])
    M = _spd(5, gen).float()
    kernel = LaplaceKernel(5.0) if which == "laplace" else GaussianKernel(2.0)
    moved = kernel.gram(X + shift, Z + shift, M).double()
    # reference on the shifted float32 inputs themselves (the shift rounds the data)
    Xs, Zs = (X + shift).double(), (Z + shift).double()
    expected = reference_kernel(Xs, Zs, M.double(), which, kernel.bandwidth)
    assert float((moved - expected).abs().max()) <= 64 * EPS32


def _reference_near_duplicates(X: torch.Tensor, Z: torch.Tensor, M: torch.Tensor, same: bool):
    Xc, Zc = X.double() - Z.double().mean(0), Z.double() - Z.double().mean(0)
    diff = Xc[:, None, :] - Zc[None, :, :]
    s = torch.einsum("abi,ij,abj->ab", diff, M.double(), diff)
    norms = ((Xc @ M.double()) * Xc).sum(1)[:, None] + ((Zc @ M.double()) * Zc).sum(1)[None, :]
    near = s <= rounding_threshold(X.dtype) * norms
    if same:
        near = torch.triu(near, diagonal=1)
    return int(near.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_near_duplicate_pairs_are_counted(dtype):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(50, 3, generator=gen, dtype=torch.float64) + 10.0
    tiny = 1e-4 * float(torch.finfo(dtype).eps) ** 0.5  # far below the rounding threshold
    X = torch.cat([base, base[:4], base[4:7] + tiny, base[:2]]).to(dtype)
    M = torch.eye(3, dtype=dtype)
    _, info = LaplaceKernel(2.0).gram(X, X, M, return_info=True, block_size=7)
    # base[:2] three times each (3 pairs each), base[2:4] twice, base[4:7] + tiny: 6 + 2 + 3
    assert info.near_duplicate_pairs == 11 == _reference_near_duplicates(X, X, M, True)
    _, info_q = LaplaceKernel(2.0).gram(X[:10], X, M, return_info=True)
    assert info_q.near_duplicate_pairs == _reference_near_duplicates(X[:10], X, M, False)


def test_gradients_drop_near_duplicate_terms_and_stay_finite():
    # a duplicate pair within rounding: the Laplace gradient has no limit there; the term goes
    X = torch.tensor([[10.0, 2.0], [10.0, 2.0 + 1e-7], [13.0, -1.0]], dtype=torch.float32)
    M = torch.eye(2)
    kernel = LaplaceKernel(10.0)
    distances = MahalanobisDistances(X, M, X.mean(0))
    s, duplicates = distances.block(X, self_offset=0, zero_near_duplicates=True)
    assert duplicates == 1 and float(s[0, 1]) == 0.0 and float(s[1, 0]) == 0.0
    grads = kernel.gradient(X, X, M, torch.tensor([[1.0], [-1.0], [0.5]]))
    assert bool(torch.isfinite(grads).all())
    # what remains is the gradient from the third point alone, by the closed form
    for i in (0, 1):
        u = X[2].double() - X[i].double()
        r = float(u.norm())
        expected = 0.5 * np.exp(-r / 10.0) / (10.0 * r) * u.numpy()
        np.testing.assert_allclose(grads[i, 0].double().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predictor_values_are_the_gram_matrix_times_the_coefficients(dtype):
    X, Q, M = _data(10.0, 6, seed=3)
    X, Q, M = X.to(dtype), Q.to(dtype), M.to(dtype)
    coef = torch.randn(X.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    kernel = LaplaceKernel(10.0)
    values = kernel.predictor_values(Q, X, M, coef, block_size=7)
    expected = reference_kernel(Q.double(), X.double(), M.double(), "laplace", 10.0) @ coef.double()
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    assert float((values.double() - expected).abs().max()) <= tol * float(coef.abs().sum(0).max())
    assert kernel.predictor_values(Q, X, M, coef[:, 0]).shape == (Q.shape[0],)


def test_float64_predictor_values_do_not_depend_on_the_batch():
    X, Q, M = _data(10.0, 6, seed=4)
    X, Q, M = X.double(), Q.double(), M.double()
    coef = torch.randn(
        X.shape[0], 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    kernel = LaplaceKernel(10.0)
    batch = kernel.predictor_values(Q, X, M, coef)
    rows = torch.cat([kernel.predictor_values(Q[i : i + 1], X, M, coef) for i in range(len(Q))])
    scale = float(coef.abs().sum(0).max())
    assert float((batch - rows).abs().max()) <= 1e-12 * scale


def test_an_outlying_centre_widens_the_cheap_candidate_test_but_not_the_result():
    # one centre 1000 units out makes max_j z^T M z huge: the cheap row-wise candidate test
    # then lets every pair through, and the per-pair test must recompute exactly those with
    # s <= N_ij / 256 (the others keep their expanded value): same accuracy as without it
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(120, 6, generator=gen, dtype=torch.float64)
    X[0] += 1000.0
    Q = torch.cat([X[1:30] + 1e-4 * torch.randn(29, 6, generator=gen, dtype=torch.float64), X])
    X, Q = X.float(), Q.float()
    M = _spd(6, gen).float()
    for kernel in (LaplaceKernel(10.0), LaplaceKernel(1.0), GaussianKernel(3.0)):
        got = kernel.gram(Q, X, M, block_size=17).double()
        expected = reference_kernel(
            Q.double(), X.double(), M.double(), kernel.name, kernel.bandwidth
        )
        assert bool(torch.isfinite(got).all())
        assert float((got - expected).abs().max()) <= 64 * EPS32
    distances = MahalanobisDistances(X, M, X.mean(0))
    s, _ = distances.block(X, self_offset=0)
    assert float(s.min()) >= 0.0 and bool((s.diagonal() == 0).all())
