"""Image datasets: MNIST, Fashion-MNIST and scikit-learn's 8×8 digits, as uint8 arrays.

The IDX files are found, verified (size and SHA-256 of their decompressed bytes) and, if missing,
downloaded by :mod:`immulib.files`; this module parses them. The digit-pair task built on these
images lives in :mod:`immulib.pairs`.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validate import choice, integer
from .files import DamagedFileError, locate

__all__ = [
    "MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "SPLITS",
    "ImageSet",
    "digit_pair",
    "load_digits_8x8",
    "load_fashion_mnist",
    "load_mnist",
]

SPLITS = ("train", "test")

#: MNIST's training-pixel mean and standard deviation on [0, 1], rounded as the authors (and
#: torchvision's examples) use them to normalise: x ↦ (x/255 − MNIST_MEAN) / MNIST_STD.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

#: Public mirrors, tried in order. Tests replace these with ``file://`` or loopback folders.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
}


class ImageSet(NamedTuple):
    """Images (N × H × W, uint8) and their labels (N, uint8).

    Chapter: {ref}`ch-mnist-pairs`.
    """

    images: np.ndarray
    labels: np.ndarray


def _parse_idx(path: Path, ndim_expected: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim != ndim_expected:
        raise DamagedFileError(
            f"{path}: not an unsigned-byte IDX file with {ndim_expected} dimensions (magic {magic})"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_idx_pair(
    dataset: str, split: str, data_dir, download: bool, timeout
) -> ImageSet:
    choice(split, "split", SPLITS)
    prefix = "train" if split == "train" else "t10k"
    images = _parse_idx(
        locate(
            dataset,
            f"{prefix}-images-idx3-ubyte.gz",
            data_dir,
            download=download,
            timeout=timeout,
        ),
        3,
    )
    labels = _parse_idx(
        locate(
            dataset,
            f"{prefix}-labels-idx1-ubyte.gz",
            data_dir,
            download=download,
            timeout=timeout,
        ),
        1,
    )
    if len(images) != len(labels):  # cannot happen with verified files; kept as a guard
        raise DamagedFileError(
            f"{dataset} {split}: {len(images)} images but {len(labels)} labels"
        )
    return ImageSet(images, labels)


def load_mnist(
    split: str = "train",
    *,
    data_dir=None,
    download: bool = True,
    timeout: float | None = None,
) -> ImageSet:
    """MNIST digits: 60,000 training or 10,000 test images, 28×28 uint8, labels 0–9.

    Files are found, verified and downloaded as :func:`immulib.files.locate` says; ``timeout``
    is the seconds a mirror may stay silent (default ``$IMMULIB_TIMEOUT``, else 20).
    Chapter: {ref}`ch-mnist-pairs`.
    """
    return _load_idx_pair("mnist", split, data_dir, download, timeout)


def load_fashion_mnist(
    split: str = "train",
    *,
    data_dir=None,
    download: bool = True,
    timeout: float | None = None,
) -> ImageSet:
    """Fashion-MNIST: 60,000 training or 10,000 test images, 28×28 uint8, labels 0–9.

    As :func:`load_mnist`. Chapter: {ref}`ch-deep-nets`.
    """
    return _load_idx_pair("fashion_mnist", split, data_dir, download, timeout)


def load_digits_8x8() -> ImageSet:
    """scikit-learn's 1,797 handwritten digits (8×8, values 0–16 as uint8): tiny and offline.

    Chapter: {ref}`ch-mnist-pairs`.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    return ImageSet(d.images.astype(np.uint8), d.target.astype(np.uint8))


def digit_pair(
    data: ImageSet, a: int, b: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images of class ``a`` (for D_P) and of class ``b`` (for D_H), balanced in count.

    As in the authors' code, both classes are subsampled at random to the smaller class's count.
    Returns two uint8 arrays of equal length; ``seed`` makes the subsample reproducible.
    Chapter: {ref}`ch-mnist-pairs`.
    """
    if not isinstance(data, ImageSet):
        raise TypeError(f"data must be an ImageSet, got {type(data).__name__}")
    classes = set(np.unique(data.labels).tolist())
    for arg, c in (("a", a), ("b", b)):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"{arg} must be an int class label, got {type(c).__name__}")
        if int(c) not in classes:
            raise ValueError(
                f"{arg}={c} is not a label of this dataset ({sorted(classes)})"
            )
    if a == b:
        raise ValueError(f"a and b must be different classes, got a = b = {a}")
    seed = integer(seed, "seed", minimum=0)
    idx_a = np.flatnonzero(data.labels == a)
    idx_b = np.flatnonzero(data.labels == b)
    n = min(len(idx_a), len(idx_b))
    rng = np.random.default_rng(seed)
    idx_a = np.sort(rng.choice(idx_a, n, replace=False))
    idx_b = np.sort(rng.choice(idx_b, n, replace=False))
    return data.images[idx_a], data.images[idx_b]
