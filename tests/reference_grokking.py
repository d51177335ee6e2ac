"""Slow, obviously correct float64 references for nfm.grokking (loops, brute force)."""

from __future__ import annotations

import cmath

import numpy as np


def nearest_circulant_loop(block: np.ndarray) -> np.ndarray:
    """Average along each wrapped diagonal j - i = k (mod n), entry by entry."""
    b = np.asarray(block, dtype=np.float64)
    n = b.shape[0]
    means = [sum(b[i, (i + k) % n] for i in range(n)) / n for k in range(n)]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = means[(j - i) % n]
    return out


def nearest_hankel_loop(block: np.ndarray) -> np.ndarray:
    """Average along each wrapped anti-diagonal i + j = k (mod n), entry by entry."""
    b = np.asarray(block, dtype=np.float64)
    n = b.shape[0]
    sums = [0.0] * n
    counts = [0] * n
    for i in range(n):
        for j in range(n):
            sums[(i + j) % n] += b[i, j]
            counts[(i + j) % n] += 1
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = sums[(i + j) % n] / counts[(i + j) % n]
    return out


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b||_F / ||a||_F by explicit sums."""
    num = sum(float(x) ** 2 for x in (a - b).ravel())
    den = sum(float(x) ** 2 for x in a.ravel())
    return (num / den) ** 0.5


def modular_result_brute(op: str, a: int, b: int, p: int) -> int:
    """(a op b) mod p; division by search for c with c * b = a (mod p)."""
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    return next(c for c in range(p) if (c * b) % p == a % p)


def multiplicative_order(g: int, p: int) -> int:
    """Smallest k >= 1 with g^k = 1 (mod p), by repeated multiplication."""
    value, k = g % p, 1
    while value != 1:
        value = value * g % p
        k += 1
    return k


def dft2_entry(block: np.ndarray, k1: int, k2: int) -> complex:
    """(1/n) sum_ij B_ij exp(-2 pi i (k1 i + k2 j) / n), by a double loop."""
    n = block.shape[0]
    total = 0j
    for i in range(n):
        for j in range(n):
            total += block[i, j] * cmath.exp(-2j * cmath.pi * (k1 * i + k2 * j) / n)
    return total / n
