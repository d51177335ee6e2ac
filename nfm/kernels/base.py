r"""The kernel interface and its block-wise drivers (Gram matrix, predictor values, AGOP).

A kernel :math:`k_M(x, z)` in a learned metric :math:`M` provides four computations, each
filled block by block so that the only large allocation is the output:

* :meth:`Kernel.gram` -- :math:`K_{ij} = k_M(x_i, z_j)`, optionally written into a
  preallocated matrix;
* :meth:`Kernel.predictor_values` -- :math:`f_c(x) = \sum_i a_{ic} k_M(x, z_i)` without
  materialising the ``(len(X), len(Z))`` kernel matrix;
* :meth:`Kernel.gradient` -- the input gradients :math:`\nabla f_c(x)` as a ``(b, c, d)`` tensor;
* :meth:`Kernel.agop` -- the average gradient outer product
  :math:`G = \frac1m \sum_x \sum_c \nabla f_c(x) \nabla f_c(x)^T`.

Every kernel depends on :math:`x - z` only, so the drivers subtract one centre from both sides
first (by default the mean of ``Z``); this keeps the distance expansions of the subclasses
accurate for data far from the origin.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from nfm.exceptions import NFMInputError

__all__ = ["DEFAULT_BLOCK_ELEMENTS", "GramInfo", "Kernel", "resolve_center", "rows_per_block"]

#: default number of matrix entries per temporary block (rows * n); about 32 MB in float64.
DEFAULT_BLOCK_ELEMENTS = 1 << 22


def rows_per_block(n_columns: int, block_size: int | None, per_row: int = 1) -> int:
    """Rows per block so that a ``(rows, n_columns * per_row)`` temporary stays bounded.

    ``block_size`` (when given) wins; otherwise ``DEFAULT_BLOCK_ELEMENTS / (n_columns * per_row)``.
    """
    if block_size is not None:
        return max(1, int(block_size))
    return max(1, DEFAULT_BLOCK_ELEMENTS // max(1, n_columns * per_row))


def resolve_center(Z: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """The translation subtracted from both arguments: ``center`` or the mean row of ``Z``.

    Raises
    ------
    NFMInputError
        If ``center`` is not a vector with one entry per feature of ``Z``.
    """
    if center is None:
        if Z.shape[0] == 0:
            return Z.new_zeros(Z.shape[1])
        return Z.mean(dim=0)
    center = torch.as_tensor(center)
    if center.shape != (Z.shape[1],):
        raise NFMInputError(
            f"center must be a vector of length {Z.shape[1]} (one entry per feature); "
            f"got shape {tuple(center.shape)}"
        )
    return center.to(device=Z.device, dtype=Z.dtype)


@dataclass(frozen=True)
class GramInfo:
    """Facts about one Gram matrix, returned by ``Kernel.gram(..., return_info=True)``.

    Attributes
    ----------
    near_duplicate_pairs : int
        Pairs ``(i, j)`` (with ``i < j`` when ``X is Z``; self pairs never count) whose distance
        is below the kernel's rounding threshold: they are treated as duplicates, i.e. their
        term is dropped from the input gradient (see :mod:`nfm.kernels.distances`).
    """

    near_duplicate_pairs: int = 0


class Kernel(ABC):
    """Base class of the kernels: bandwidth handling and the block-wise drivers.

    Subclasses provide the per-block computations: ``_gram_state`` / ``_gram_block`` for kernel
    values and ``_gradient_state`` / ``_gradient_block`` for gradients.

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
    def _gram_state(self, Z: torch.Tensor, M: torch.Tensor, center: torch.Tensor) -> Any:
        """Quantities of the centres shared by every kernel-value block."""

    @abstractmethod
    def _gram_block(
        self, Xb: torch.Tensor, state: Any, out: torch.Tensor, self_offset: int | None
    ) -> int:
        """Write :math:`k_M(x, z_j)` for the rows of ``Xb`` into ``out``.

        ``self_offset`` is the index of ``Xb``'s first row in ``Z`` when ``X is Z`` (``None``
        otherwise). Returns the number of near-duplicate pairs in the block (self pairs and,
        when ``X is Z``, pairs with ``j <= i`` excluded).
        """

    @abstractmethod
    def _gradient_state(
        self, Z: torch.Tensor, M: torch.Tensor, coef: torch.Tensor, center: torch.Tensor
    ) -> Any:
        """Quantities shared by every gradient block (computed once per call)."""

    @abstractmethod
    def _gradient_block(
        self, Xb: torch.Tensor, state: Any, coef: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of a block as ``(D, T)``: ``grad f_c(x) = T^T D[x, c]``."""

    # -- shared drivers ----------------------------------------------------------------------
    def gram(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        block_size: int | None = None,
        center: torch.Tensor | None = None,
        return_info: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, GramInfo]:
        """Kernel matrix :math:`K_{ij} = k_M(x_i, z_j)`, shape ``(len(X), len(Z))``.

        Parameters
        ----------
        X : (m, d) tensor
        Z : (n, d) tensor
        M : (d, d) tensor
            The metric (symmetric PSD).
        out : (m, n) tensor, optional
            Written in place (no other ``m x n`` buffer is allocated).
        block_size : int, optional
            Rows per block (default: about :data:`DEFAULT_BLOCK_ELEMENTS` entries per block).
        center : (d,) tensor, optional
            Subtracted from ``X`` and ``Z`` before the distances (default: the mean row of
            ``Z``); the kernel values do not depend on it in exact arithmetic.
        return_info : bool
            Also return a :class:`GramInfo` (the near-duplicate pair count).

        Returns
        -------
        (m, n) tensor, or ``(tensor, GramInfo)`` when ``return_info``.
        """
        c = resolve_center(Z, center)
        state = self._gram_state(Z, M, c)
        if out is None:
            out = torch.empty((X.shape[0], Z.shape[0]), dtype=X.dtype, device=X.device)
        same = X is Z
        rows = rows_per_block(Z.shape[0], block_size)
        duplicates = 0
        for start in range(0, X.shape[0], rows):
            duplicates += self._gram_block(
                X[start : start + rows], state, out[start : start + rows], start if same else None
            )
        if return_info:
            return out, GramInfo(near_duplicate_pairs=duplicates)
        return out

    def predictor_values(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        coef: torch.Tensor,
        *,
        block_size: int | None = None,
        center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Values of the kernel predictor :math:`f_c(x) = \sum_i a_{ic}\, k_M(x, z_i)`.

        Computed in row blocks of ``X`` (memory ``O(block * n)``), so the full kernel matrix is
        never built.

        Parameters
        ----------
        X : (b, d) tensor
        Z : (n, d) tensor
        M : (d, d) tensor
        coef : (n, c) or (n,) tensor
        block_size, center
            As in :meth:`gram`.

        Returns
        -------
        (b, c) tensor (``(b,)`` when ``coef`` is 1-D), dtype of ``coef``.
        """
        squeeze = coef.ndim == 1
        coef2 = coef.reshape(coef.shape[0], -1)
        c = resolve_center(Z, center)
        state = self._gram_state(Z, M, c)
        rows = rows_per_block(Z.shape[0], block_size)
        values = torch.empty((X.shape[0], coef2.shape[1]), dtype=coef2.dtype, device=X.device)
        block = None
        for start in range(0, X.shape[0], rows):
            Xb = X[start : start + rows]
            if block is None or block.shape[0] != Xb.shape[0]:
                block = torch.empty((Xb.shape[0], Z.shape[0]), dtype=X.dtype, device=X.device)
            self._gram_block(Xb, state, block, None)
            values[start : start + rows] = (coef2.T @ block.T).T  # fast form for few columns
        return values[:, 0] if squeeze else values

    def gradient(
        self,
        X: torch.Tensor,
        Z: torch.Tensor,
        M: torch.Tensor,
        coef: torch.Tensor,
        *,
        block_size: int | None = None,
        center: torch.Tensor | None = None,
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
        block_size, center
            As in :meth:`gram`.

        Returns
        -------
        (b, c, d) tensor (``(b, d)`` when ``coef`` is 1-D): ``out[x, c] = grad f_c(x)``.
        """
        squeeze = coef.ndim == 1
        coef2 = coef.reshape(coef.shape[0], -1)
        state = self._gradient_state(Z, M, coef2, resolve_center(Z, center))
        rows = rows_per_block(Z.shape[0], block_size)
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
        center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Average gradient outer product of the kernel predictor over the rows of ``X``.

        .. math:: G = \frac1m \sum_{x \in X} \sum_c \nabla f_c(x) \nabla f_c(x)^T ,

        or, when ``centered``, with :math:`\nabla f_c(x) - \overline{\nabla f_c}` (the mean over
        the sample) in place of :math:`\nabla f_c(x)`. Each kernel's gradient has the form
        :math:`\nabla f_c(x) = T^T D_c(x)` with a fixed ``(d', d)`` matrix ``T`` (``M`` or a
        scaled ``M^{1/2}``), so the sum is accumulated as
        :math:`G = T^T \big(\frac1m \sum D D^T\big) T`: one ``(b*c, d') x (b*c, d')`` product
        per block. ``center`` is as in :meth:`gram`.

        Returns
        -------
        (d, d) tensor, symmetric PSD, dtype and device of ``X``.

        Raises
        ------
        NFMInputError
            If ``X`` has no rows.
        """
        coef2 = coef.reshape(coef.shape[0], -1)
        m = X.shape[0]
        if m == 0:
            raise NFMInputError("the AGOP sample is empty (0 rows)")
        state = self._gradient_state(Z, M, coef2, resolve_center(Z, center))
        rows = rows_per_block(Z.shape[0], block_size)
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
