r"""Progress measures of grokking: structure of feature-matrix blocks.

For modular arithmetic with inputs :math:`x = [e_a; e_b] \in \{0,1\}^{2p}`, a feature matrix
:math:`M` (an RFM metric, an AGOP, or a network's :math:`W^T W`) is :math:`2p \times 2p` with four
:math:`p \times p` blocks; the off-diagonal block :math:`B = M_{a, b}` couples the two operands.
When the predictor has found the group structure, :math:`B` becomes

* **circulant**: :math:`B_{ij} = c_{(j - i) \bmod n}` (constant along wrapped diagonals), or
* **Hankel** (wrapped): :math:`B_{ij} = h_{(i + j) \bmod n}`, i.e. circulant once one index is
  reversed (:math:`j \to -j \bmod n`).

Which one appears depends on the operation and on the matrix examined, so both deviations are
reported and :class:`StructureDeviation` names the smaller one. For multiplication and division
the block is first reordered by the discrete logarithm (:func:`feature_block`), after which the
same definitions apply with :math:`n = p - 1`.

All functions accept numpy arrays or torch tensors, compute in float64, and return matrices of
the kind they were given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from nfm._utils.arrays import array_kind, to_tensor
from nfm.exceptions import NFMInputError
from nfm.grokking.data import feature_order
from nfm.linalg import CorrelationKind, matrix_correlation

Structure = Literal["circulant", "hankel"]
BlockName = Literal["ab", "ba", "aa", "bb"]

__all__ = [
    "BlockName",
    "FourierSpectrum",
    "Structure",
    "StructureDeviation",
    "agop_alignment",
    "circulant_deviation",
    "feature_block",
    "fourier_spectrum",
    "hankel_deviation",
    "nearest_circulant",
    "nearest_hankel",
    "structure_deviation",
]


def _square_float64(block: Any, name: str = "block") -> np.ndarray:
    t = to_tensor(block, name).detach().to("cpu")
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise NFMInputError(f"{name} must be a non-empty square matrix; got shape {tuple(t.shape)}")
    if t.is_complex():
        raise NFMInputError(f"{name} must be real; got dtype {t.dtype}")
    arr = t.to(torch.float64).numpy()
    if not np.all(np.isfinite(arr)):
        raise NFMInputError(f"{name} contains NaN or infinite values; shape {arr.shape}")
    return arr


def _restore(result: np.ndarray, like: Any) -> Any:
    if array_kind(like) == "torch":
        return torch.as_tensor(result, dtype=torch.float64).to(like.device)
    return result


def _wrapped_means(b: np.ndarray, structure: Structure) -> np.ndarray:
    """Means along wrapped diagonals (circulant) or anti-diagonals (Hankel)."""
    n = b.shape[0]
    i = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    # circulant: entry (i, (i + k) mod n) lies on diagonal k; Hankel: (i, (k - i) mod n) on
    # anti-diagonal k.
    cols = (i + k) % n if structure == "circulant" else (k - i) % n
    return b[i, cols].mean(axis=0)


def _nearest(b: np.ndarray, structure: Structure) -> np.ndarray:
    n = b.shape[0]
    means = _wrapped_means(b, structure)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return means[(j - i) % n] if structure == "circulant" else means[(i + j) % n]


def nearest_circulant(block: Any) -> Any:
    r"""Closest circulant matrix in Frobenius norm.

    .. math:: C(B)_{ij} = c_{(j-i) \bmod n}, \qquad
              c_k = \frac{1}{n} \sum_{i=0}^{n-1} B_{i, (i+k) \bmod n},

    the average of :math:`B` along each wrapped diagonal (the orthogonal projection onto the
    circulant matrices).
    """
    return _restore(_nearest(_square_float64(block), "circulant"), block)


def nearest_hankel(block: Any) -> Any:
    r"""Closest wrapped Hankel matrix in Frobenius norm.

    .. math:: H(B)_{ij} = h_{(i+j) \bmod n}, \qquad
              h_k = \frac{1}{n} \sum_{i=0}^{n-1} B_{i, (k-i) \bmod n},

    the average along each wrapped anti-diagonal; equivalently the nearest circulant matrix
    after reversing the column index (:math:`j \to -j \bmod n`).
    """
    return _restore(_nearest(_square_float64(block), "hankel"), block)


def _relative_deviation(b: np.ndarray, structure: Structure) -> float:
    norm = float(np.linalg.norm(b))
    if norm == 0.0:
        return float("nan")
    return float(np.linalg.norm(b - _nearest(b, structure)) / norm)


def circulant_deviation(block: Any) -> float:
    r"""Relative distance of a square block to the nearest circulant matrix.

    .. math:: \delta_{\mathrm{circ}}(B) = \frac{\lVert B - C(B)\rVert_F}{\lVert B\rVert_F}
              \in [0, 1],

    with :math:`C(B)` from :func:`nearest_circulant`. 0 for an exact circulant matrix; ``nan``
    for the zero matrix (undefined). Because :math:`C(B)` is an orthogonal projection,
    :math:`\delta^2` is the fraction of :math:`\lVert B\rVert_F^2` off the circulant subspace.
    """
    return _relative_deviation(_square_float64(block), "circulant")


def hankel_deviation(block: Any) -> float:
    r"""Relative distance of a square block to the nearest wrapped Hankel matrix.

    .. math:: \delta_{\mathrm{Hankel}}(B) = \frac{\lVert B - H(B)\rVert_F}{\lVert B\rVert_F},

    with :math:`H(B)` from :func:`nearest_hankel`; equal to the circulant deviation of
    :math:`B` with its columns reversed modulo :math:`n`.
    """
    return _relative_deviation(_square_float64(block), "hankel")


@dataclass(frozen=True)
class StructureDeviation:
    """Circulant and Hankel deviation of one block, and which structure applies.

    Attributes
    ----------
    circulant, hankel : float
        :func:`circulant_deviation` and :func:`hankel_deviation`.
    """

    circulant: float
    hankel: float

    @property
    def kind(self) -> Structure:
        """``"hankel"`` when its deviation is strictly smaller, else ``"circulant"``."""
        return "hankel" if self.hankel < self.circulant else "circulant"

    @property
    def value(self) -> float:
        """The deviation of the structure that applies: ``min(circulant, hankel)``."""
        return self.hankel if self.kind == "hankel" else self.circulant

    def as_dict(self) -> dict[str, float | str]:
        """``{"circulant_deviation", "hankel_deviation", "structure", "structure_deviation"}``."""
        return {
            "circulant_deviation": self.circulant,
            "hankel_deviation": self.hankel,
            "structure": self.kind,
            "structure_deviation": self.value,
        }


def structure_deviation(block: Any) -> StructureDeviation:
    """Both deviations of ``block`` (see :func:`circulant_deviation`, :func:`hankel_deviation`)."""
    b = _square_float64(block)
    return StructureDeviation(
        circulant=_relative_deviation(b, "circulant"), hankel=_relative_deviation(b, "hankel")
    )


def feature_block(
    matrix: Any,
    p: int,
    *,
    op: str = "add",
    block: BlockName = "ab",
    reorder: bool = True,
) -> Any:
    r"""Extract a :math:`p \times p` block of a :math:`2p \times 2p` feature matrix.

    With the input :math:`[e_a; e_b]`, ``block="ab"`` is :math:`M_{[0,p),[p,2p)}` (rows index
    :math:`a`, columns index :math:`b`), ``"ba"`` its transpose position, ``"aa"`` and ``"bb"``
    the diagonal blocks. With ``reorder=True`` rows and columns are put in
    :func:`~nfm.grokking.data.feature_order` of ``op``: unchanged for ``add``/``sub``, the
    discrete-log order for ``mul``/``div`` (a :math:`(p-1) \times (p-1)` block without residue 0).

    Returns
    -------
    The block, as the kind of array given.
    """
    if block not in ("ab", "ba", "aa", "bb"):
        raise NFMInputError(f"block must be one of 'ab', 'ba', 'aa', 'bb'; got {block!r}")
    m = _square_float64(matrix, "matrix")
    p = int(p)
    if m.shape[0] != 2 * p:
        raise NFMInputError(
            f"matrix must be 2p x 2p = {2 * p} x {2 * p} for p={p}; got shape {m.shape}"
        )
    order = feature_order(op, p) if reorder else np.arange(p)
    row_offset = p if block[0] == "b" else 0
    col_offset = p if block[1] == "b" else 0
    return _restore(m[np.ix_(row_offset + order, col_offset + order)], matrix)


def agop_alignment(
    matrix: Any,
    reference: Any,
    *,
    kind: CorrelationKind = "cosine",
    exclude_diagonal: bool = False,
) -> float:
    r"""Alignment of a feature matrix with a reference one (e.g. :math:`M_t` with the final M).

    Default (``kind="cosine"``), the normalised Frobenius inner product

    .. math:: \rho(A, B) = \frac{\langle A, B\rangle_F}{\lVert A\rVert_F \lVert B\rVert_F}
              = \frac{\mathrm{tr}(A^T B)}{\lVert A\rVert_F \lVert B\rVert_F};

    ``kind="pearson"`` centres the entries first. Computed by
    :func:`nfm.linalg.matrix_correlation`.
    """
    return matrix_correlation(matrix, reference, kind=kind, exclude_diagonal=exclude_diagonal)


@dataclass(frozen=True)
class FourierSpectrum:
    r"""Two-dimensional discrete Fourier transform of a square block, and its structured lines.

    With :math:`\hat B = \mathrm{fft2}(B) / n`, a circulant block :math:`c_{(j-i)}` has all its
    energy on the line :math:`(k_1, k_2) = (-k, k)`, where :math:`\hat B_{-k, k} = \hat c_k =
    \sum_m c_m e^{-2\pi i k m / n}` (its eigenvalues), and a wrapped Hankel block
    :math:`h_{(i+j)}` on the line :math:`(k, k)`, where :math:`\hat B_{k,k} = \hat h_k`.

    Attributes
    ----------
    magnitude : (n, n) ndarray
        :math:`|\hat B|`.
    circulant : (n,) ndarray
        :math:`|\hat B_{-k \bmod n,\, k}|`, k = 0..n-1.
    hankel : (n,) ndarray
        :math:`|\hat B_{k, k}|`.
    """

    magnitude: np.ndarray
    circulant: np.ndarray
    hankel: np.ndarray

    @property
    def circulant_energy_fraction(self) -> float:
        r""":math:`\sum_k |\hat B_{-k,k}|^2 / \sum |\hat B|^2` (1 for a circulant block)."""
        total = float(np.sum(self.magnitude**2))
        return float(np.sum(self.circulant**2) / total) if total > 0 else float("nan")

    @property
    def hankel_energy_fraction(self) -> float:
        r""":math:`\sum_k |\hat B_{k,k}|^2 / \sum |\hat B|^2` (1 for a wrapped Hankel block)."""
        total = float(np.sum(self.magnitude**2))
        return float(np.sum(self.hankel**2) / total) if total > 0 else float("nan")


def fourier_spectrum(block: Any) -> FourierSpectrum:
    r"""Fourier spectrum of a square block (see :class:`FourierSpectrum`).

    .. math:: \hat B_{k_1 k_2} = \frac{1}{n} \sum_{i,j} B_{ij}\,
              e^{-2\pi i (k_1 i + k_2 j)/n}.

    By Parseval, :math:`\sum |\hat B|^2 = \lVert B\rVert_F^2`, and the energy fraction on the
    circulant line equals :math:`1 - \delta_{\mathrm{circ}}(B)^2`.
    """
    b = _square_float64(block)
    n = b.shape[0]
    transform = np.fft.fft2(b) / n
    k = np.arange(n)
    magnitude = np.abs(transform)
    return FourierSpectrum(
        magnitude=magnitude,
        circulant=magnitude[(-k) % n, k],
        hankel=magnitude[k, k],
    )
