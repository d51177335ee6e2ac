"""Small models (an MLP, a CNN) and training loops that report to a tracker."""

from nfm.training.cnn import conv_layer_names, make_cnn, train_cnn
from nfm.training.loop import TrainResult, accuracy, train_classifier
from nfm.training.mlp import ACTIVATIONS, make_mlp

__all__ = [
    "ACTIVATIONS",
    "TrainResult",
    "accuracy",
    "conv_layer_names",
    "make_cnn",
    "make_mlp",
    "train_classifier",
    "train_cnn",
]
