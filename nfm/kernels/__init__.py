r"""Kernels in a learned metric, with their closed-form input gradients and the kernel AGOP.

Every kernel is a small picklable object (no lambdas) with

* :meth:`Kernel.gram` -- the kernel matrix :math:`K_{ij} = k_M(x_i, z_j)`, filled block by block
  (optionally into a preallocated matrix, so that the ``n x n`` Gram matrix is the only large
  allocation);
* :meth:`Kernel.predictor_values` -- :math:`f_c(x) = \sum_i a_{ic} k_M(x, z_i)` in row blocks;
* :meth:`Kernel.gradient` -- the input gradient of the kernel predictor, a ``(b, c, d)`` tensor;
* :meth:`Kernel.agop` -- the average gradient outer product
  :math:`G = \frac1m \sum_{x} \sum_c \nabla f_c(x) \nabla f_c(x)^T`, accumulated block by block;
  the ``m x c x d`` gradient tensor is never built.

Kernels (with :math:`\lVert u\rVert_M = \sqrt{u^T M u}` and bandwidth :math:`L`):

* :class:`LaplaceKernel`: :math:`\exp(-\lVert x - z\rVert_M / L)` and
  :class:`GaussianKernel`: :math:`\exp(-\lVert x - z\rVert_M^2 / (2 L^2))`
  (:mod:`nfm.kernels.radial`);
* :class:`GeneralizedLaplaceKernel`: :math:`\exp(-\lVert M^{1/2}(x - z)\rVert_p^q / L^q)` and
  :class:`ProductLaplaceKernel` (``q = p``) (:mod:`nfm.kernels.generalized`).

Squared Mahalanobis distances (:mod:`nfm.kernels.distances`) use the expansion
:math:`x^T M x + z^T M z - 2 x^T M z` on data centred by one common vector, and recompute small
distances from explicit differences; near-duplicate pairs are counted
(:class:`GramInfo`) and their gradient terms dropped.

Modules: :mod:`~nfm.kernels.base` (the interface and drivers), :mod:`~nfm.kernels.distances`,
:mod:`~nfm.kernels.radial`, :mod:`~nfm.kernels.generalized`, :mod:`~nfm.kernels.registry`
(:func:`make_kernel`).
"""

from nfm.kernels.base import DEFAULT_BLOCK_ELEMENTS, GramInfo, Kernel
from nfm.kernels.distances import DIRECT_FRACTION, MahalanobisDistances, rounding_threshold
from nfm.kernels.generalized import GeneralizedLaplaceKernel, ProductLaplaceKernel
from nfm.kernels.radial import GaussianKernel, LaplaceKernel, RadialKernel
from nfm.kernels.registry import KERNELS, make_kernel

__all__ = [
    "DEFAULT_BLOCK_ELEMENTS",
    "DIRECT_FRACTION",
    "KERNELS",
    "GaussianKernel",
    "GeneralizedLaplaceKernel",
    "GramInfo",
    "Kernel",
    "LaplaceKernel",
    "MahalanobisDistances",
    "ProductLaplaceKernel",
    "RadialKernel",
    "make_kernel",
    "rounding_threshold",
]
