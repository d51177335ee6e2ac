"""Tests of nfm.linalg against slow float64 references, plus property tests."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm import NFMInputError, NumericalWarning, matrix_correlation, symmetric_matrix_power


def _random_psd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    factor = rng.standard_normal((d, rank or d))
    return factor @ factor.T


def _reference_power(a: np.ndarray, power: float) -> np.ndarray:
    """Power through scipy's general eigen-solver, clamping eigenvalues: slow and plain."""
    import scipy.linalg

    eigvals, eigvecs = scipy.linalg.eigh(a.astype(np.float64))
    eigvals = np.clip(eigvals, 0.0, None)
    return eigvecs @ np.diag(eigvals**power) @ eigvecs.T


def _reference_correlation(a, b, kind, exclude_diagonal):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if exclude_diagonal:
        keep = ~np.eye(a.shape[0], dtype=bool)
        u, v = a[keep], b[keep]
    else:
        u, v = a.ravel(), b.ravel()
    if kind == "pearson":  # written out: np.corrcoef clips to [-1, 1], as the engine does
        u, v = u - u.mean(), v - v.mean()
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, d=st.integers(1, 12), power=st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0]))
def test_power_matches_reference(seed, d, power):
    rng = np.random.default_rng(seed)
    a = _random_psd(rng, d)
    np.testing.assert_allclose(
        symmetric_matrix_power(a, power), _reference_power(a, power), rtol=1e-8, atol=1e-8
    )


@settings(max_examples=20, deadline=None)
@given(seed=seeds, d=st.integers(2, 10))
def test_square_root_squares_back_and_is_psd(seed, d):
    rng = np.random.default_rng(seed)
    a = _random_psd(rng, d, rank=max(1, d // 2))
    root = symmetric_matrix_power(a, 0.5)
    np.testing.assert_allclose(root @ root, a, atol=1e-8 * max(1.0, np.abs(a).max()))
    np.testing.assert_allclose(root, root.T)
    assert np.linalg.eigvalsh(root).min() > -1e-8


def test_power_keeps_array_kind_dtype_and_device():
    a = torch.eye(3, dtype=torch.float32) * 4
    out = symmetric_matrix_power(a, 0.5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.eye(3) * 2)
    out_np = symmetric_matrix_power(np.eye(2) * 9, 0.5)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, np.eye(2) * 3)


def test_power_zero_is_range_projector():
    v = np.array([[1.0], [1.0], [0.0]])
    a = v @ v.T
    np.testing.assert_allclose(symmetric_matrix_power(a, 0.0), a / 2, atol=1e-12)


def test_negative_rounding_eigenvalues_are_clamped():
    a = np.diag([1.0, -1e-15, 4.0])
    np.testing.assert_allclose(symmetric_matrix_power(a, 0.5), np.diag([1.0, 0.0, 2.0]))


def _indefinite(rng: np.random.Generator, d: int, negative: float) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetric matrix with eigenvalues (negative, 1, 2, ..., d-1) and its PSD part."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    values = np.array([negative, *range(1, d)], dtype=np.float64)
    matrix = (q * values) @ q.T
    psd_part = (q * np.clip(values, 0, None)) @ q.T
    return 0.5 * (matrix + matrix.T), psd_part


@pytest.mark.parametrize("power", [0.0, 0.5, 0.999, 1.0, 1.001, 2.0])
def test_materially_indefinite_matrix_warns_for_every_power(power):
    a, psd_part = _indefinite(np.random.default_rng(0), 5, negative=-0.5)
    with pytest.warns(NumericalWarning, match=r"matrix is not positive semi-definite.*-5\.000e-01"):
        out = symmetric_matrix_power(a, power)
    # the result is the power of the PSD part (negative eigenvalue clamped)
    if power > 0:
        np.testing.assert_allclose(out, _reference_power(psd_part, power), atol=1e-10)


def test_power_is_continuous_in_alpha_at_one_for_an_indefinite_matrix():
    a, psd_part = _indefinite(np.random.default_rng(1), 6, negative=-2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)
        at_one = symmetric_matrix_power(a, 1.0)
        for delta in (1e-3, 1e-6):
            for alpha in (1.0 - delta, 1.0 + delta):
                near = symmetric_matrix_power(a, alpha)
                # |lambda^alpha - lambda| <= |alpha - 1| * lambda^max(alpha,1) * |log lambda|,
                # at most 6 * delta here (largest eigenvalue 5)
                assert np.linalg.norm(near - at_one, 2) <= 10 * delta
    np.testing.assert_allclose(at_one, psd_part, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    d=st.integers(2, 12),
    rank=st.integers(1, 12),
    scale=st.floats(1e-6, 1e6),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_rounding_level_negative_eigenvalues_do_not_warn(seed, d, rank, scale, dtype):
    rng = np.random.default_rng(seed)
    factor = rng.standard_normal((d, min(rank, d))).astype(dtype)
    gram = (scale * factor) @ factor.T  # PSD, rank-deficient: rounding makes eigenvalues < 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        for power in (0.0, 0.5, 1.0):
            symmetric_matrix_power(gram, power)
            symmetric_matrix_power(torch.from_numpy(gram), power, dtype=torch.float64)


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    d=st.integers(2, 12),
    negative=st.floats(1e-3, 1.0),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_material_negative_eigenvalues_always_warn(seed, d, negative, dtype):
    # -1e-3 * max|eigenvalue| is above the tolerance 100 * d * eps(float32) * max|eigenvalue|
    a, _ = _indefinite(np.random.default_rng(seed), d, negative=-negative * max(d - 1, 1))
    with pytest.warns(NumericalWarning, match="not positive semi-definite"):
        symmetric_matrix_power(a.astype(dtype), 0.5)


def test_float32_matrix_keeps_its_rounding_tolerance_when_computed_in_float64():
    rng = np.random.default_rng(5)
    factor = rng.standard_normal((40, 3)).astype(np.float32)
    gram = factor @ factor.T  # rank 3 in float32: eigenvalues ~ -1e-6 appear
    values = np.linalg.eigvalsh(gram.astype(np.float64))
    assert values.min() < -100 * 40 * np.finfo(np.float64).eps * np.abs(values).max()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumericalWarning)
        out = symmetric_matrix_power(torch.from_numpy(gram), 0.5, dtype=torch.float64)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), _reference_power(gram, 0.5), atol=1e-6)
    # the same numbers handed over as float64 are judged at float64's precision
    with pytest.warns(NumericalWarning, match="not positive semi-definite"):
        symmetric_matrix_power(gram.astype(np.float64), 0.5)


@pytest.mark.parametrize(
    ("matrix", "power", "match"),
    [
        (np.ones((2, 3)), 0.5, r"square matrix; got shape \(2, 3\)"),
        (np.eye(2), -1.0, "power must be a finite number >= 0"),
        (np.eye(2), float("nan"), "power must be a finite number >= 0"),
        (np.array([["a", "b"], ["c", "d"]]), 1.0, "must hold numbers"),
    ],
)
def test_power_rejects_bad_input(matrix, power, match):
    with pytest.raises(NFMInputError, match=match):
        symmetric_matrix_power(matrix, power)


@settings(max_examples=40, deadline=None)
@given(
    seed=seeds,
    d=st.integers(3, 9),
    kind=st.sampled_from(["pearson", "cosine"]),
    exclude_diagonal=st.booleans(),
    scale_a=st.floats(1e-3, 1e3),
    scale_b=st.floats(1e-3, 1e3),
)
def test_correlation_properties(seed, d, kind, exclude_diagonal, scale_a, scale_b):
    rng = np.random.default_rng(seed)
    a, b = _random_psd(rng, d), _random_psd(rng, d)
    value = matrix_correlation(a, b, kind=kind, exclude_diagonal=exclude_diagonal)
    # against the unclamped reference (a range check would pass whatever the engine computes,
    # since it clamps to [-1, 1])
    assert value == pytest.approx(_reference_correlation(a, b, kind, exclude_diagonal), abs=1e-10)
    assert value == pytest.approx(
        matrix_correlation(b, a, kind=kind, exclude_diagonal=exclude_diagonal), abs=1e-12
    )
    scaled = matrix_correlation(
        scale_a * a, scale_b * b, kind=kind, exclude_diagonal=exclude_diagonal
    )
    assert scaled == pytest.approx(value, abs=1e-9)
    # a positive affine image has correlation 1 (Pearson); a positive multiple (both kinds)
    shifted = 3.0 * a + (5.0 if kind == "pearson" else 0.0)
    assert _reference_correlation(a, shifted, kind, exclude_diagonal) == pytest.approx(1.0)
    assert matrix_correlation(a, shifted, kind=kind, exclude_diagonal=exclude_diagonal) == (
        pytest.approx(_reference_correlation(a, shifted, kind, exclude_diagonal), abs=1e-12)
    )


def test_pearson_and_cosine_differ_and_diagonal_matters():
    """Values worked out by hand, away from the clamped ends +-1."""
    a = np.array([[10.0, 1.0, 2.0], [1.0, 10.0, 3.0], [2.0, 3.0, 10.0]])
    b = np.array([[4.0, 3.0, 1.0], [3.0, 4.0, 2.0], [1.0, 2.0, 4.0]])
    # off the diagonal: u = (1, 2, 1, 3, 2, 3), v = (3, 1, 3, 2, 1, 2); u.v = 22, |u|^2 = |v|^2 = 28
    assert matrix_correlation(a, b, kind="cosine", exclude_diagonal=True) == pytest.approx(22 / 28)
    # centred: u - 2 = (-1, 0, -1, 1, 0, 1), v - 2 = (1, -1, 1, 0, -1, 0); dot -2, norms^2 4 and 4
    assert matrix_correlation(a, b, exclude_diagonal=True) == pytest.approx(-0.5)
    # with the diagonal: u.v = 22 + 3 * 40 = 142, |u|^2 = 28 + 300, |v|^2 = 28 + 48
    assert matrix_correlation(a, b, kind="cosine") == pytest.approx(142 / np.sqrt(328 * 76))


def test_correlation_undefined_for_constant_input_is_nan():
    assert np.isnan(matrix_correlation(np.ones((3, 3)), np.eye(3)))


def test_correlation_rejects_bad_input():
    with pytest.raises(NFMInputError, match="same shape"):
        matrix_correlation(np.eye(2), np.eye(3))
    with pytest.raises(NFMInputError, match="'pearson' or 'cosine'"):
        matrix_correlation(np.eye(2), np.eye(2), kind="spearman")
    with pytest.raises(NFMInputError, match="square matrix"):
        matrix_correlation(np.ones((2, 3)), np.ones((2, 3)), exclude_diagonal=True)
