"""Tests of nfm.linalg against slow float64 references, plus property tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm import NFMInputError, matrix_correlation, symmetric_matrix_power


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
    if kind == "pearson":
        return float(np.corrcoef(u, v)[0, 1])
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
    assert -1.0 <= value <= 1.0
    assert value == pytest.approx(
        matrix_correlation(b, a, kind=kind, exclude_diagonal=exclude_diagonal), abs=1e-12
    )
    scaled = matrix_correlation(
        scale_a * a, scale_b * b, kind=kind, exclude_diagonal=exclude_diagonal
    )
    assert scaled == pytest.approx(value, abs=1e-9)
    assert value == pytest.approx(_reference_correlation(a, b, kind, exclude_diagonal), abs=1e-10)
    assert matrix_correlation(a, a, kind=kind, exclude_diagonal=exclude_diagonal) == (
        pytest.approx(1.0)
    )


def test_pearson_and_cosine_differ_and_diagonal_matters():
    a = np.array([[10.0, 1.0], [1.0, 10.0]])
    b = np.array([[10.0, -1.0], [-1.0, 10.0]])
    assert matrix_correlation(a, b, kind="cosine") > 0.9
    assert matrix_correlation(a, b, kind="cosine", exclude_diagonal=True) == pytest.approx(-1.0)


def test_correlation_undefined_for_constant_input_is_nan():
    assert np.isnan(matrix_correlation(np.ones((3, 3)), np.eye(3)))


def test_correlation_rejects_bad_input():
    with pytest.raises(NFMInputError, match="same shape"):
        matrix_correlation(np.eye(2), np.eye(3))
    with pytest.raises(NFMInputError, match="'pearson' or 'cosine'"):
        matrix_correlation(np.eye(2), np.eye(2), kind="spearman")
    with pytest.raises(NFMInputError, match="square matrix"):
        matrix_correlation(np.ones((2, 3)), np.ones((2, 3)), exclude_diagonal=True)
