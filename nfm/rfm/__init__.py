"""Recursive Feature Machines: the fit loop, its scikit-learn estimators and a tuned search.

==========================  ====================================================================
``nfm.rfm.fit``             the pure fit loop (:func:`~nfm.rfm.fit.fit_path`) and ridge solves
``nfm.rfm.selection``       selection rules (leave-one-out, holdout, last) and row samples
``nfm.rfm.metric``          the starting metric and the AGOP -> metric update
``nfm.rfm.scoring``         the selection scores (R^2 / accuracy, mean squared error)
``nfm.rfm.calibration``     the classifier's softmax temperature
``nfm.rfm.bandwidth``       the median bandwidth rule
``nfm.rfm.params``          hyper-parameter checks, :data:`DEFAULT_REG_GRID`
``nfm.rfm.validation``      ``X`` / ``y`` checks
``nfm.rfm.estimators``      :class:`RFMRegressor`, :class:`RFMClassifier`
``nfm.rfm.search``          :class:`RFMSearchRegressor`, :class:`RFMSearchClassifier`
``nfm.rfm.large_n``         exact fit or AGOP-split tree (``leaf_size``, ``memory_limit``)
``nfm.rfm.partition``       the AGOP-split tree of exact leaves
``nfm.rfm.memory``          memory estimates, :class:`ExactFitMemoryError`
==========================  ====================================================================
"""

from nfm.rfm.estimators import RFMClassifier, RFMRegressor
from nfm.rfm.memory import ExactFitMemoryError
from nfm.rfm.params import DEFAULT_REG_GRID
from nfm.rfm.search import RFMSearchClassifier, RFMSearchRegressor, default_search_space

__all__ = [
    "DEFAULT_REG_GRID",
    "ExactFitMemoryError",
    "RFMClassifier",
    "RFMRegressor",
    "RFMSearchClassifier",
    "RFMSearchRegressor",
    "default_search_space",
]
