"""Kernels: Gram matrices and closed-form input gradients against autograd, AGOP against loops."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_rfm import reference_agop, reference_gradients, reference_kernel

from nfm.exceptions import NFMInputError
from nfm.kernels import (
    GaussianKernel,
    GeneralizedLaplaceKernel,
    Kernel,
    LaplaceKernel,
    ProductLaplaceKernel,
    make_kernel,
)

# (reference name, kernel, reference keyword arguments)
KERNELS = [
    ("laplace", LaplaceKernel(2.0), {}),
    ("gaussian", GaussianKernel(1.5), {}),
    ("generalized_laplace", GeneralizedLaplaceKernel(2.0, 1.0, 1.0), {}),
    (
        "generalized_laplace",
        GeneralizedLaplaceKernel(2.0, 1.5, 0.7),
        {"exponent": 1.5, "kernel_power": 0.7},
    ),
    ("generalized_laplace", GeneralizedLaplaceKernel(3.0, 2.0, 1.0), {"exponent": 2.0}),
    ("product_laplace", ProductLaplaceKernel(2.0, 1.2), {"exponent": 1.2}),
]
IDS = ["laplace", "gaussian", "gen-p1-q1", "gen-p1.5-q0.7", "gen-p2-q1", "product-p1.2"]


def _problem(seed: int = 0, n_points: int = 7, n_centres: int = 9, d: int = 4, c: int = 3):
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n_centres, d, generator=gen, dtype=torch.float64)
    X = torch.cat([torch.randn(n_points - 2, d, generator=gen, dtype=torch.float64), Z[:2]])
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    M = A @ A.T / d
    coef = torch.randn(n_centres, c, generator=gen, dtype=torch.float64)
    return X, Z, M, coef


def _kwargs(kernel: Kernel, extra: dict) -> dict:
    return {"bandwidth": kernel.bandwidth, **extra}


@pytest.mark.parametrize(("name", "kernel", "extra"), KERNELS, ids=IDS)
def test_gram_matches_reference(name, kernel, extra):
    X, Z, M, _ = _problem()
    expected = reference_kernel(X, Z, M, name, **_kwargs(kernel, extra))
    torch.testing.assert_close(kernel.gram(X, Z, M, block_size=3), expected)


@pytest.mark.parametrize(("name", "kernel", "extra"), KERNELS, ids=IDS)
def test_gradient_matches_autograd(name, kernel, extra):
    # X holds two rows equal to centres: the self/duplicate terms are dropped on both sides
    X, Z, M, coef = _problem()
    expected = reference_gradients(X, Z, M, coef, name, **_kwargs(kernel, extra))
    got = kernel.gradient(X, Z, M, coef, block_size=2)
    assert got.shape == (X.shape[0], coef.shape[1], X.shape[1])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("name", "kernel", "extra"), KERNELS, ids=IDS)
@pytest.mark.parametrize("centered", [False, True])
def test_agop_matches_loop(name, kernel, extra, centered):
    X, Z, M, coef = _problem(seed=1)
    grads = reference_gradients(X, Z, M, coef, name, **_kwargs(kernel, extra))
    expected = reference_agop(grads, centered=centered)
    got = kernel.agop(X, Z, M, coef, centered=centered, block_size=3)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", [LaplaceKernel(2.0), GaussianKernel(1.3)], ids=str)
@pytest.mark.parametrize("centered", [False, True])
def test_agop_gram_route_equals_per_output_route(kernel, centered):
    # many outputs (c * d > n) selects the n x n route; the base class runs the per-output route
    X, Z, M, coef = _problem(seed=2, n_points=12, n_centres=20, d=5, c=9)
    fast = kernel.agop(X, Z, M, coef, centered=centered, block_size=5)
    slow = Kernel.agop(kernel, X, Z, M, coef, centered=centered, block_size=5)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    name = kernel.name
    expected = reference_agop(
        reference_gradients(X, Z, M, coef, name, kernel.bandwidth), centered=centered
    )
    torch.testing.assert_close(fast, expected, rtol=1e-9, atol=1e-12)


def test_generalized_laplace_with_p2_q1_is_the_laplace_kernel():
    X, Z, M, coef = _problem(seed=3)
    lap, gen = LaplaceKernel(2.5), GeneralizedLaplaceKernel(2.5, exponent=2.0, kernel_power=1.0)
    torch.testing.assert_close(lap.gram(X, Z, M), gen.gram(X, Z, M))
    torch.testing.assert_close(lap.agop(X, Z, M, coef), gen.agop(X, Z, M, coef))


def test_product_laplace_is_a_product_over_coordinates():
    X, Z, _, _ = _problem(seed=4)
    M = torch.diag(torch.tensor([1.0, 4.0, 0.25, 2.0], dtype=torch.float64))
    kernel = ProductLaplaceKernel(1.7, exponent=1.0)
    scaled_x, scaled_z = X * M.diagonal().sqrt(), Z * M.diagonal().sqrt()
    expected = torch.ones(X.shape[0], Z.shape[0], dtype=torch.float64)
    for j in range(X.shape[1]):
        expected *= torch.exp(-(scaled_x[:, None, j] - scaled_z[None, :, j]).abs() / 1.7)
    torch.testing.assert_close(kernel.gram(X, Z, M), expected)


def test_gram_into_preallocated_buffer_and_block_size_do_not_change_values():
    X, Z, M, _ = _problem(seed=5, n_points=30, n_centres=30)
    kernel = LaplaceKernel(3.0)
    buffer = torch.empty(30, 30, dtype=torch.float64)
    out = kernel.gram(X, Z, M, out=buffer, block_size=4)
    assert out.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(out, kernel.gram(X, Z, M))


def test_duplicate_rows_give_exact_unit_kernel_and_finite_gradients():
    X = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, -1.0]], dtype=torch.float64) * 1e3
    M = torch.eye(2, dtype=torch.float64)
    kernel = LaplaceKernel(10.0)
    K = kernel.gram(X, X, M)
    assert float(K[0, 1]) == 1.0 and float(K[0, 0]) == 1.0
    grads = kernel.gradient(X, X, M, torch.ones(3, 1, dtype=torch.float64))
    assert torch.isfinite(grads).all()


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bandwidth=st.floats(0.3, 30.0),
    which=st.sampled_from(["laplace", "gaussian", "product_laplace"]),
)
def test_gram_matches_the_reference_on_random_metrics_and_bandwidths(seed, bandwidth, which):
    # K in [0, 1] holds by construction (distances are clamped at 0); the values are checked
    # against explicit differences instead, including duplicate rows in a separate tensor
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    Z = torch.cat([X[:4].clone(), torch.randn(6, 3, generator=gen, dtype=torch.float64)])
    A = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    M = A @ A.T
    kernel = make_kernel(which, bandwidth)
    torch.testing.assert_close(
        kernel.gram(X, Z, M), reference_kernel(X, Z, M, which, bandwidth), rtol=1e-12, atol=1e-13
    )
    K = kernel.gram(X, X, M)
    torch.testing.assert_close(K, K.T, rtol=1e-13, atol=1e-14)
    assert bool((K.diagonal() == 1).all())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_agop_is_psd_and_scales_quadratically_with_the_coefficients(seed, scale):
    X, Z, M, coef = _problem(seed=seed)
    kernel = GaussianKernel(2.0)
    G = kernel.agop(X, Z, M, coef)
    assert float(torch.linalg.eigvalsh(G).min()) >= -1e-10 * float(G.abs().max())
    torch.testing.assert_close(kernel.agop(X, Z, M, scale * coef), scale**2 * G)


def test_agop_does_not_depend_on_sample_order():
    X, Z, M, coef = _problem(seed=6, n_points=11)
    kernel = LaplaceKernel(2.0)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kernel.agop(X, Z, M, coef), kernel.agop(X[perm], Z, M, coef))


@pytest.mark.parametrize(("name", "kernel", "extra"), KERNELS, ids=IDS)
def test_kernels_pickle_and_compare_equal(name, kernel, extra):
    clone = pickle.loads(pickle.dumps(kernel))
    assert clone == kernel and hash(clone) == hash(kernel)
    assert repr(clone) == repr(kernel)


def test_make_kernel_builds_each_kernel_and_rejects_bad_arguments():
    assert isinstance(make_kernel("laplace", 2.0), LaplaceKernel)
    assert isinstance(make_kernel("gaussian", 2.0), GaussianKernel)
    gen = make_kernel("generalized_laplace", 2.0, exponent=1.5, kernel_power=0.5)
    assert (gen.exponent, gen.kernel_power) == (1.5, 0.5)
    assert make_kernel("product_laplace", 2.0, exponent=1.0).kernel_power == 1.0
    with pytest.raises(NFMInputError, match="kernel must be one of"):
        make_kernel("rbf", 1.0)
    with pytest.raises(NFMInputError, match="bandwidth"):
        LaplaceKernel(0.0)
    with pytest.raises(NFMInputError, match="bandwidth"):
        GaussianKernel(float("nan"))
    with pytest.raises(NFMInputError, match="exponent"):
        GeneralizedLaplaceKernel(1.0, exponent=0.5)
    with pytest.raises(NFMInputError, match="kernel_power"):
        GeneralizedLaplaceKernel(1.0, kernel_power=3.0)
    with pytest.raises(NFMInputError, match="AGOP sample is empty"):
        LaplaceKernel(1.0).agop(
            torch.zeros(0, 2, dtype=torch.float64),
            torch.ones(3, 2, dtype=torch.float64),
            torch.eye(2, dtype=torch.float64),
            torch.ones(3, 1, dtype=torch.float64),
        )


def test_float32_gradients_agree_with_float64():
    X, Z, M, coef = _problem(seed=7)
    kernel = LaplaceKernel(2.0)
    g64 = kernel.agop(X, Z, M, coef)
    g32 = kernel.agop(X.float(), Z.float(), M.float(), coef.float())
    np.testing.assert_allclose(g32.double().numpy(), g64.numpy(), rtol=1e-3, atol=1e-5)
