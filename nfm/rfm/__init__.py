"""Recursive Feature Machines: scikit-learn estimators and a tuned search over them."""

from nfm.rfm.estimators import DEFAULT_REG_GRID, RFMClassifier, RFMRegressor
from nfm.rfm.search import RFMSearchClassifier, RFMSearchRegressor, default_search_space

__all__ = [
    "DEFAULT_REG_GRID",
    "RFMClassifier",
    "RFMRegressor",
    "RFMSearchClassifier",
    "RFMSearchRegressor",
    "default_search_space",
]
