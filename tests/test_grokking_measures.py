"""Tests of nfm.grokking.data and nfm.grokking.measures against loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_grokking import (
    dft2_entry,
    modular_result_brute,
    multiplicative_order,
    nearest_circulant_loop,
    nearest_hankel_loop,
    relative_distance,
)

from nfm.exceptions import NFMInputError
from nfm.grokking import (
    agop_alignment,
    circulant_deviation,
    discrete_log,
    discrete_log_order,
    feature_block,
    feature_order,
    fourier_spectrum,
    hankel_deviation,
    is_prime,
    modular_arithmetic_dataset,
    nearest_circulant,
    nearest_hankel,
    primitive_root,
    structure_deviation,
)


def circulant(c: np.ndarray) -> np.ndarray:
    n = len(c)
    return np.array([[c[(j - i) % n] for j in range(n)] for i in range(n)])


def hankel(h: np.ndarray) -> np.ndarray:
    n = len(h)
    return np.array([[h[(i + j) % n] for j in range(n)] for i in range(n)])


# ----------------------------------------------------------------------------------- data
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("p", [5, 11, 13])
def test_dataset_labels_and_encoding(op, p):
    data = modular_arithmetic_dataset(op, p, 0.6, seed=3)
    pairs = np.concatenate([data.pairs_train, data.pairs_test])
    labels = np.concatenate([data.y_train, data.y_test])
    n_expected = p * (p - 1) if op == "div" else p * p
    assert len(pairs) == n_expected
    assert len({tuple(pair) for pair in pairs.tolist()}) == n_expected  # every pair once
    if op == "div":
        assert np.all(pairs[:, 1] != 0)
    for (a, b), c in zip(pairs.tolist(), labels.tolist(), strict=True):
        assert c == modular_result_brute(op, a, b, p)
    X = np.concatenate([data.X_train, data.X_test])
    assert X.shape == (n_expected, 2 * p)
    assert np.all(X.sum(axis=1) == 2)
    assert np.all(X[np.arange(len(X)), pairs[:, 0]] == 1)
    assert np.all(X[np.arange(len(X)), p + pairs[:, 1]] == 1)
    assert data.Y_train.shape == (len(data.y_train), p)
    assert np.all(data.Y_train.argmax(axis=1) == data.y_train)
    assert len(data.y_train) == round(0.6 * n_expected)


def test_dataset_split_is_seeded():
    a = modular_arithmetic_dataset("add", 11, 0.5, seed=1)
    b = modular_arithmetic_dataset("add", 11, 0.5, seed=1)
    c = modular_arithmetic_dataset("add", 11, 0.5, seed=2)
    assert np.array_equal(a.pairs_train, b.pairs_train)
    assert not np.array_equal(a.pairs_train, c.pairs_train)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"op": "add", "p": 2}, "p must be an integer >= 3"),
        ({"op": "add", "p": -5}, "p must be an integer >= 3"),
        ({"op": "add", "p": 7.5}, "p must be an integer"),
        ({"op": "pow", "p": 7}, "op must be one of"),
        ({"op": "div", "p": 9}, "p must be prime"),
        ({"op": "add", "p": 7, "train_fraction": 0.0}, "strictly between 0 and 1"),
        ({"op": "add", "p": 7, "train_fraction": 1.0}, "strictly between 0 and 1"),
        ({"op": "add", "p": 7, "train_fraction": 1.5}, "strictly between 0 and 1"),
        ({"op": "add", "p": 7, "train_fraction": "half"}, "must be a number"),
        ({"op": "add", "p": 7, "train_fraction": 0.001}, "must be non-empty"),
    ],
)
def test_dataset_bad_input(kwargs, message):
    with pytest.raises(NFMInputError, match=message):
        modular_arithmetic_dataset(**kwargs)


def test_add_and_sub_accept_composite_modulus():
    data = modular_arithmetic_dataset("sub", 9, 0.5)
    assert data.X_train.shape[1] == 18


@pytest.mark.parametrize("p", [3, 5, 7, 11, 13, 17, 61, 97])
def test_primitive_root_and_discrete_log(p):
    g = primitive_root(p)
    assert multiplicative_order(g, p) == p - 1
    order = discrete_log_order(p)
    assert sorted(order.tolist()) == list(range(1, p))
    for k, value in enumerate(order.tolist()):
        assert value == pow(g, k, p)
    table = discrete_log(p)
    assert table[0] == -1
    assert all(pow(g, int(table[x]), p) == x for x in range(1, p))


def test_reordering_needs_a_prime_and_a_primitive_root():
    assert not is_prime(1) and not is_prime(9) and is_prime(2) and is_prime(61)
    with pytest.raises(NFMInputError, match="must be prime"):
        discrete_log_order(15)
    with pytest.raises(NFMInputError, match="must be prime"):
        feature_order("mul", 12)
    with pytest.raises(NFMInputError, match="primitive root"):
        discrete_log_order(7, root=2)  # 2 has order 3 mod 7
    assert np.array_equal(feature_order("add", 12), np.arange(12))


@pytest.mark.parametrize("op", ["mul", "div"])
def test_discrete_log_order_turns_the_table_into_a_shifted_table(op):
    # In log order, (g^i o g^j) has log (i +- j) mod (p - 1): a circulant/Hankel label table.
    p = 13
    order = discrete_log_order(p)
    log = discrete_log(p)
    table = np.array(
        [[log[modular_result_brute(op, int(a), int(b), p)] for b in order] for a in order]
    )
    if op == "mul":  # table[i, j] = (i + j) mod (p - 1): Hankel
        assert np.array_equal(table, hankel(np.arange(p - 1)))
    else:  # table[i, j] = (i - j) mod (p - 1): circulant in (j - i) up to a reversal
        assert np.array_equal(table, circulant((-np.arange(p - 1)) % (p - 1)))


# ------------------------------------------------------------------------------- measures
@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_nearest_structures_match_loops(n):
    block = np.random.default_rng(n).normal(size=(n, n))
    np.testing.assert_allclose(nearest_circulant(block), nearest_circulant_loop(block), atol=1e-12)
    np.testing.assert_allclose(nearest_hankel(block), nearest_hankel_loop(block), atol=1e-12)
    assert circulant_deviation(block) == pytest.approx(
        relative_distance(block, nearest_circulant_loop(block)), abs=1e-12
    )
    assert hankel_deviation(block) == pytest.approx(
        relative_distance(block, nearest_hankel_loop(block)), abs=1e-12
    )


def test_exact_circulant_and_hankel():
    c = np.random.default_rng(0).normal(size=11)
    C, H = circulant(c), hankel(c)
    assert circulant_deviation(C) < 1e-14
    assert hankel_deviation(H) < 1e-14
    assert hankel_deviation(C) > 0.5 and circulant_deviation(H) > 0.5
    result = structure_deviation(H)
    assert result.kind == "hankel" and result.value < 1e-14
    assert structure_deviation(C).kind == "circulant"
    assert result.as_dict()["structure"] == "hankel"
    # Hankel = circulant with the column index reversed (j -> -j mod n)
    reverse = (-np.arange(11)) % 11
    assert circulant_deviation(H[:, reverse]) < 1e-14


def test_random_matrix_deviation_is_near_one():
    # For i.i.d. entries the circulant part carries about 1/n of the energy.
    n = 40
    block = np.random.default_rng(1).normal(size=(n, n))
    assert circulant_deviation(block) == pytest.approx(np.sqrt(1 - 1 / n), abs=0.03)
    assert hankel_deviation(block) == pytest.approx(np.sqrt(1 - 1 / n), abs=0.03)


def test_zero_block_is_undefined_and_bad_blocks_raise():
    assert np.isnan(circulant_deviation(np.zeros((4, 4))))
    with pytest.raises(NFMInputError, match="square"):
        circulant_deviation(np.ones((3, 4)))
    with pytest.raises(NFMInputError, match="NaN"):
        hankel_deviation(np.full((3, 3), np.nan))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 9),
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    shift=st.integers(0, 8),
)
def test_deviation_properties(n, seed, scale, shift):
    rng = np.random.default_rng(seed)
    block = rng.normal(size=(n, n))
    dev = circulant_deviation(block)
    assert 0.0 <= dev <= 1.0 + 1e-12
    # scale invariant; invariant to shifting rows and columns together (a relabelling of Z_n)
    assert circulant_deviation(scale * block) == pytest.approx(dev, abs=1e-10)
    roll = (np.arange(n) + shift) % n
    assert circulant_deviation(block[np.ix_(roll, roll)]) == pytest.approx(dev, abs=1e-10)
    # the projection is idempotent and orthogonal: Pythagoras
    near = nearest_circulant(block)
    np.testing.assert_allclose(nearest_circulant(near), near, atol=1e-12)
    total = np.sum(block**2)
    assert np.sum(near**2) + np.sum((block - near) ** 2) == pytest.approx(total, rel=1e-10)
    # Fourier: the circulant line carries 1 - dev^2 of the energy (Parseval)
    spectrum = fourier_spectrum(block)
    assert spectrum.circulant_energy_fraction == pytest.approx(1 - dev**2, abs=1e-10)
    assert spectrum.hankel_energy_fraction == pytest.approx(
        1 - hankel_deviation(block) ** 2, abs=1e-10
    )


def test_fourier_spectrum_matches_loop_and_circulant_eigenvalues():
    n = 7
    rng = np.random.default_rng(2)
    block = rng.normal(size=(n, n))
    spectrum = fourier_spectrum(block)
    for k1 in range(n):
        for k2 in range(n):
            assert spectrum.magnitude[k1, k2] == pytest.approx(abs(dft2_entry(block, k1, k2)))
    c = rng.normal(size=n)
    C = circulant(c)
    spectrum = fourier_spectrum(C)
    eigen_magnitudes = np.sort(np.abs(np.linalg.eigvals(C)))
    np.testing.assert_allclose(np.sort(spectrum.circulant), eigen_magnitudes, atol=1e-10)
    assert spectrum.circulant_energy_fraction == pytest.approx(1.0)
    assert fourier_spectrum(hankel(c)).hankel_energy_fraction == pytest.approx(1.0)


def test_feature_block_and_kinds():
    p = 5
    M = np.arange(4 * p * p, dtype=float).reshape(2 * p, 2 * p)
    np.testing.assert_array_equal(feature_block(M, p, block="ab"), M[:p, p:])
    np.testing.assert_array_equal(feature_block(M, p, block="bb"), M[p:, p:])
    order = discrete_log_order(p)
    np.testing.assert_array_equal(
        feature_block(M, p, op="mul", block="ab"), M[np.ix_(order, p + order)]
    )
    np.testing.assert_array_equal(feature_block(M, p, op="mul", reorder=False), M[:p, p:])
    out = feature_block(torch.as_tensor(M), p)
    assert isinstance(out, torch.Tensor)
    assert isinstance(nearest_circulant(torch.ones(3, 3)), torch.Tensor)
    with pytest.raises(NFMInputError, match="2p x 2p"):
        feature_block(M, 4)
    with pytest.raises(NFMInputError, match="block must be"):
        feature_block(M, p, block="xy")


def test_agop_alignment():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(6, 6))
    A = A @ A.T
    assert agop_alignment(A, 3.0 * A) == pytest.approx(1.0)
    B = rng.normal(size=(6, 6))
    B = B @ B.T
    expected = np.sum(A * B) / np.linalg.norm(A) / np.linalg.norm(B)
    assert agop_alignment(A, B) == pytest.approx(expected)
    assert agop_alignment(torch.as_tensor(A), torch.as_tensor(B)) == pytest.approx(expected)


def test_command_line_lists_the_same_operations():
    from nfm.cli.grokking import OPERATIONS as command_line_operations
    from nfm.grokking import OPERATIONS

    assert command_line_operations == OPERATIONS
