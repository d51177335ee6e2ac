r"""Functions of symmetric PSD matrices through their eigendecomposition: :math:`A^\alpha`.

A matrix that is positive semi-definite in exact arithmetic (an AGOP, an NFM, a Gram matrix)
comes out of floating point with eigenvalues slightly below zero. :func:`psd_eigh` clamps them
to zero silently when they are within rounding, and with a
:class:`~nfm.exceptions.NumericalWarning` when the matrix is materially indefinite: a negative
eigenvalue below

.. math:: -\tau, \qquad \tau = c\, d\, \epsilon \max_i |\lambda_i|, \qquad c = 100,

with :math:`d` the size and :math:`\epsilon` the machine epsilon of the precision the matrix
was computed in (the coarser of its own dtype and the compute dtype). :math:`d \epsilon
\lVert A\rVert_2` is the backward error of a symmetric eigensolver; the factor :math:`c` covers
the rounding of the sums that produced the matrix (a float32 Gram matrix summed over some
thousands of rows).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch

from nfm._utils.arrays import array_kind, restore_kind, to_tensor
from nfm._utils.validation import check_square
from nfm.exceptions import NFMInputError, NumericalWarning

__all__ = [
    "PSD_ROUNDING_FACTOR",
    "PSDEigh",
    "power_from_eigh",
    "psd_eigh",
    "rounding_eps",
    "symmetric_matrix_power",
]

PSD_ROUNDING_FACTOR = 100.0
"""The factor :math:`c` of the rounding tolerance :math:`c\\, d\\, \\epsilon \\max|\\lambda|`."""


class PSDEigh(NamedTuple):
    r"""Eigendecomposition of a PSD matrix, :math:`A = U \mathrm{diag}(\lambda) U^T`.

    Attributes
    ----------
    values : (d,) tensor
        Eigenvalues in ascending order, negative ones clamped to 0.
    vectors : (d, d) tensor
        Orthonormal eigenvectors, one per column.
    eps : float
        Machine epsilon of the precision the matrix was computed in.
    scale : float
        The magnitude its rounding errors are relative to (:math:`\max_i|\lambda_i|` unless
        given to :func:`psd_eigh`).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    eps: float
    scale: float


def rounding_eps(*dtypes: torch.dtype) -> float:
    """Machine epsilon of the coarsest floating dtype among ``dtypes`` (integers are exact)."""
    floating = [dt for dt in dtypes if dt.is_floating_point]
    return max((torch.finfo(dt).eps for dt in floating), default=torch.finfo(torch.float64).eps)


def psd_eigh(
    matrix: torch.Tensor,
    *,
    name: str = "matrix",
    dtype: torch.dtype | None = None,
    scale: float | None = None,
    stacklevel: int = 2,
) -> PSDEigh:
    r"""Eigendecomposition of the symmetric part of a PSD matrix, negative eigenvalues clamped.

    Computes :math:`\tfrac12 (A + A^T) = U \mathrm{diag}(\lambda) U^T` (``torch.linalg.eigh``)
    in ``dtype`` (default the matrix's own; float64 for an integer matrix) and returns
    :math:`\max(\lambda, 0)`. Eigenvalues in :math:`[-\tau, 0)` with
    :math:`\tau = c\, d\, \epsilon \max_i|\lambda_i|` (module docstring) are rounding and are
    clamped silently; an eigenvalue below :math:`-\tau` means the matrix is not PSD, and it is
    clamped too, with a :class:`~nfm.exceptions.NumericalWarning` (the result is then the power
    of the PSD part of the matrix, not of the matrix).

    Parameters
    ----------
    matrix : (d, d) tensor
    name : str
        The argument's name, for the messages.
    dtype : torch.dtype, optional
        Precision to compute in; :math:`\epsilon` is that of the coarser of ``dtype`` and the
        matrix's dtype, so a float32 matrix computed in float64 keeps float32's tolerance.
    scale : float, optional
        The magnitude the matrix's rounding errors are relative to, in place of
        :math:`\max_i|\lambda_i|`: for a difference of PSD matrices, such as a centred AGOP
        :math:`S/m - \bar J^T \bar J`, the norm of the larger term (the difference can be zero
        up to rounding, and its own eigenvalues then say nothing about its accuracy).
    stacklevel : int
        Where the warning points: 1 at the caller of this function, 2 (default) at its caller.

    Returns
    -------
    PSDEigh
    """
    check_square(matrix, name)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise NFMInputError(f"dtype must be a floating torch.dtype or None; got {dtype!r}")
    compute_dtype = dtype or (matrix.dtype if matrix.is_floating_point() else torch.float64)
    eps = rounding_eps(matrix.dtype, compute_dtype)
    a = matrix.to(compute_dtype)
    values, vectors = torch.linalg.eigh(0.5 * (a + a.T))
    d = int(a.shape[0])
    largest = float(values.abs().max()) if d else 0.0
    reference = largest if scale is None else max(largest, float(scale))
    if d > 0:
        smallest = float(values.min())
        tolerance = PSD_ROUNDING_FACTOR * d * eps * reference
        if smallest < -tolerance:
            n_negative = int((values < -tolerance).sum())
            warnings.warn(
                f"{name} is not positive semi-definite: its smallest eigenvalue is "
                f"{smallest:.3e}, below the rounding tolerance -{tolerance:.3e} "
                f"(= -{PSD_ROUNDING_FACTOR:g} * d * eps * scale with d={d}, eps={eps:.2e}, "
                f"scale={reference:.3e}, max|eigenvalue|={largest:.3e}); {n_negative} negative "
                "eigenvalue(s) clamped to 0, so the result is a function of the matrix's PSD "
                "part. If it is PSD in exact arithmetic, it lost this much accuracy to rounding "
                "or cancellation (a centred AGOP in float32, say): compute it in float64.",
                NumericalWarning,
                stacklevel=stacklevel + 1,
            )
    return PSDEigh(values.clamp(min=0), vectors, eps, reference)


def power_from_eigh(eig: PSDEigh, power: float) -> torch.Tensor:
    r""":math:`U \mathrm{diag}(\lambda^\alpha) U^T` from :func:`psd_eigh`, symmetrised.

    ``power = 0`` gives the projector onto the range: eigenvalues above
    :math:`d\, \epsilon\, \mathrm{scale}` (:class:`PSDEigh`) count as non-zero, the others
    as zero.
    """
    values, vectors = eig.values, eig.vectors
    if power == 0:
        scaled = (values > values.shape[0] * eig.eps * eig.scale).to(values.dtype)
    else:
        scaled = values.pow(power)
    result = (vectors * scaled) @ vectors.T
    return 0.5 * (result + result.T)


def symmetric_matrix_power(
    matrix: Any,
    power: float,
    *,
    dtype: torch.dtype | None = None,
    name: str = "matrix",
) -> Any:
    r"""Power of a symmetric positive semi-definite matrix.

    .. math:: A^\alpha = U \,\mathrm{diag}(\max(\lambda_i, 0)^\alpha)\, U^T,
              \qquad \tfrac12 (A + A^T) = U \,\mathrm{diag}(\lambda)\, U^T .

    Every power, 1 included, follows this one rule, so the result is continuous in
    :math:`\alpha`. Negative eigenvalues within rounding of zero are clamped silently; a
    materially negative one (below :math:`-100\, d\, \epsilon \max_i|\lambda_i|`, see
    :func:`psd_eigh`) is clamped with a :class:`~nfm.exceptions.NumericalWarning`.
    ``power = 0`` gives the projector onto the range of ``A`` (zero eigenvalues stay zero).

    Parameters
    ----------
    matrix : (d, d) array or tensor
        A symmetric PSD matrix.
    power : float
        The exponent :math:`\alpha`; must be finite and non-negative.
    dtype : torch.dtype, optional
        Compute (and return) in this dtype, e.g. ``torch.float64`` for a float32 AGOP whose
        tiny eigenvalues matter at small powers; the rounding tolerance stays that of the
        matrix's own dtype. Default: the matrix's dtype (float64 for integers).
    name : str
        The argument's name in error and warning messages.

    Returns
    -------
    (d, d) array or tensor, the same kind and device as ``matrix``, in ``dtype`` (default the
    matrix's floating dtype).

    Warns
    -----
    NumericalWarning
        When the matrix is materially not PSD.
    """
    try:
        alpha = float(power)
    except (TypeError, ValueError):
        alpha = float("nan")
    if not math.isfinite(alpha) or alpha < 0:
        raise NFMInputError(f"power must be a finite number >= 0; got {power!r}")
    kind = array_kind(matrix)
    a = to_tensor(matrix, name)
    eig = psd_eigh(a, name=name, dtype=dtype, stacklevel=2)
    return restore_kind(power_from_eigh(eig, alpha), kind)
