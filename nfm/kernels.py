r"""Kernels in a learned metric, with their closed-form input gradients and the kernel AGOP.

Every kernel is a small picklable object (no lambdas) with

* :meth:`Kernel.gram` -- the kernel matrix :math:`K_{ij} = k_M(x_i, z_j)`, filled block by block
  (optionally into a preallocated matrix, so that the ``n x n`` Gram matrix is the only large
  allocation);
* :meth:`Kernel.gradient` -- the input gradient of the kernel predictor
  :math:`f_c(x) = \sum_i a_{ic} k_M(x, z_i)`, returned as a ``(b, c, d)`` tensor for a block of
  ``b`` points (used by tests and for small problems);
* :meth:`Kernel.agop` -- the average gradient outer product
  :math:`G = \frac1m \sum_{x} \sum_c \nabla f_c(x) \nabla f_c(x)^T` over the rows of a sample,
  accumulated block by block in memory ``O(block * n + block * c * d + d^2)`` plus a bounded
  workspace; the ``m x c x d`` gradient tensor is never built.

Kernels (with :math:`\lVert u\rVert_M = \sqrt{u^T M u}` and bandwidth :math:`L`):

* :class:`LaplaceKernel`: :math:`k(x, z) = \exp(-\lVert x - z\rVert_M / L)`,
  :math:`\nabla_x k = \frac{k}{L \lVert x - z\rVert_M} M (z - x)` (term dropped at distance 0);
* :class:`GaussianKernel`: :math:`k(x, z) = \exp(-\lVert x - z\rVert_M^2 / (2 L^2))`,
  :math:`\nabla_x k = \frac{k}{L^2} M (z - x)`;
* :class:`GeneralizedLaplaceKernel`:
  :math:`k(x, z) = \exp(-(\sum_j |(S(x - z))_j|^p)^{q/p} / L^q)` with :math:`S = M^{1/2}`; with
  :math:`u = S(x - z)` and :math:`r = \lVert u\rVert_p`,
  :math:`\nabla_x k = -\frac{q}{L^q} k\, r^{q-p}\, S\,(\mathrm{sign}(u) \odot |u|^{p-1})`.
  ``p = q`` is the product ("l1" for ``p = 1``) Laplace kernel; ``p = 2, q = 1`` is the Laplace
  kernel.

Squared Mahalanobis distances use the expansion
:math:`\lVert x - z\rVert_M^2 = x^T M x + z^T M z - 2 x^T M z` (one matrix product per block),
clamped at 0; entries below a rounding threshold are set to exactly 0 so that self and duplicate
pairs are recognised and masked in the Laplace gradient.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from nfm.exceptions import NFMInputError
from nfm.linalg import symmetric_matrix_power

__all__ = [
    "GaussianKernel",
    "GeneralizedLaplaceKernel",
    "Kernel",
    "LaplaceKernel",
    "ProductLaplaceKernel",
    "make_kernel",
]

#: default number of matrix entries per temporary block (rows * n); about 32 MB in float64.
DEFAULT_BLOCK_ELEMENTS = 1 << 22


def _rows_per_block(n_columns: int, block_size: int | None, per_row: int = 1) -> int:
    """Rows per block so that a ``(rows, n_columns * per_row)`` temporary stays bounded."""
    if block_size is not None:
        return max(1, int(block_size))
    return max(1, DEFAULT_BLOCK_ELEMENTS // max(1, n_columns * per_row))


def _rounding_threshold(dtype: torch.dtype) -> float:
    """Relative threshold below which a squared distance counts as zero (a duplicate pair)."""
    return 64.0 * torch.finfo(dtype).eps


class Kernel(ABC):
    """Base class of the kernels: bandwidth handling and the block-wise AGOP driver.

    Parameters
    ----------
    bandwidth : float
        The bandwidth :math:`L > 0`.
    """

    name: ClassVar[str] = "kernel"

    def __init__(self, bandwidth: float = 10.0) -> None:
        bandwidth = float(bandwidth)
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise NFMInputError(f"bandwidth must be a finite number > 0; got {bandwidth!r}")
        self.bandwidth = bandwidth

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bandwidth={self.bandwidth!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__name__, *sorted(self.__dict__.items())))

    # -- to be provided by subclasses ------------------------------------------------------
    @abstractmethod
    def gram(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        block_size: int | None = None,
    ) -> torch.Tensor:
        """Kernel matrix :math:`K_{ij} = k_M(x_i, z_j)`, shape ``(len(X), len(Z))``."""

    @abstractmethod
    def _gradient_block(
        self, Xb: torch.Tensor, state: dict, coef: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of a block before the final linear map: ``(D, T)`` with grad = D @ T."""

    @abstractmethod
    def _prepare(self, Z: torch.Tensor, M: torch.Tensor, coef: torch.Tensor) -> dict:
        """Quantities shared by every gradient block (computed once per AGOP)."""

    # -- shared drivers ----------------------------------------------------------------------
    def gradient(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        coef: torch.Tensor,
        *,
        block_size: int | None = None,
    ) -> torch.Tensor:
        r"""Input gradients of :math:`f_c(x) = \sum_i a_{ic} k_M(x, z_i)` at the rows of ``X``.

        Parameters
        ----------
        X : (b, d) tensor
            Points where the gradient is taken.
        Z : (n, d) tensor
            Centres (training points).
        M : (d, d) tensor
            The metric (symmetric PSD).
        coef : (n, c) or (n,) tensor
            Coefficients :math:`a`.

        Returns
        -------
        (b, c, d) tensor (``(b, d)`` when ``coef`` is 1-D): ``out[x, c] = grad f_c(x)``.
        """
        squeeze = coef.ndim == 1
        coef2 = coef.reshape(coef.shape[0], -1)
        state = self._prepare(Z, M, coef2)
        rows = _rows_per_block(Z.shape[0], block_size)
        parts = []
        for start in range(0, X.shape[0], rows):
            D, T = self._gradient_block(X[start : start + rows], state, coef2)
            parts.append(D @ T)
        grads = torch.cat(parts, dim=0) if parts else X.new_zeros((0, coef2.shape[1], X.shape[1]))
        return grads[:, 0, :] if squeeze else grads

    def agop(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        coef: torch.Tensor,
        *,
        centered: bool = False,
        block_size: int | None = None,
    ) -> torch.Tensor:
        r"""Average gradient outer product of the kernel predictor over the rows of ``X``.

        .. math:: G = \frac1m \sum_{x \in X} \sum_c \nabla f_c(x) \nabla f_c(x)^T ,

        or, when ``centered``, with :math:`\nabla f_c(x) - \overline{\nabla f_c}` (the mean over
        the sample) in place of :math:`\nabla f_c(x)`. Each kernel's gradient has the form
        :math:`\nabla f_c(x) = T^T D_c(x)` with a fixed ``(d', d)`` matrix ``T`` (``M`` or a
        scaled ``M^{1/2}``), so the sum is accumulated as
        :math:`G = T^T \big(\frac1m \sum D D^T\big) T`: one ``(b*c, d') x (b*c, d')`` product
        per block.

        Returns
        -------
        (d, d) tensor, symmetric PSD, dtype and device of ``X``.
        """
        coef2 = coef.reshape(coef.shape[0], -1)
        m = X.shape[0]
        if m == 0:
            raise NFMInputError("the AGOP sample is empty (0 rows)")
        state = self._prepare(Z, M, coef2)
        rows = _rows_per_block(Z.shape[0], block_size)
        outer = None
        total = None
        T = None
        for start in range(0, m, rows):
            D, T = self._gradient_block(X[start : start + rows], state, coef2)
            flat = D.reshape(-1, D.shape[-1])
            outer = flat.T @ flat if outer is None else outer.addmm_(flat.T, flat)
            block_sum = D.sum(dim=0)
            total = block_sum if total is None else total.add_(block_sum)
        outer = outer / m
        if centered:
            mean = total / m
            outer = outer - mean.T @ mean
        G = T.T @ outer @ T
        return 0.5 * (G + G.T)


class _RadialKernel(Kernel):
    r"""Kernels of the squared Mahalanobis distance :math:`s = \lVert x - z\rVert_M^2`.

    For :math:`k = \phi(s)`, :math:`\nabla_x k = w(s)\, M (z - x)` with :math:`w = -2\phi'(s)`,
    so :math:`\nabla f_c(x) = M\big(\sum_i w_{xi} a_{ic} z_i - x \sum_i w_{xi} a_{ic}\big)`:
    two matrix products per block, then one product with ``M``.
    """

    @abstractmethod
    def _profile_(self, sqdist: torch.Tensor) -> torch.Tensor:
        """Turn squared distances into kernel values, in place."""

    @abstractmethod
    def _weight(self, sqdist: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The gradient weight :math:`w(s) = -2 \\phi'(s)` (a new tensor)."""

    def _weight_from_sqdist(self, sqdist: torch.Tensor) -> torch.Tensor:
        """:math:`w(s)` from squared distances; ``sqdist`` may be overwritten."""
        values = self._profile_(sqdist.clone())
        return self._weight(sqdist, values)

    @staticmethod
    def _sqdist_block(
        Xb: torch.Tensor,
        MZ: torch.Tensor,
        z_norms: torch.Tensor,
        M: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x_norms = ((Xb @ M) * Xb).sum(dim=1)
        s = torch.matmul(Xb, MZ.T, out=out) if out is not None else Xb @ MZ.T
        s.mul_(-2.0).add_(x_norms[:, None]).add_(z_norms[None, :]).clamp_(min=0.0)
        tol = _rounding_threshold(s.dtype)
        small = s <= tol * (x_norms[:, None] + z_norms[None, :])
        s.masked_fill_(small, 0.0)
        return s

    def gram(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        block_size: int | None = None,
    ) -> torch.Tensor:
        """Kernel matrix ``(len(X), len(Z))``; written into ``out`` when given (no extra n x n).

        When ``X is Z`` the diagonal distances are set to exactly 0. (Off-diagonal duplicate
        pairs keep a rounding-level distance here; the gradient code masks them.)
        """
        MZ = Z @ M
        z_norms = (MZ * Z).sum(dim=1)
        if out is None:
            out = torch.empty((X.shape[0], Z.shape[0]), dtype=X.dtype, device=X.device)
        same = X is Z
        x_norms = z_norms if same else ((X @ M) * X).sum(dim=1)
        rows = _rows_per_block(Z.shape[0], block_size)
        for start in range(0, X.shape[0], rows):
            block = out[start : start + rows]
            # ||x||_M^2 - 2 x^T M z in the product's epilogue, then + ||z||_M^2, clamp: 3 passes
            torch.addmm(
                x_norms[start : start + rows, None],
                X[start : start + rows],
                MZ.T,
                beta=1.0,
                alpha=-2.0,
                out=block,
            )
            block.add_(z_norms[None, :]).clamp_(min=0.0)
            if same:  # exact zeros on the diagonal (rounding would leave ~eps * ||x||^2)
                block.diagonal(offset=start).zero_()
            self._profile_(block)
        return out

    def _prepare(self, Z: torch.Tensor, M: torch.Tensor, coef: torch.Tensor) -> dict:
        MZ = Z @ M
        n, c = coef.shape
        d = Z.shape[1]
        # columns (c, j) of Z_coef[i, (c, j)] = a_ic z_ij, built in chunks of outputs so that the
        # workspace stays within DEFAULT_BLOCK_ELEMENTS entries.
        chunk = max(1, min(c, DEFAULT_BLOCK_ELEMENTS // max(1, n * d)))
        prebuilt = None
        if chunk >= c:
            # the last c columns are A itself: one product gives the weighted sums and W A
            prebuilt = torch.cat([(coef[:, :, None] * Z[:, None, :]).reshape(n, c * d), coef], 1)
        return {
            "Z": Z,
            "M": M,
            "MZ": MZ,
            "z_norms": (MZ * Z).sum(dim=1),
            "chunk": chunk,
            "prebuilt": prebuilt,
        }

    def _gradient_block(
        self, Xb: torch.Tensor, state: dict, coef: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        Z, M = state["Z"], state["M"]
        n, c = coef.shape
        d = Z.shape[1]
        s = self._sqdist_block(Xb, state["MZ"], state["z_norms"], M)
        W = self._weight_from_sqdist(s)
        del s
        if state["prebuilt"] is not None:
            both = W @ state["prebuilt"]
            weighted = both[:, : c * d].reshape(-1, c, d)
            row_sums = both[:, c * d :]  # W @ coef, (b, c)
        else:
            row_sums = (coef.T @ W.T).T  # W @ coef, (b, c); this form is faster for few columns
            weighted = torch.empty((Xb.shape[0], c, d), dtype=Xb.dtype, device=Xb.device)
            chunk = state["chunk"]
            for c0 in range(0, c, chunk):
                part = (coef[:, c0 : c0 + chunk, None] * Z[:, None, :]).reshape(n, -1)
                weighted[:, c0 : c0 + chunk, :] = (W @ part).reshape(Xb.shape[0], -1, d)
        D = weighted.sub_(Xb[:, None, :] * row_sums[:, :, None])
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

          -- ``O(m n^2 + n^2 c + m n d)``.
        """
        coef2 = coef.reshape(coef.shape[0], -1)
        n, c = coef2.shape
        d = Z.shape[1]
        if not (n < c * d and n * n <= 4 * DEFAULT_BLOCK_ELEMENTS):
            return super().agop(X, Z, M, coef2, centered=centered, block_size=block_size)
        m = X.shape[0]
        if m == 0:
            raise NFMInputError("the AGOP sample is empty (0 rows)")
        MZ = Z @ M
        z_norms = (MZ * Z).sum(dim=1)
        rows = _rows_per_block(n, block_size)
        WtW = torch.zeros((n, n), dtype=X.dtype, device=X.device)
        F = torch.zeros((n, d), dtype=X.dtype, device=X.device)
        XRX = torch.zeros((d, d), dtype=X.dtype, device=X.device)
        weight_sums = torch.zeros(n, dtype=X.dtype, device=X.device)
        XtR = torch.zeros((d, c), dtype=X.dtype, device=X.device)
        for start in range(0, m, rows):
            Xb = X[start : start + rows]
            s = self._sqdist_block(Xb, MZ, z_norms, M)
            W = self._weight_from_sqdist(s)
            del s
            R = W @ coef2
            WtW.addmm_(W.T, W)
            if centered:
                weight_sums.add_(W.sum(dim=0))
                XtR.addmm_(Xb.T, R)
            E = W.mul_(R @ coef2.T)
            F.addmm_(E.T, Xb)
            XRX.addmm_(Xb.T, Xb * (R * R).sum(dim=1, keepdim=True))
            del W, E, R
        WtW.mul_(coef2 @ coef2.T)
        ZtF = Z.T @ F
        S = Z.T @ (WtW @ Z) - ZtF - ZtF.T + XRX
        del WtW
        S = S / m
        if centered:
            mean_D = (Z.T @ (weight_sums[:, None] * coef2) - XtR) / m  # (d, c)
            S = S - mean_D @ mean_D.T
        G = M @ S @ M
        return 0.5 * (G + G.T)


class LaplaceKernel(_RadialKernel):
    r"""Laplace kernel :math:`k(x, z) = \exp(-\lVert x - z\rVert_M / L)`.

    Gradient: :math:`\nabla_x k(x, z) = \frac{k(x, z)}{L \lVert x - z\rVert_M} M (z - x)`; the
    kernel is not differentiable at :math:`x = z`, and that term (self pairs and duplicate rows,
    squared distance below the rounding threshold) is dropped.
    """

    name: ClassVar[str] = "laplace"

    def _profile_(self, sqdist: torch.Tensor) -> torch.Tensor:
        return sqdist.sqrt_().mul_(-1.0 / self.bandwidth).exp_()

    def _weight(self, sqdist: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        dist = sqdist.sqrt_()
        zero = dist == 0
        W = values.div_(dist.clamp_(min=torch.finfo(dist.dtype).tiny).mul_(self.bandwidth))
        return W.masked_fill_(zero, 0.0)

    def _weight_from_sqdist(self, sqdist: torch.Tensor) -> torch.Tensor:
        # w = exp(-r / L) / (L r), r = sqrt(s); one square root and no copy of the block
        dist = sqdist.sqrt_()
        zero = dist == 0
        W = torch.mul(dist, -1.0 / self.bandwidth).exp_()
        W.div_(dist.clamp_(min=torch.finfo(dist.dtype).tiny).mul_(self.bandwidth))
        return W.masked_fill_(zero, 0.0)


class GaussianKernel(_RadialKernel):
    r"""Gaussian kernel :math:`k(x, z) = \exp(-\lVert x - z\rVert_M^2 / (2 L^2))`.

    Gradient: :math:`\nabla_x k(x, z) = \frac{k(x, z)}{L^2} M (z - x)` (zero at :math:`x = z`).
    """

    name: ClassVar[str] = "gaussian"

    def _profile_(self, sqdist: torch.Tensor) -> torch.Tensor:
        return sqdist.mul_(-0.5 / self.bandwidth**2).exp_()

    def _weight(self, sqdist: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return values.mul_(1.0 / self.bandwidth**2)


class GeneralizedLaplaceKernel(Kernel):
    r"""Generalised Laplace kernel :math:`\exp(-(\sum_j |(S(x - z))_j|^p)^{q/p} / L^q)`.

    :math:`S = M^{1/2}` (symmetric square root, :func:`nfm.linalg.symmetric_matrix_power`).
    With :math:`u = S(x - z)`, :math:`r = \lVert u\rVert_p`:

    .. math::
        \nabla_x k = -\frac{q}{L^q}\, k\, r^{q - p}\;
        S\,\big(\mathrm{sign}(u)\odot|u|^{p-1}\big),

    and pairs at :math:`r = 0` (self, duplicates) are dropped. The gradient sum over centres runs
    coordinate by coordinate (``d`` products of a ``(b, n)`` weight matrix with the
    coefficients), so memory stays ``O(b n + b c d)``.

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

    def _root(self, M: torch.Tensor) -> torch.Tensor:
        if bool((M == torch.diag(torch.diagonal(M))).all()):
            return torch.diag(torch.diagonal(M).clamp(min=0).sqrt())
        return symmetric_matrix_power(M, 0.5)

    def _distances(self, XS: torch.Tensor, ZS: torch.Tensor) -> torch.Tensor:
        p = self.exponent
        if p == 2.0:
            x_norms = (XS * XS).sum(dim=1)
            z_norms = (ZS * ZS).sum(dim=1)
            s = (XS @ ZS.T).mul_(-2.0).add_(x_norms[:, None]).add_(z_norms[None, :])
            s.clamp_(min=0.0)
            tol = _rounding_threshold(s.dtype)
            s.masked_fill_(s <= tol * (x_norms[:, None] + z_norms[None, :]), 0.0)
            return s.sqrt_()
        return torch.cdist(XS, ZS, p=p)

    def _profile_(self, r: torch.Tensor) -> torch.Tensor:
        q = self.kernel_power
        return r.div_(self.bandwidth).pow_(q).neg_().exp_()

    def gram(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        block_size: int | None = None,
    ) -> torch.Tensor:
        """Kernel matrix ``(len(X), len(Z))``; written into ``out`` when given."""
        S = self._root(M)
        XS, ZS = X @ S, Z @ S
        if out is None:
            out = torch.empty((X.shape[0], Z.shape[0]), dtype=X.dtype, device=X.device)
        rows = _rows_per_block(Z.shape[0], block_size)
        for start in range(0, X.shape[0], rows):
            distances = self._distances(XS[start : start + rows], ZS)
            out[start : start + rows] = self._profile_(distances)
        return out

    def _prepare(self, Z: torch.Tensor, M: torch.Tensor, coef: torch.Tensor) -> dict:
        S = self._root(M)
        return {"S": S, "ZS": Z @ S}

    def _gradient_block(
        self, Xb: torch.Tensor, state: dict, coef: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p, q, L = self.exponent, self.kernel_power, self.bandwidth
        S, ZS = state["S"], state["ZS"]
        XS = Xb @ S
        r = self._distances(XS, ZS)
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


KERNELS: dict[str, type[Kernel]] = {
    "laplace": LaplaceKernel,
    "gaussian": GaussianKernel,
    "generalized_laplace": GeneralizedLaplaceKernel,
    "product_laplace": ProductLaplaceKernel,
}


def make_kernel(
    name: str, bandwidth: float, *, exponent: float = 1.0, kernel_power: float = 1.0
) -> Kernel:
    """Build a kernel object from its name.

    Parameters
    ----------
    name : {"laplace", "gaussian", "generalized_laplace", "product_laplace"}
    bandwidth : float
    exponent : float
        ``p`` of the generalised / product Laplace kernels (ignored by the others).
    kernel_power : float
        ``q`` of the generalised Laplace kernel (ignored by the others).
    """
    if name not in KERNELS:
        raise NFMInputError(f"kernel must be one of {sorted(KERNELS)}; got {name!r}")
    if name == "generalized_laplace":
        return GeneralizedLaplaceKernel(bandwidth, exponent=exponent, kernel_power=kernel_power)
    if name == "product_laplace":
        return ProductLaplaceKernel(bandwidth, exponent=exponent)
    return KERNELS[name](bandwidth)
