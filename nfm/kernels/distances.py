r"""Squared Mahalanobis distances :math:`s = \lVert x - z\rVert_M^2`, accurate near zero.

The fast formula is the expansion

.. math:: s = \tilde x^T M \tilde x + \tilde z^T M \tilde z - 2\, \tilde x^T M \tilde z,
          \qquad \tilde x = x - c,\ \tilde z = z - c,

one matrix product per block. Distances are translation invariant, so both sides are shifted
by the same centre ``c`` (the mean of the centres by default): the norms
:math:`N = \tilde x^T M \tilde x + \tilde z^T M \tilde z` that the expansion cancels are then those
of centred data, not of raw data far from the origin (features with mean 10 would otherwise lose
about two more digits).

The expansion's rounding error is :math:`O(\epsilon N)`, absolute, so it still loses the small
distances (in float32 a duplicate pair gets :math:`s \approx 10^{-6} N`, hence a Laplace value
:math:`1 - \sqrt{s}/L` off by about :math:`10^{-4}`). Pairs whose expanded value is at most
:data:`DIRECT_FRACTION` :math:`\cdot N` (found by a cheap test with the largest centre norm in
place of :math:`\tilde z^T M \tilde z`, then the exact per-pair test on those candidates) are
therefore recomputed
from their explicit difference :math:`u = \tilde x - \tilde z` as :math:`u^T M u`, accurate to a
few :math:`\epsilon` relative to :math:`s` itself (duplicates give exactly 0). The remaining
pairs have :math:`s > N / 256`: with :math:`|\delta s| \le c\,\epsilon N`, the distance
:math:`r = \sqrt s` is off by
:math:`|\delta r| \le c\,\epsilon N / (2 r) \le 8 c\,\epsilon \sqrt N`, so a Laplace value by
at most :math:`8 c\,\epsilon \sqrt N / L`, where the expansion alone allows
:math:`\sqrt{c\,\epsilon N} / L` near zero.

A pair is a *near duplicate* when :math:`s \le 64\,\epsilon\, N` (:func:`rounding_threshold`):
at that distance the kernel gradients' rearranged sums cancel to rounding, so the gradient code
drops the pair's term (as for an exact duplicate, where the Laplace kernel is not
differentiable). Such pairs are counted and reported.
"""

from __future__ import annotations

import torch

from nfm.kernels.base import DEFAULT_BLOCK_ELEMENTS

__all__ = ["DIRECT_FRACTION", "MahalanobisDistances", "rounding_threshold"]

#: pairs with an expanded squared distance at most this fraction of their centred squared norms
#: are recomputed from explicit differences.
DIRECT_FRACTION = 1.0 / 256.0


def rounding_threshold(dtype: torch.dtype) -> float:
    """Relative threshold ``64 eps`` below which a squared distance counts as a duplicate pair."""
    return 64.0 * torch.finfo(dtype).eps


def _is_diagonal(M: torch.Tensor) -> bool:
    return bool((M == torch.diag(torch.diagonal(M))).all())


class MahalanobisDistances:
    r"""Squared distances :math:`\lVert x - z_j\rVert_M^2` from row blocks to fixed centres.

    Parameters
    ----------
    Z : (n, d) tensor
        The centres.
    M : (d, d) tensor
        The metric (symmetric PSD).
    center : (d,) tensor
        Subtracted from both sides (e.g. the mean of ``Z``).

    Attributes
    ----------
    Zc : (n, d) tensor
        The centred centres ``Z - center`` (the gradient code uses them too).
    """

    def __init__(self, Z: torch.Tensor, M: torch.Tensor, center: torch.Tensor) -> None:
        self.M = M
        self.center = center
        self.Zc = Z - center
        self.MZc = self.Zc @ M
        self.z_norms = (self.MZc * self.Zc).sum(dim=1)
        self.z_max = float(self.z_norms.max()) if self.z_norms.numel() else 0.0
        # [-2 M z, z^T M z]: with [x, 1] on the left one product gives -2 x^T M z + z^T M z
        self._right = torch.cat([self.MZc * -2.0, self.z_norms[:, None]], dim=1).T
        self.diagonal = torch.diagonal(M) if _is_diagonal(M) else None
        self.threshold = rounding_threshold(Z.dtype)

    def centred(self, Xb: torch.Tensor) -> torch.Tensor:
        """``Xb - center``."""
        return Xb - self.center

    def block(
        self,
        Xb: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        self_offset: int | None = None,
        zero_near_duplicates: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """Squared distances of the rows of ``Xb`` to every centre, shape ``(len(Xb), n)``.

        Parameters
        ----------
        Xb : (b, d) tensor
            Raw (uncentred) rows.
        out : (b, n) tensor, optional
            Written in place.
        self_offset : int, optional
            When ``Xb`` is the block of ``Z`` starting at this row: self pairs are set to
            exactly 0 and only pairs ``(i, j)`` with ``j > i`` are counted.
        zero_near_duplicates : bool
            Set near-duplicate distances (``s <= 64 eps N``) to exactly 0 (the gradient code
            masks zero distances).

        Returns
        -------
        (s, near_duplicates)
            The distances and the number of near-duplicate pairs counted.
        """
        Xc = self.centred(Xb)
        x_norms = ((Xc @ self.M) * Xc).sum(dim=1)
        ones = torch.ones((Xc.shape[0], 1), dtype=Xc.dtype, device=Xc.device)
        s = torch.addmm(x_norms[:, None], torch.cat([Xc, ones], dim=1), self._right, out=out)
        # candidates: s <= rho (x_norm_i + max_j z_norm_j), a superset of s <= rho N_ij that
        # needs one comparison per entry and no (b, n) temporary of floats; every negative
        # rounding of s is a candidate (the bound is >= 0), so no clamp pass is needed
        bound = ((x_norms + self.z_max) * DIRECT_FRACTION).clamp_(min=0.0)
        close = s <= bound[:, None]
        if self_offset is not None:
            s.diagonal(offset=self_offset).zero_()
            close.diagonal(offset=self_offset).fill_(False)
        duplicates = 0
        if int(torch.count_nonzero(close)):  # cheaper than nonzero() on an empty mask
            pairs = close.nonzero()
            del close
            i, j = pairs.unbind(dim=1)
            # the candidates that pass the per-pair test s <= rho N_ij (negatives always do)
            limit = ((x_norms[i] + self.z_norms[j]) * DIRECT_FRACTION).clamp_(min=0.0)
            pairs = pairs[s[i, j] <= limit]
            del i, j, limit
            duplicates = self._refine(s, Xc, x_norms, pairs, self_offset, zero_near_duplicates)
        return s, duplicates

    def _refine(
        self,
        s: torch.Tensor,
        Xc: torch.Tensor,
        x_norms: torch.Tensor,
        pairs: torch.Tensor,
        self_offset: int | None,
        zero_near_duplicates: bool,
    ) -> int:
        """Recompute the listed pairs from explicit differences; count the near duplicates."""
        d = Xc.shape[1]
        chunk = max(1, DEFAULT_BLOCK_ELEMENTS // max(1, 4 * d))
        duplicates = 0
        for start in range(0, pairs.shape[0], chunk):
            i, j = pairs[start : start + chunk].unbind(dim=1)
            u = Xc[i] - self.Zc[j]
            if self.diagonal is not None:
                exact = (u * u) @ self.diagonal
            else:
                exact = ((u @ self.M) * u).sum(dim=1)
            exact.clamp_(min=0.0)
            near = exact <= (x_norms[i] + self.z_norms[j]) * self.threshold
            if zero_near_duplicates:
                exact.masked_fill_(near, 0.0)
            if self_offset is not None:
                near &= j > i + self_offset
            duplicates += int(near.sum())
            s[i, j] = exact
        return duplicates
