"""Neural collapse measures against hand-computed cases and their invariances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm.exceptions import NFMInputError
from nfm.probes import neural_collapse, neural_collapse_by_layer


def simplex_etf(K: int, d: int, seed: int) -> np.ndarray:
    """K unit vectors in R^d with pairwise cosines -1/(K-1), randomly rotated."""
    centred = np.eye(K) - 1.0 / K
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return np.pad(centred, ((0, 0), (0, d - K))) @ rotation


def test_perfectly_collapsed_features_have_nc1_zero():
    means = np.random.default_rng(0).standard_normal((3, 5))
    y = np.repeat(np.arange(3), 4)
    result = neural_collapse(means[y], y)
    assert result.nc1 == pytest.approx(0.0, abs=1e-14)
    assert result.within_trace == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("K", [2, 3, 4])
def test_simplex_etf_means_have_nc2_zero(K):
    d = 6
    means = 3.0 * simplex_etf(K, d, seed=K) + 5.0  # any offset: the global mean is removed
    y = np.repeat(np.arange(K), 10)
    noise = np.random.default_rng(1).standard_normal((y.size, d)) * 0.1
    noise -= np.stack([noise[y == k].mean(axis=0) for k in range(K)])[y]  # class means exact
    result = neural_collapse(means[y] + noise, y)
    assert result.nc2 == pytest.approx(0.0, abs=1e-12)
    assert result.equinorm == pytest.approx(0.0, abs=1e-12)
    assert result.equiangularity == pytest.approx(0.0, abs=1e-12)
    assert result.nc1 > 0


def test_one_dimensional_case_by_hand():
    # class 0 at -1 +- a, class 1 at +1 +- a: Sigma_W = a^2, Sigma_B = 1, NC1 = a^2 / 2
    a = 0.3
    H = np.array([[-1 - a], [-1 + a], [1 - a], [1 + a]])
    y = np.array([0, 0, 1, 1])
    result = neural_collapse(H, y)
    assert result.nc1 == pytest.approx(a**2 / 2, rel=1e-12)
    assert result.within_trace == pytest.approx(a**2, rel=1e-12)
    assert result.between_trace == pytest.approx(1.0, rel=1e-12)


def test_two_classes_in_many_dimensions_by_hand():
    # K = 2, equal sizes: centred means +-u, Sigma_B = u u^T, NC1 = u^T Sigma_W u / |u|^4 / 2;
    # a large common offset and d >> K leave rounding noise in the d - 1 null directions
    rng = np.random.default_rng(4)
    d = 60
    u = 1e-3 * rng.standard_normal(d)
    y = np.repeat([0, 1], 40)
    noise = 1e-2 * rng.standard_normal((80, d))
    noise -= np.stack([noise[y == k].mean(axis=0) for k in (0, 1)])[y]
    H = 1e4 + np.where(y[:, None] == 1, u, -u) + noise
    within = noise.T @ noise / 80
    expected = u @ within @ u / (u @ u) ** 2 / 2
    assert neural_collapse(H, y).nc1 == pytest.approx(expected, rel=1e-6)


def test_unequal_means_by_hand():
    # centred class means (2, 0), (-1, 1), (-1, -1): norms 2, sqrt 2, sqrt 2
    means = np.array([[2.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    y = np.arange(3)
    result = neural_collapse(means, y)
    norms = np.array([2.0, np.sqrt(2), np.sqrt(2)])
    assert result.equinorm == pytest.approx(norms.std() / norms.mean(), rel=1e-12)
    cos01 = (2 * -1 + 0) / (2 * np.sqrt(2))  # = cos02
    cos12 = 0.0
    expected_angle = (2 * abs(cos01 + 0.5) * 2 + 2 * abs(cos12 + 0.5)) / 6
    assert result.equiangularity == pytest.approx(expected_angle, rel=1e-12)
    gram = means @ means.T
    etf = (np.eye(3) - 1 / 3) / np.sqrt(2)
    assert result.nc2 == pytest.approx(np.linalg.norm(gram / np.linalg.norm(gram) - etf))
    assert result.nc2 > 0.1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0), K=st.integers(2, 4))
def test_measures_are_invariant_to_rotation_scale_and_shift(seed, scale, K):
    rng = np.random.default_rng(seed)
    d = 5
    y = np.repeat(np.arange(K), 6)
    H = rng.standard_normal((y.size, d)) + 2 * rng.standard_normal((K, d))[y]
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = neural_collapse(H, y)
    b = neural_collapse(scale * H @ rotation + rng.standard_normal(d), y)
    for name in ("nc1", "nc2", "equinorm", "equiangularity"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-6, abs=1e-9)


def test_by_layer_keeps_the_order():
    y = np.repeat([0, 1], 3)
    rng = np.random.default_rng(0)
    layers = {"b": rng.standard_normal((6, 2)), "a": rng.standard_normal((6, 2))}
    assert list(neural_collapse_by_layer(layers, y)) == ["b", "a"]


def test_bad_inputs_are_refused():
    H = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(NFMInputError, match="2 classes"):
        neural_collapse(H, np.zeros(6))
    with pytest.raises(NFMInputError, match="shape"):
        neural_collapse(H, np.zeros(5))
    with pytest.raises(NFMInputError, match="coincide"):
        neural_collapse(np.ones((6, 3)), np.repeat([0, 1], 3))
    with pytest.raises(NFMInputError, match="NaN"):
        neural_collapse(np.full((6, 3), np.nan), np.repeat([0, 1], 3))
    with pytest.raises(NFMInputError, match="empty"):
        neural_collapse_by_layer({}, np.zeros(3))
