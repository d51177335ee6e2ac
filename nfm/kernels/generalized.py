r"""Generalised and product Laplace kernels in a learned metric.

With :math:`S = M^{1/2}`, :math:`u = S(x - z)` and :math:`r = \lVert u\rVert_p`:

* :class:`GeneralizedLaplaceKernel`: :math:`k(x, z) = \exp(-r^q / L^q)`,
  :math:`\nabla_x k = -\frac{q}{L^q} k\, r^{q-p}\, S\,(\mathrm{sign}(u) \odot |u|^{p-1})`;
* :class:`ProductLaplaceKernel`: the same with :math:`q = p`
  (:math:`\prod_j \exp(-|u_j|^p / L^p)`; ``p = 1`` is the "l1" Laplace kernel).

``p = 2, q = 1`` is the Laplace kernel; its distances then come from
:class:`nfm.kernels.distances.MahalanobisDistances`. For other ``p`` the distances are computed
from explicit differences (``torch.cdist``), which has no cancellation.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from nfm.exceptions import NFMInputError
from nfm.kernels.base import Kernel
from nfm.kernels.distances import MahalanobisDistances
from nfm.linalg import symmetric_matrix_power

__all__ = ["GeneralizedLaplaceKernel", "ProductLaplaceKernel"]


def _metric_root(M: torch.Tensor) -> torch.Tensor:
    """:math:`M^{1/2}` (exact square roots for a diagonal ``M``)."""
    if bool((M == torch.diag(torch.diagonal(M))).all()):
        return torch.diag(torch.diagonal(M).clamp(min=0).sqrt())
    return symmetric_matrix_power(M, 0.5)


class GeneralizedLaplaceKernel(Kernel):
    r"""Generalised Laplace kernel :math:`\exp(-(\sum_j |(S(x - z))_j|^p)^{q/p} / L^q)`.

    :math:`S = M^{1/2}` (symmetric square root, :func:`nfm.linalg.symmetric_matrix_power`).
    With :math:`u = S(x - z)`, :math:`r = \lVert u\rVert_p`:

    .. math::
        \nabla_x k = -\frac{q}{L^q}\, k\, r^{q - p}\;
        S\,\big(\mathrm{sign}(u)\odot|u|^{p-1}\big),

    and pairs at :math:`r = 0` (self, duplicates; for ``p = 2`` near duplicates too) are
    dropped. The gradient sum over centres runs coordinate by coordinate (``d`` products of a
    ``(b, n)`` weight matrix with the coefficients), so memory stays ``O(b n + b c d)``.

    Parameters
    ----------
    bandwidth : float
        :math:`L > 0`.
    exponent : float
        :math:`p \ge 1` (the inner norm).
    kernel_power : float
        :math:`q \in (0, 2]` (the power of the norm).
    """

    name: ClassVar[str] = "generalized_laplace"

    def __init__(self, bandwidth: float = 10.0, exponent: float = 1.0, kernel_power: float = 1.0):
        super().__init__(bandwidth)
        exponent = float(exponent)
        kernel_power = float(kernel_power)
        if not math.isfinite(exponent) or exponent < 1:
            raise NFMInputError(f"exponent (p) must be a finite number >= 1; got {exponent!r}")
        if not math.isfinite(kernel_power) or not 0 < kernel_power <= 2:
            raise NFMInputError(f"kernel_power (q) must lie in (0, 2]; got {kernel_power!r}")
        self.exponent = exponent
        self.kernel_power = kernel_power

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bandwidth={self.bandwidth!r}, exponent={self.exponent!r}, "
            f"kernel_power={self.kernel_power!r})"
        )

    def _profile_(self, r: torch.Tensor) -> torch.Tensor:
        return r.div_(self.bandwidth).pow_(self.kernel_power).neg_().exp_()

    def _state(self, Z: torch.Tensor, M: torch.Tensor, center: torch.Tensor) -> dict:
        S = _metric_root(M)
        state = {"S": S, "center": center, "ZS": (Z - center) @ S}
        if self.exponent == 2.0:
            state["distances"] = MahalanobisDistances(Z, M, center)
        return state

    def _distances(
        self,
        Xb: torch.Tensor,
        XS: torch.Tensor,
        state: dict,
        out: torch.Tensor | None,
        self_offset: int | None,
        zero_near_duplicates: bool,
    ) -> tuple[torch.Tensor, int]:
        """``r = ||S(x - z)||_p`` for the rows of ``Xb`` and the near-duplicate count."""
        if self.exponent == 2.0:
            s, duplicates = state["distances"].block(
                Xb, out=out, self_offset=self_offset, zero_near_duplicates=zero_near_duplicates
            )
            return s.sqrt_(), duplicates
        r = torch.cdist(XS, state["ZS"], p=self.exponent)
        if self_offset is not None:
            r.diagonal(offset=self_offset).zero_()
        zero = r == 0
        if self_offset is not None:
            rows = torch.arange(r.shape[0], device=r.device)[:, None] + self_offset
            zero &= torch.arange(r.shape[1], device=r.device)[None, :] > rows
        duplicates = int(zero.sum())
        if out is not None:
            out.copy_(r)
            r = out
        return r, duplicates

    # -- kernel values -----------------------------------------------------------------------
    def _gram_state(self, Z: torch.Tensor, M: torch.Tensor, center: torch.Tensor) -> Any:
        return self._state(Z, M, center)

    def _gram_block(
        self, Xb: torch.Tensor, state: Any, out: torch.Tensor, self_offset: int | None
    ) -> int:
        XS = (Xb - state["center"]) @ state["S"]
        r, duplicates = self._distances(Xb, XS, state, out, self_offset, False)
        self._profile_(r)
        return duplicates

    # -- gradients ---------------------------------------------------------------------------
    def _gradient_state(
        self, Z: torch.Tensor, M: torch.Tensor, coef: torch.Tensor, center: torch.Tensor
    ) -> Any:
        return self._state(Z, M, center)

    def _gradient_block(
        self, Xb: torch.Tensor, state: Any, coef: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p, q, L = self.exponent, self.kernel_power, self.bandwidth
        S, ZS = state["S"], state["ZS"]
        XS = (Xb - state["center"]) @ S
        r, _ = self._distances(Xb, XS, state, None, None, True)
        zero = r == 0
        values = self._profile_(r.clone())
        W = values.mul_(r.clamp_(min=torch.finfo(r.dtype).tiny).pow_(q - p)).masked_fill_(zero, 0.0)
        del r, values
        b, d, c = Xb.shape[0], Xb.shape[1], coef.shape[1]
        H = torch.empty((b, c, d), dtype=Xb.dtype, device=Xb.device)
        for j in range(d):
            u = XS[:, j, None] - ZS[None, :, j]
            if p == 1.0:
                phi = u.sign_()
            elif p == 2.0:
                phi = u
            else:
                phi = u.abs().pow_(p - 1).mul_(u.sign())
            H[:, :, j] = phi.mul_(W) @ coef
        return H, S * (-q / L**q)


class ProductLaplaceKernel(GeneralizedLaplaceKernel):
    r"""Product Laplace kernel: the generalised Laplace kernel with :math:`q = p`.

    :math:`k(x, z) = \exp(-\sum_j |(S(x - z))_j|^p / L^p) = \prod_j \exp(-|(S(x-z))_j|^p / L^p)`;
    ``p = 1`` is the "l1" Laplace kernel.

    Parameters
    ----------
    bandwidth : float
        :math:`L > 0`.
    exponent : float
        :math:`p = q \in [1, 2]`.
    """

    name: ClassVar[str] = "product_laplace"

    def __init__(self, bandwidth: float = 10.0, exponent: float = 1.0):
        exponent = float(exponent)
        if not math.isfinite(exponent) or not 1 <= exponent <= 2:
            raise NFMInputError(
                f"exponent (p = q) of the product Laplace kernel must lie in [1, 2]; "
                f"got {exponent!r}"
            )
        super().__init__(bandwidth, exponent=exponent, kernel_power=exponent)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bandwidth={self.bandwidth!r}, exponent={self.exponent!r})"
