"""A small MLP factory and a plain classifier training loop that reports to a tracker."""

from nfm.training.loop import TrainResult, accuracy, train_classifier
from nfm.training.mlp import ACTIVATIONS, make_mlp

__all__ = ["ACTIVATIONS", "TrainResult", "accuracy", "make_mlp", "train_classifier"]
