r"""Radial kernels of the squared Mahalanobis distance: Laplace and Gaussian.

With :math:`s = \lVert x - z\rVert_M^2` and bandwidth :math:`L`:

* :class:`LaplaceKernel`: :math:`k = \exp(-\sqrt{s} / L)`,
  :math:`\nabla_x k = \frac{k}{L \sqrt s} M (z - x)` (term dropped at :math:`s = 0`);
* :class:`GaussianKernel`: :math:`k = \exp(-s / (2 L^2))`,
  :math:`\nabla_x k = \frac{k}{L^2} M (z - x)`.

Distances come from :class:`nfm.kernels.distances.MahalanobisDistances` (centred expansion,
small distances recomputed from explicit differences).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch

from nfm.exceptions import NFMInputError
from nfm.kernels.base import DEFAULT_BLOCK_ELEMENTS, Kernel, resolve_center, rows_per_block
from nfm.kernels.distances import MahalanobisDistances

__all__ = ["GaussianKernel", "LaplaceKernel", "RadialKernel"]


class RadialKernel(Kernel):
    r"""Kernels :math:`k = \phi(s)` of the squared Mahalanobis distance :math:`s`.

    :math:`\nabla_x k = w(s)\, M (z - x)` with :math:`w = -2\phi'(s)`, so
    :math:`\nabla f_c(x) = M\big(\sum_i w_{xi} a_{ic} z_i - x \sum_i w_{xi} a_{ic}\big)`:
    two matrix products per block, then one product with ``M`` (``x`` and ``z`` centred).
    """

    @abstractmethod
    def _profile_(self, sqdist: torch.Tensor) -> torch.Tensor:
        """Turn squared distances into kernel values, in place."""

    @abstractmethod
    def _weight_from_sqdist(self, sqdist: torch.Tensor) -> torch.Tensor:
        r"""The gradient weights :math:`w(s) = -2 \phi'(s)`; ``sqdist`` may be overwritten."""

    # -- kernel values -----------------------------------------------------------------------
    def _gram_state(self, Z: torch.Tensor, M: torch.Tensor, center: torch.Tensor) -> Any:
        return MahalanobisDistances(Z, M, center)

    def _gram_block(
        self, Xb: torch.Tensor, state: Any, out: torch.Tensor, self_offset: int | None
    ) -> int:
        _, duplicates = state.block(Xb, out=out, self_offset=self_offset)
        self._profile_(out)
        return duplicates

    # -- gradients ---------------------------------------------------------------------------
    def _gradient_state(
        self, Z: torch.Tensor, M: torch.Tensor, coef: torch.Tensor, center: torch.Tensor
    ) -> Any:
        distances = MahalanobisDistances(Z, M, center)
        Zc = distances.Zc
        n, c = coef.shape
        d = Z.shape[1]
        # columns (c, j) of Z_coef[i, (c, j)] = a_ic z_ij, built in chunks of outputs so that the
        # workspace stays within DEFAULT_BLOCK_ELEMENTS entries.
        chunk = max(1, min(c, DEFAULT_BLOCK_ELEMENTS // max(1, n * d)))
        prebuilt = None
        if chunk >= c:
            # the last c columns are A itself: one product gives the weighted sums and W A
            prebuilt = torch.cat([(coef[:, :, None] * Zc[:, None, :]).reshape(n, c * d), coef], 1)
        return {"distances": distances, "chunk": chunk, "prebuilt": prebuilt}

    def _gradient_block(
        self, Xb: torch.Tensor, state: Any, coef: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        distances = state["distances"]
        Zc, M = distances.Zc, distances.M
        n, c = coef.shape
        d = Zc.shape[1]
        s, _ = distances.block(Xb, zero_near_duplicates=True)
        W = self._weight_from_sqdist(s)
        del s
        Xc = distances.centred(Xb)
        if state["prebuilt"] is not None:
            both = W @ state["prebuilt"]
            weighted = both[:, : c * d].reshape(-1, c, d)
            row_sums = both[:, c * d :]  # W @ coef, (b, c)
        else:
            row_sums = (coef.T @ W.T).T  # W @ coef, (b, c); this form is faster for few columns
            weighted = torch.empty((Xb.shape[0], c, d), dtype=Xb.dtype, device=Xb.device)
            chunk = state["chunk"]
            for c0 in range(0, c, chunk):
                part = (coef[:, c0 : c0 + chunk, None] * Zc[:, None, :]).reshape(n, -1)
                weighted[:, c0 : c0 + chunk, :] = (W @ part).reshape(Xb.shape[0], -1, d)
        D = weighted.sub_(Xc[:, None, :] * row_sums[:, :, None])
        return D, M

    def agop(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        coef: torch.Tensor,
        *,
        centered: bool = False,
        block_size: int | None = None,
        center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Average gradient outer product; see :meth:`Kernel.agop`.

        Two exact evaluation orders, chosen by cost:

        * per-output (default): :math:`D_c(x) = \sum_i w_{xi} a_{ic} (z_i - x)`, accumulated
          as :math:`\sum D D^T` -- ``O(m n c d)``;
        * Gram route, used when ``n < c * d`` and an ``n x n`` buffer is small (many outputs,
          e.g. one-hot targets with many classes): with :math:`W` the ``(m, n)`` weights,
          :math:`R = W A`, :math:`E = W \odot (R A^T)`,

          .. math:: \sum_x D(x) D(x)^T = Z^T\big((A A^T) \odot (W^T W)\big) Z - Z^T E^T X
                    - X^T E Z + X^T \mathrm{diag}(\lVert r_x\rVert^2) X

          -- ``O(m n^2 + n^2 c + m n d)`` (``X`` and ``Z`` centred).
        """
        coef2 = coef.reshape(coef.shape[0], -1)
        n, c = coef2.shape
        d = Z.shape[1]
        if not (n < c * d and n * n <= 4 * DEFAULT_BLOCK_ELEMENTS):
            return super().agop(
                X, Z, M, coef2, centered=centered, block_size=block_size, center=center
            )
        m = X.shape[0]
        if m == 0:
            raise NFMInputError("the AGOP sample is empty (0 rows)")
        distances = MahalanobisDistances(Z, M, resolve_center(Z, center))
        Zc = distances.Zc
        rows = rows_per_block(n, block_size)
        WtW = torch.zeros((n, n), dtype=X.dtype, device=X.device)
        F = torch.zeros((n, d), dtype=X.dtype, device=X.device)
        XRX = torch.zeros((d, d), dtype=X.dtype, device=X.device)
        weight_sums = torch.zeros(n, dtype=X.dtype, device=X.device)
        XtR = torch.zeros((d, c), dtype=X.dtype, device=X.device)
        for start in range(0, m, rows):
            Xb = X[start : start + rows]
            s, _ = distances.block(Xb, zero_near_duplicates=True)
            W = self._weight_from_sqdist(s)
            del s
            Xc = distances.centred(Xb)
            R = W @ coef2
            WtW.addmm_(W.T, W)
            if centered:
                weight_sums.add_(W.sum(dim=0))
                XtR.addmm_(Xc.T, R)
            E = W.mul_(R @ coef2.T)
            F.addmm_(E.T, Xc)
            XRX.addmm_(Xc.T, Xc * (R * R).sum(dim=1, keepdim=True))
            del W, E, R
        WtW.mul_(coef2 @ coef2.T)
        ZtF = Zc.T @ F
        S = Zc.T @ (WtW @ Zc) - ZtF - ZtF.T + XRX
        del WtW
        S = S / m
        if centered:
            mean_D = (Zc.T @ (weight_sums[:, None] * coef2) - XtR) / m  # (d, c)
            S = S - mean_D @ mean_D.T
        G = M @ S @ M
        return 0.5 * (G + G.T)


class LaplaceKernel(RadialKernel):
    r"""Laplace kernel :math:`k(x, z) = \exp(-\lVert x - z\rVert_M / L)`.

    Gradient: :math:`\nabla_x k(x, z) = \frac{k(x, z)}{L \lVert x - z\rVert_M} M (z - x)`; the
    kernel is not differentiable at :math:`x = z`, and that term (self pairs and near-duplicate
    rows, see :mod:`nfm.kernels.distances`) is dropped.
    """

    name: ClassVar[str] = "laplace"

    def _profile_(self, sqdist: torch.Tensor) -> torch.Tensor:
        return sqdist.sqrt_().mul_(-1.0 / self.bandwidth).exp_()

    def _weight_from_sqdist(self, sqdist: torch.Tensor) -> torch.Tensor:
        # w = exp(-r / L) / (L r), r = sqrt(s); one square root and no copy of the block
        dist = sqdist.sqrt_()
        zero = dist == 0
        W = torch.mul(dist, -1.0 / self.bandwidth).exp_()
        W.div_(dist.clamp_(min=torch.finfo(dist.dtype).tiny).mul_(self.bandwidth))
        return W.masked_fill_(zero, 0.0)


class GaussianKernel(RadialKernel):
    r"""Gaussian kernel :math:`k(x, z) = \exp(-\lVert x - z\rVert_M^2 / (2 L^2))`.

    Gradient: :math:`\nabla_x k(x, z) = \frac{k(x, z)}{L^2} M (z - x)` (zero at :math:`x = z`).
    """

    name: ClassVar[str] = "gaussian"

    def _profile_(self, sqdist: torch.Tensor) -> torch.Tensor:
        return sqdist.mul_(-0.5 / self.bandwidth**2).exp_()

    def _weight_from_sqdist(self, sqdist: torch.Tensor) -> torch.Tensor:
        return self._profile_(sqdist).mul_(1.0 / self.bandwidth**2)
