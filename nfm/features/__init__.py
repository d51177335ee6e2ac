"""Feature matrices of any PyTorch model: the AGOP of every selected layer and the NFM W^T W.

The flow: data chunks (:mod:`~nfm.features.data`) -> the gradient engine
(:mod:`~nfm.features.jacobians`, batched vector-Jacobian products of the selected outputs,
:mod:`~nfm.features.outputs`) -> mergeable partial sums (:mod:`~nfm.features.accumulator`) ->
the front ends :func:`compute_agop` (:mod:`~nfm.features.agop`) and :func:`compute_nfm`
(:mod:`~nfm.features.nfm`).
"""

from nfm.features.accumulator import AGOPAccumulator
from nfm.features.agop import accumulate_agop, compute_agop
from nfm.features.nfm import compute_nfm
from nfm.features.outputs import GaussianSketch, OutputSpec

__all__ = [
    "AGOPAccumulator",
    "GaussianSketch",
    "OutputSpec",
    "accumulate_agop",
    "compute_agop",
    "compute_nfm",
]
