r"""What a kernel ridge solver guarantees, checked against float64 eigendecomposition references.

The system actually solved is :math:`A a = Y` with :math:`A = K + s I`, :math:`s` the
solver's reported ``diagonal_shift`` (``reg``, plus the Cholesky jitter). Coefficients of an
ill-conditioned system are NOT compared entry by entry (which entry agrees depends on the
LAPACK build); instead, with :math:`u` the unit roundoff of the working dtype:

* backward error (Rigal--Gaches, normwise):
  :math:`\eta = \lVert A a - Y\rVert_F / (\lVert A\rVert_2 \lVert a\rVert_F + \lVert Y\rVert_F)
  \le c\, n\, u` for a backward-stable direct solver;
* forward error: :math:`\lVert a - a^*\rVert_F / \lVert a^*\rVert_F \le c\, n\, u\,
  \kappa_2(A)` (first order: forward error <= condition number x backward error);
* fitted values :math:`K a`: since :math:`K (a - a^*) = K A^{-1} (r^* - r)` with
  :math:`r = Y - A a` and :math:`\lVert K A^{-1}\rVert_2 = \max_i \lambda_i / (\lambda_i + s)
  \le 1` (PSD ``K``, :math:`s \ge 0`),
  :math:`\lVert K a - K a^*\rVert_F \le \lVert r\rVert_F + \lVert r^*\rVert_F`, both bounded by
  the backward error: well conditioned even when :math:`a` is not.

For an iterative solver stopped at true relative residual :math:`\rho = \max_c \lVert r_c\rVert
/ \lVert y_c\rVert` the same identities give the rigorous
:math:`\lVert a - a^*\rVert / \lVert a^*\rVert \le \kappa_2(A)\, \rho` (plus the reference's own
error).

The reference :math:`a^* = V (\Lambda + s I)^{-1} V^T Y` comes from ``numpy.linalg.eigh`` in
float64: no Cholesky, no LU, so it shares no code path with the solvers under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: the constant c of the bounds c n u above. Higham's bound for Cholesky solves is
#: ~ n * gamma_{3n+1}; in practice the backward error is a few u, so c = 10 leaves a wide margin
#: while a wrong shift (e.g. jitter 1e-10 reported as 1e-8) is caught by orders of magnitude.
C_BOUND = 10.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """:math:`u = \\epsilon / 2` of a torch floating dtype."""
    return torch.finfo(dtype).eps / 2


def as_float64(t) -> np.ndarray:
    """A tensor or array as a float64 numpy array, (n, c)-shaped if it was a vector."""
    a = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


@dataclass
class ShiftedSystem:
    """:math:`A = K + s I` in float64 with its eigendecomposition (the reference)."""

    K: np.ndarray
    Y: np.ndarray
    shift: float
    eigenvalues: np.ndarray  # of A
    eigenvectors: np.ndarray

    @classmethod
    def build(cls, K, Y, shift: float) -> ShiftedSystem:
        K64 = as_float64(K)
        # a kernel Gram matrix may be asymmetric by a rounding error; the solvers read one
        # triangle, so the system is defined up to that (far below the bounds checked here)
        K64 = (K64 + K64.T) / 2
        values, vectors = np.linalg.eigh(K64)
        return cls(K64, as_float64(Y), float(shift), values + float(shift), vectors)

    @property
    def n(self) -> int:
        return self.K.shape[0]

    @property
    def A(self) -> np.ndarray:
        return self.K + self.shift * np.eye(self.n)

    @property
    def norm(self) -> float:
        """:math:`\\lVert A\\rVert_2`."""
        return float(np.abs(self.eigenvalues).max())

    @property
    def condition(self) -> float:
        """:math:`\\kappa_2(A)`; requires A positive definite (up to the eigensolver's error)."""
        smallest = self.eigenvalues.min()
        assert smallest > 0, f"A is not positive definite: smallest eigenvalue {smallest:.3g}"
        return float(self.eigenvalues.max() / smallest)

    def reference(self) -> np.ndarray:
        """:math:`a^* = V (\\Lambda + s I)^{-1} V^T Y`."""
        V = self.eigenvectors
        return V @ ((V.T @ self.Y) / self.eigenvalues[:, None])

    def residual(self, a) -> np.ndarray:
        return self.Y - self.A @ as_float64(a)

    def backward_error(self, a) -> float:
        a = as_float64(a)
        denominator = self.norm * np.linalg.norm(a) + np.linalg.norm(self.Y)
        return float(np.linalg.norm(self.residual(a)) / denominator)

    def relative_residual(self, a) -> float:
        """:math:`\\max_c \\lVert y_c - A a_c\\rVert / \\lVert y_c\\rVert` (float64)."""
        r = np.linalg.norm(self.residual(a), axis=0)
        return float((r / np.linalg.norm(self.Y, axis=0)).max())

    def forward_error(self, a) -> float:
        ref = self.reference()
        return float(np.linalg.norm(as_float64(a) - ref) / np.linalg.norm(ref))

    def fitted_value_error(self, a) -> float:
        """:math:`\\lVert K a - K a^*\\rVert_F`."""
        return float(np.linalg.norm(self.K @ (as_float64(a) - self.reference())))


def assert_backward_stable(system: ShiftedSystem, a, dtype: torch.dtype) -> float:
    """Backward error <= c n u; returns the backward error."""
    eta = system.backward_error(a)
    bound = C_BOUND * system.n * unit_roundoff(dtype)
    assert eta <= bound, f"backward error {eta:.3g} > c n u = {bound:.3g}"
    return eta


def assert_forward_error_within_condition(system: ShiftedSystem, a, dtype: torch.dtype) -> float:
    """Forward error <= c n u kappa(A) (+ the float64 reference's own error); returns it."""
    error = system.forward_error(a)
    n, kappa = system.n, system.condition
    bound = C_BOUND * n * (unit_roundoff(dtype) + unit_roundoff(torch.float64)) * kappa
    assert error <= bound, (
        f"forward error {error:.3g} > c n u kappa = {bound:.3g} (kappa {kappa:.3g})"
    )
    return error


def assert_fitted_values_agree(system: ShiftedSystem, a, dtype: torch.dtype) -> float:
    """||K a - K a*|| <= c n u (||A|| ||a|| + ||Y||) for a and a* (both backward stable)."""
    a = as_float64(a)
    error = system.fitted_value_error(a)
    scale = system.norm * max(np.linalg.norm(a), np.linalg.norm(system.reference()))
    scale += np.linalg.norm(system.Y)
    bound = C_BOUND * system.n * (unit_roundoff(dtype) + unit_roundoff(torch.float64)) * scale
    assert error <= bound, f"fitted values differ by {error:.3g} > {bound:.3g}"
    return error


def assert_direct_solve_guarantees(K, Y, result, dtype: torch.dtype) -> ShiftedSystem:
    """All three checks for a direct solve, on the system the result says it solved."""
    system = ShiftedSystem.build(K, Y, result.diagonal_shift)
    assert_backward_stable(system, result.coef, dtype)
    assert_forward_error_within_condition(system, result.coef, dtype)
    assert_fitted_values_agree(system, result.coef, dtype)
    return system


def assert_reported_residual_is_true(system: ShiftedSystem, result) -> float:
    """The reported relative residual equals the float64 one of the returned coef.

    Both are float64 computations of the same quantity; they differ by the rounding of the
    products, at most about n u_64 (||A||_F ||a|| + ||Y||) / min_c ||y_c||.
    """
    true = system.relative_residual(result.coef)
    a = as_float64(result.coef)
    rounding = (
        system.n
        * unit_roundoff(torch.float64)
        * (np.linalg.norm(system.A) * np.linalg.norm(a) + np.linalg.norm(system.Y))
    )
    rounding /= np.linalg.norm(system.Y, axis=0).min()
    assert abs(result.relative_residual - true) <= 1e-9 * true + 10 * rounding, (
        f"reported residual {result.relative_residual:.6g} but the true one is {true:.6g}"
    )
    return true


def assert_iterative_solve_guarantees(K, Y, result, tol: float) -> ShiftedSystem:
    """An iterative result: residual reported truthfully, converged iff it is <= tol, and the
    forward error and fitted values bounded by the residual."""
    system = ShiftedSystem.build(K, Y, result.diagonal_shift)
    true = assert_reported_residual_is_true(system, result)
    assert result.converged == (true <= tol), (result.converged, true, tol)
    kappa = system.condition
    error = system.forward_error(result.coef)
    reference_error = C_BOUND * system.n * unit_roundoff(torch.float64) * kappa
    # ||a - a*|| <= ||A^-1|| ||r||_F <= kappa ||r||_F / ||Y||_F ... per column, so the max
    # column residual bounds the Frobenius ratio
    bound = kappa * true * 1.001 + reference_error
    assert error <= bound, f"forward error {error:.3g} > kappa * residual = {bound:.3g}"
    r = np.linalg.norm(system.residual(result.coef))
    reference_r = np.linalg.norm(system.residual(system.reference()))
    a, ref = as_float64(result.coef), system.reference()
    rounding = 4 * system.n * unit_roundoff(torch.float64)
    rounding *= system.norm * (np.linalg.norm(a) + np.linalg.norm(ref)) + np.linalg.norm(system.Y)
    assert system.fitted_value_error(result.coef) <= r + reference_r + rounding
    return system
