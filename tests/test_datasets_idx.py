"""The IDX reader and the Fashion-MNIST loader, on tiny files written here.

The files are written by :func:`write_idx` below straight from the format's description (magic
``0, 0, type, ndim``, big-endian uint32 sizes, big-endian row-major elements), independently of
the reader under test.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfm.datasets import images
from nfm.datasets.images import (
    FASHION_MNIST_CLASSES,
    fashion_mnist_available,
    load_fashion_mnist,
    read_idx,
)
from nfm.exceptions import NFMInputError

TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    kind = array.dtype.kind + str(array.dtype.itemsize)
    header = bytes([0, 0, TYPE_CODES[kind], array.ndim])
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> Path:
    data = idx_bytes(array)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def write_fashion(folder: Path, n_train: int = 6, n_test: int = 4, size=(3, 5)) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pictures = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", pictures)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


# ---------------------------------------------------------------------------- read_idx
@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    kind=st.sampled_from(sorted(TYPE_CODES)),
    compress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_idx_round_trips_every_type_and_shape(tmp_path_factory, shape, kind, compress, seed):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(kind)
    if dtype.kind == "f":
        array = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    folder = tmp_path_factory.mktemp("idx")
    path = write_idx(folder / ("a.gz" if compress else "a.idx"), array, compress=compress)
    out = read_idx(path)
    assert out.shape == tuple(shape)
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # writable, not a view of a read-only buffer


def test_read_idx_mnist_header_sizes(tmp_path):
    pictures = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 1], dtype=np.uint8)
    assert len(idx_bytes(pictures)) == 16 + pictures.size  # the 16-byte image header
    assert len(idx_bytes(labels)) == 8 + labels.size  # the 8-byte label header
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i.gz", pictures)), pictures)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l.gz", labels)), labels)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00", b"\x01\x00\x08\x01" + bytes(8), b"\x00\x00\x07\x01" + bytes(8)],
    ids=["empty", "short", "bad-zero-bytes", "bad-type"],
)
def test_read_idx_refuses_non_idx_data(tmp_path, data):
    path = tmp_path / "x.idx"
    path.write_bytes(data)
    with pytest.raises(NFMInputError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_refuses_wrong_lengths(tmp_path):
    good = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    (tmp_path / "header.idx").write_bytes(good[:6])  # 2-d header needs 12 bytes
    with pytest.raises(NFMInputError, match="truncated"):
        read_idx(tmp_path / "header.idx")
    (tmp_path / "short.idx").write_bytes(good[:-1])
    with pytest.raises(NFMInputError, match="says"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "long.idx").write_bytes(good + b"\x00")
    with pytest.raises(NFMInputError, match="says"):
        read_idx(tmp_path / "long.idx")


# ---------------------------------------------------------------------------- Fashion-MNIST
def test_load_fashion_mnist_from_a_folder(tmp_path):
    write_fashion(tmp_path)
    assert fashion_mnist_available(tmp_path)
    for split, n in (("train", 6), ("test", 4)):
        data = load_fashion_mnist(split, directory=tmp_path)
        prefix = "train" if split == "train" else "t10k"
        raw = read_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz")
        assert data.X.shape == (n, 15) and data.X.dtype == np.float32
        assert data.image_shape == (3, 5)
        np.testing.assert_allclose(data.X, raw.reshape(n, 15) / 255.0, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(data.y, np.arange(n) % 10)
        assert data.y.dtype == np.int64


def test_load_fashion_mnist_missing_files_name_the_package(tmp_path, monkeypatch):
    assert not fashion_mnist_available(tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(directory=tmp_path)
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test")


def test_load_fashion_mnist_refuses_bad_split_and_mismatched_files(tmp_path):
    write_fashion(tmp_path)
    with pytest.raises(NFMInputError, match="split"):
        load_fashion_mnist("validation", directory=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(NFMInputError, match="do not match"):
        load_fashion_mnist("train", directory=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(6, 10, dtype=np.uint8))
    with pytest.raises(NFMInputError, match=r"0\.\.9"):
        load_fashion_mnist("train", directory=tmp_path)


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist_has_its_documented_sizes():
    for split, n in (("train", 60000), ("test", 10000)):
        data = load_fashion_mnist(split)
        assert data.X.shape == (n, 784) and data.image_shape == (28, 28)
        assert 0.0 <= data.X.min() and data.X.max() <= 1.0
        np.testing.assert_array_equal(np.bincount(data.y), np.full(10, n // 10))
    assert len(FASHION_MNIST_CLASSES) == 10
