"""Kernels by name: :data:`KERNELS` and :func:`make_kernel`."""

from __future__ import annotations

from nfm.exceptions import NFMInputError
from nfm.kernels.base import Kernel
from nfm.kernels.generalized import GeneralizedLaplaceKernel, ProductLaplaceKernel
from nfm.kernels.radial import GaussianKernel, LaplaceKernel

__all__ = ["KERNELS", "make_kernel"]

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

    Raises
    ------
    NFMInputError
        For an unknown name or an invalid bandwidth, exponent or kernel power.
    """
    if name not in KERNELS:
        raise NFMInputError(f"kernel must be one of {sorted(KERNELS)}; got {name!r}")
    if name == "generalized_laplace":
        return GeneralizedLaplaceKernel(bandwidth, exponent=exponent, kernel_power=kernel_power)
    if name == "product_laplace":
        return ProductLaplaceKernel(bandwidth, exponent=exponent)
    return KERNELS[name](bandwidth)
