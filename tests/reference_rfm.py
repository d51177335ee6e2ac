"""Slow, obviously correct float64 references for the RFM code (kernels, ridge, LOO, AGOP).

Everything here builds explicit pairwise-difference tensors and loops; it is meant for tiny
problems in tests only.
"""

from __future__ import annotations

import numpy as np
import torch


def reference_kernel(
    X: torch.Tensor,
    Z: torch.Tensor,
    M: torch.Tensor,
    kind: str,
    bandwidth: float,
    exponent: float = 1.0,
    kernel_power: float = 1.0,
) -> torch.Tensor:
    """Kernel matrix from explicit differences u = x - z (differentiable in X)."""
    diff = X[:, None, :] - Z[None, :, :]
    if kind in ("laplace", "gaussian"):
        sq = torch.einsum("abi,ij,abj->ab", diff, M, diff)
        if kind == "gaussian":
            return torch.exp(-sq / (2 * bandwidth**2))
        return torch.exp(-torch.sqrt(sq) / bandwidth)
    eigvals, eigvecs = torch.linalg.eigh(M)
    root = eigvecs @ torch.diag(eigvals.clamp(min=0).sqrt()) @ eigvecs.T
    u = diff @ root
    p = exponent
    q = exponent if kind == "product_laplace" else kernel_power
    r = (u.abs() ** p).sum(-1) ** (1.0 / p)
    return torch.exp(-(r**q) / bandwidth**q)


def reference_gradients(X, Z, M, coef, kind, bandwidth, exponent=1.0, kernel_power=1.0):
    """Per-point autograd Jacobians of f(x) = k(x, Z) @ coef, shape (b, c, d).

    Centres equal to x (self and duplicate rows) are left out of the sum: the Laplace-type
    kernels are not differentiable there, and the library drops those terms by convention.
    """
    out = []
    for x in X:
        keep = ~(Z == x).all(dim=1)

        def f(v, keep=keep):
            values = reference_kernel(v[None], Z[keep], M, kind, bandwidth, exponent, kernel_power)
            return values[0] @ coef[keep]

        out.append(torch.autograd.functional.jacobian(f, x.clone()))
    return torch.stack(out)


def reference_agop(grads: torch.Tensor, centered: bool = False) -> torch.Tensor:
    """(1/m) sum_x sum_c g g^T from a (m, c, d) gradient tensor, by an explicit loop."""
    m, c, d = grads.shape
    if centered:
        grads = grads - grads.mean(dim=0, keepdim=True)
    G = torch.zeros(d, d, dtype=grads.dtype)
    for i in range(m):
        for j in range(c):
            G += torch.outer(grads[i, j], grads[i, j])
    return G / m


def reference_kernel_ridge(K: np.ndarray, Y: np.ndarray, reg: float) -> np.ndarray:
    """Coefficients (K + reg I)^{-1} Y with numpy's general solver."""
    return np.linalg.solve(K + reg * np.eye(K.shape[0]), Y)


def brute_force_loo_predictions(K: np.ndarray, Y: np.ndarray, reg: float) -> np.ndarray:
    """Leave-one-out predictions: refit without row i, predict row i, for every i."""
    n = K.shape[0]
    preds = np.zeros_like(Y, dtype=np.float64)
    for i in range(n):
        keep = np.arange(n) != i
        coef = np.linalg.solve(K[np.ix_(keep, keep)] + reg * np.eye(n - 1), Y[keep])
        preds[i] = K[i, keep] @ coef
    return preds
