r"""Modular arithmetic tasks for grokking experiments.

The task is :math:`c = (a \circ b) \bmod p` for :math:`\circ \in \{+, -, \times, \div\}` and
:math:`a, b \in \{0, \dots, p-1\}` (:math:`b \neq 0` for division, where
:math:`a \div b = a\, b^{-1} \bmod p`). The input is the concatenation of two one-hot vectors,
:math:`x = [e_a; e_b] \in \{0, 1\}^{2p}`, and the target is the one-hot vector :math:`e_c`. A
random fraction of all pairs forms the training set and the rest the test set.

Multiplication and division act on the multiplicative group :math:`\mathbb{Z}_p^*`, which is
cyclic: with a primitive root :math:`g`, every non-zero residue is :math:`x = g^{\log_g x}` and
:math:`a b = g^{\log a + \log b}`. Reordering the non-zero residues by their discrete logarithm
(:func:`discrete_log_order`) turns multiplication into addition modulo :math:`p - 1`, so the
circulant structure of learned feature matrices becomes visible (:func:`feature_order`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from nfm.exceptions import NFMInputError

Operation = Literal["add", "sub", "mul", "div"]
OPERATIONS: tuple[str, ...] = ("add", "sub", "mul", "div")

__all__ = [
    "OPERATIONS",
    "ModularArithmeticDataset",
    "Operation",
    "discrete_log",
    "discrete_log_order",
    "feature_order",
    "is_prime",
    "modular_arithmetic_dataset",
    "modular_operation",
    "one_hot_pairs",
    "primitive_root",
]


def is_prime(n: int) -> bool:
    """Return whether the integer ``n`` is prime (trial division; ``n`` is small here)."""
    n = int(n)
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0:
        return False
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def _check_modulus(p: object, *, need_prime: bool, why: str = "") -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
        raise NFMInputError(f"p must be an integer >= 3; got {p!r} of type {type(p).__name__}")
    p = int(p)
    if p < 3:
        raise NFMInputError(f"p must be an integer >= 3; got p={p}")
    if need_prime and not is_prime(p):
        raise NFMInputError(f"p must be prime {why}; got p={p}, which is not prime")
    return p


def _check_operation(op: object) -> str:
    if op not in OPERATIONS:
        raise NFMInputError(f"op must be one of {', '.join(map(repr, OPERATIONS))}; got {op!r}")
    return str(op)


def _prime_factors(n: int) -> list[int]:
    factors, divisor = [], 2
    while divisor * divisor <= n:
        if n % divisor == 0:
            factors.append(divisor)
            while n % divisor == 0:
                n //= divisor
        divisor += 1
    if n > 1:
        factors.append(n)
    return factors


def primitive_root(p: int) -> int:
    r"""Smallest primitive root :math:`g` of the prime ``p``.

    :math:`g` generates the multiplicative group: :math:`g^{(p-1)/q} \not\equiv 1 \pmod p` for
    every prime factor :math:`q` of :math:`p - 1`.

    Raises
    ------
    NFMInputError
        If ``p`` is not a prime >= 3.
    """
    p = _check_modulus(p, need_prime=True, why="for a primitive root to exist in this sense")
    factors = _prime_factors(p - 1)
    for g in range(2, p):
        if all(pow(g, (p - 1) // q, p) != 1 for q in factors):
            return g
    raise AssertionError("unreachable: every prime has a primitive root")  # pragma: no cover


def discrete_log_order(p: int, root: int | None = None) -> np.ndarray:
    r"""The non-zero residues ordered by their discrete logarithm.

    Returns :math:`[g^0, g^1, \dots, g^{p-2}] \bmod p` (length :math:`p - 1`), with :math:`g`
    the smallest primitive root unless ``root`` is given. Indexing a matrix by this order maps
    multiplication of residues to addition of positions modulo :math:`p - 1`.

    Raises
    ------
    NFMInputError
        If ``p`` is not prime, or ``root`` is not a primitive root of ``p``.
    """
    p = _check_modulus(p, need_prime=True, why="for the discrete-logarithm reordering")
    if root is None:
        root = primitive_root(p)
    order = np.empty(p - 1, dtype=np.int64)
    value = 1
    for k in range(p - 1):
        order[k] = value
        value = value * int(root) % p
    if len(set(order.tolist())) != p - 1:
        raise NFMInputError(f"root must be a primitive root of p={p}; got root={root}")
    return order


def discrete_log(p: int, root: int | None = None) -> np.ndarray:
    r"""Table of discrete logarithms: ``log[x]`` with :math:`g^{\log[x]} \equiv x \pmod p`.

    Returns an integer array of length ``p``; ``log[0]`` is ``-1`` (zero has no logarithm).
    """
    order = discrete_log_order(p, root)
    table = np.full(int(p), -1, dtype=np.int64)
    table[order] = np.arange(len(order))
    return table


def modular_operation(op: str, a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    r"""Compute :math:`(a \circ b) \bmod p` elementwise.

    Division is :math:`a\, b^{p-2} \bmod p` (Fermat's little theorem), so ``p`` must be prime
    and ``b`` non-zero.
    """
    op = _check_operation(op)
    p = _check_modulus(p, need_prime=op == "div", why="for division")
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if np.any(b % p == 0):
        raise NFMInputError("division by b = 0 (mod p) is undefined; b must be non-zero")
    inverse = np.array([pow(int(v), p - 2, p) for v in range(p)], dtype=np.int64)
    return (a * inverse[b % p]) % p


def one_hot_pairs(pairs: np.ndarray, p: int, dtype: np.dtype | type = np.float64) -> np.ndarray:
    r"""Encode pairs :math:`(a, b)` as :math:`[e_a; e_b] \in \{0,1\}^{2p}`."""
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise NFMInputError(f"pairs must have shape (n, 2); got {pairs.shape}")
    out = np.zeros((pairs.shape[0], 2 * p), dtype=dtype)
    rows = np.arange(pairs.shape[0])
    out[rows, pairs[:, 0]] = 1
    out[rows, p + pairs[:, 1]] = 1
    return out


def feature_order(op: str, p: int) -> np.ndarray:
    r"""Index order under which a feature-matrix block of task ``op`` shows its structure.

    ``add`` and ``sub``: the identity order :math:`0, \dots, p-1` (structure modulo :math:`p`).
    ``mul`` and ``div``: :func:`discrete_log_order` (structure modulo :math:`p - 1`; residue 0,
    which is outside the multiplicative group, is left out).
    """
    op = _check_operation(op)
    if op in ("mul", "div"):
        return discrete_log_order(p)
    return np.arange(_check_modulus(p, need_prime=False), dtype=np.int64)


@dataclass(frozen=True)
class ModularArithmeticDataset:
    r"""A train/test split of a modular arithmetic task.

    Attributes
    ----------
    op : str
        ``"add"``, ``"sub"``, ``"mul"`` or ``"div"``.
    p : int
        The modulus.
    X_train, X_test : (n, 2p) float arrays
        One-hot inputs :math:`[e_a; e_b]`.
    y_train, y_test : (n,) int arrays
        Labels :math:`(a \circ b) \bmod p`.
    pairs_train, pairs_test : (n, 2) int arrays
        The operands :math:`(a, b)`.
    """

    op: str
    p: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    pairs_train: np.ndarray
    pairs_test: np.ndarray

    @property
    def Y_train(self) -> np.ndarray:
        """One-hot training targets, shape (n_train, p)."""
        return np.eye(self.p, dtype=self.X_train.dtype)[self.y_train]

    @property
    def Y_test(self) -> np.ndarray:
        """One-hot test targets, shape (n_test, p)."""
        return np.eye(self.p, dtype=self.X_test.dtype)[self.y_test]

    @property
    def train_fraction(self) -> float:
        """Fraction of all pairs in the training set."""
        n_train = len(self.y_train)
        return n_train / (n_train + len(self.y_test))


def modular_arithmetic_dataset(
    op: str = "add",
    p: int = 61,
    train_fraction: float = 0.5,
    seed: int | None = 0,
    *,
    dtype: np.dtype | type = np.float64,
) -> ModularArithmeticDataset:
    r"""All pairs of a modular arithmetic task, split at random into train and test.

    The pairs are :math:`(a, b)` with :math:`a \in \{0..p-1\}` and :math:`b \in \{0..p-1\}`
    (:math:`b \in \{1..p-1\}` for ``div``); :math:`\mathrm{round}(f N)` of the :math:`N` pairs,
    drawn without replacement with ``numpy.random.default_rng(seed)``, form the training set.

    Parameters
    ----------
    op : {"add", "sub", "mul", "div"}
        The operation.
    p : int
        The modulus, at least 3; must be prime for ``div``.
    train_fraction : float
        Fraction :math:`f \in (0, 1)` of pairs used for training.
    seed : int or None
        Seed of the split (``None``: fresh entropy).
    dtype : numpy dtype
        dtype of the one-hot inputs.

    Returns
    -------
    ModularArithmeticDataset

    Raises
    ------
    NFMInputError
        Unknown ``op``, ``p < 3``, non-prime ``p`` for ``div``, or ``train_fraction`` outside
        (0, 1) or leaving an empty train or test set.
    """
    op = _check_operation(op)
    p = _check_modulus(p, need_prime=op == "div", why="for op='div' (b must be invertible)")
    try:
        fraction = float(train_fraction)
    except (TypeError, ValueError):
        raise NFMInputError(
            f"train_fraction must be a number in (0, 1); got {train_fraction!r}"
        ) from None
    if not 0.0 < fraction < 1.0:
        raise NFMInputError(f"train_fraction must lie strictly between 0 and 1; got {fraction}")
    first_b = 1 if op == "div" else 0
    a, b = np.meshgrid(np.arange(p), np.arange(first_b, p), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64)
    n_pairs = len(pairs)
    n_train = round(fraction * n_pairs)
    if n_train < 1 or n_train >= n_pairs:
        raise NFMInputError(
            f"train_fraction={fraction} gives {n_train} training pairs out of {n_pairs}; "
            "both the train and the test set must be non-empty"
        )
    permutation = np.random.default_rng(seed).permutation(n_pairs)
    train_pairs = pairs[np.sort(permutation[:n_train])]
    test_pairs = pairs[np.sort(permutation[n_train:])]
    labels_train = modular_operation(op, train_pairs[:, 0], train_pairs[:, 1], p)
    labels_test = modular_operation(op, test_pairs[:, 0], test_pairs[:, 1], p)
    return ModularArithmeticDataset(
        op=op,
        p=p,
        X_train=one_hot_pairs(train_pairs, p, dtype),
        y_train=labels_train,
        X_test=one_hot_pairs(test_pairs, p, dtype),
        y_test=labels_test,
        pairs_train=train_pairs,
        pairs_test=test_pairs,
    )
