"""Bad input to the public solvers raises NFMInputError naming the argument, shape or value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nfm.exceptions import NFMInputError
from nfm.solvers import (
    cholesky_solve,
    conjugate_gradient_solve,
    resolve_solver,
    solve_kernel_system,
)


def _good(n: int = 6, c: int = 2):
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return B @ B.T + torch.eye(n, dtype=torch.float64), torch.randn(n, c, dtype=torch.float64)


def _cholesky(K, Y, reg):
    return cholesky_solve(K, Y, reg)


def _cg(K, Y, reg):
    return conjugate_gradient_solve(K, Y, reg)


def _dispatch_cholesky(K, Y, reg):
    return solve_kernel_system(K, Y, reg, solver="cholesky")


def _dispatch_cg(K, Y, reg):
    return solve_kernel_system(K, Y, reg, solver="cg")


SOLVERS = [_cholesky, _cg, _dispatch_cholesky, _dispatch_cg]


def _with_nan(t: torch.Tensor, index) -> torch.Tensor:
    t = t.clone()
    t[index] = float("nan")
    return t


K_GOOD, Y_GOOD = _good()
NAN_K, NAN_Y = _with_nan(K_GOOD, (2, 3)), _with_nan(Y_GOOD, (5, 1))
INF_K = torch.full_like(K_GOOD, float("inf"))
#: (id, K, Y, reg, the message expected: a regular expression)
BAD_SYSTEMS = [
    ("K 5x6", K_GOOD[:5], Y_GOOD, 0.1, r"K must be a square matrix; got shape \(5, 6\)"),
    ("K 1-D", K_GOOD[0], Y_GOOD, 0.1, r"K must be a square matrix; got shape \(6,\)"),
    ("K numpy", K_GOOD.numpy(), Y_GOOD, 0.1, r"K must be a torch.Tensor; got ndarray"),
    ("K int", K_GOOD.long(), Y_GOOD, 0.1, r"K must have a real floating dtype; got torch.int64"),
    ("Y rows", K_GOOD, Y_GOOD[:4], 0.1, r"Y has 4 rows \(shape \(4, 2\)\) but K is 6 x 6"),
    (
        "Y 3-D",
        K_GOOD,
        Y_GOOD[None],
        0.1,
        r"Y must be a vector \(n,\) or a matrix \(n, c\); got 3-D",
    ),
    ("Y list", K_GOOD, [1.0] * 6, 0.1, r"Y must be a torch.Tensor; got list"),
    ("reg<0", K_GOOD, Y_GOOD, -1.0, r"reg must be a finite number >= 0; got -1.0"),
    ("reg nan", K_GOOD, Y_GOOD, float("nan"), r"reg must be a finite number >= 0; got nan"),
    ("reg inf", K_GOOD, Y_GOOD, float("inf"), r"reg must be a finite number >= 0; got inf"),
    ("reg str", K_GOOD, Y_GOOD, "0.1", r"reg must be a real number >= 0; got str '0.1'"),
    (
        "K nan",
        NAN_K,
        Y_GOOD,
        0.1,
        r"K must be finite; got 1 NaN/inf entries of 36 \(shape \(6, 6\); first at index \(2, 3\)",
    ),
    ("K inf", INF_K, Y_GOOD, 0.1, r"K must be finite; got 36 NaN/inf entries of 36"),
    (
        "Y nan",
        K_GOOD,
        NAN_Y,
        0.1,
        r"Y must be finite; got 1 NaN/inf entries of 12 \(shape \(6, 2\); first at index \(5, 1\)",
    ),
]


@pytest.mark.parametrize("solve", SOLVERS)
@pytest.mark.parametrize(
    ("K", "Y", "reg", "message"),
    [case[1:] for case in BAD_SYSTEMS],
    ids=[c[0] for c in BAD_SYSTEMS],
)
def test_bad_systems_raise_a_clear_input_error(solve, K, Y, reg, message):
    with pytest.raises(NFMInputError, match=message):
        solve(K, Y, reg)


def test_reg_accepts_numpy_and_zero_dim_torch_scalars():
    K, Y = _good()
    a = cholesky_solve(K, Y, np.float32(0.5)).coef
    b = cholesky_solve(K, Y, torch.tensor(0.5)).coef
    c = cholesky_solve(K, Y, 0.5).coef
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    torch.testing.assert_close(b, c, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tol": 0.0}, r"tol must be a finite number > 0; got 0.0"),
        ({"tol": float("nan")}, r"tol must be a finite number > 0; got nan"),
        ({"tol": "small"}, r"tol must be a real number > 0 or None; got 'small'"),
        ({"max_iter": -1}, r"max_iter must be an integer >= 0; got -1"),
        ({"max_iter": 2.5}, r"max_iter must be an integer >= 0; got 2.5"),
        ({"preconditioner_rank": -3}, r"preconditioner_rank must be an integer >= 0; got -3"),
        ({"generator": 0}, r"generator must be a torch.Generator or None; got int"),
        ({"initial": torch.zeros(5, 2)}, r"initial must have Y's shape \(6, 2\); got shape \(5,"),
        ({"initial": torch.zeros(12)}, r"initial must have Y's shape \(6, 2\); got shape \(12,\)"),
        ({"initial": np.zeros((6, 2))}, r"initial must be a torch.Tensor or None; got ndarray"),
        ({"initial": torch.full((6, 2), float("inf"))}, r"initial must be finite"),
    ],
)
def test_bad_conjugate_gradient_options_raise_a_clear_input_error(options, message):
    K, Y = _good()
    with pytest.raises(NFMInputError, match=message):
        conjugate_gradient_solve(K, Y, 0.1, **options)


def test_bad_cholesky_options_raise_a_clear_input_error():
    K, Y = _good()
    with pytest.raises(NFMInputError, match=r"rebuild must be callable or None; got int"):
        cholesky_solve(K, Y, 0.1, rebuild=3)
    with pytest.raises(NFMInputError, match=r"needs a contiguous K; got strides \(1, 6\)"):
        cholesky_solve(K.T, Y, 0.1, overwrite=True)


@pytest.mark.parametrize(
    ("solver", "n", "message"),
    [
        ("lu", 10, r"solver must be 'auto', 'cholesky' or 'cg'; got 'lu'"),
        (None, 10, r"solver must be 'auto', 'cholesky' or 'cg'; got None"),
        ("auto", -1, r"n must be an integer >= 0; got -1"),
        ("auto", 2.0, r"n must be an integer >= 0; got 2.0"),
    ],
)
def test_resolve_solver_rejects_bad_arguments(solver, n, message):
    with pytest.raises(NFMInputError, match=message):
        resolve_solver(solver, n)


def test_solve_kernel_system_rejects_a_non_tensor_before_choosing_a_solver():
    with pytest.raises(NFMInputError, match=r"K must be a torch\.Tensor; got list"):
        solve_kernel_system([[1.0]], torch.ones(1, 1), 0.1)


def test_a_valid_system_with_an_integer_right_hand_side_is_accepted():
    K, _ = _good()
    Y = torch.arange(6)
    result = cholesky_solve(K, Y, 0.1)
    assert result.coef.dtype == torch.float64 and result.coef.shape == (6,)
    expected = np.linalg.solve(K.numpy() + 0.1 * np.eye(6), np.arange(6.0))
    # K + 0.1 I is well conditioned here (condition < 1e3): a normwise check suffices
    assert np.linalg.norm(result.coef.numpy() - expected) <= 1e-10 * np.linalg.norm(expected)
