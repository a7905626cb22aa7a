"""Loaders of the two digit datasets, MNIST and SVHN, which ship as arrays (IDX files, .mat
files) rather than image files: their splits hold uint8 images in memory, not paths."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from ...errors import TaskvecError
from ..base import Split
from .catalog import HOW
from .files import _loadmat, _need, _require


# ----------------------------------------------------------------------------------- MNIST
def _idx_path(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / "MNIST/raw" / name).exists():
            return root / "MNIST/raw" / name
    return None


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_missing(root: Path | None) -> list[str]:
    if root is None:
        return _need(root, "MNIST", ("MNIST/raw",))
    absent = [stem for stem in MNIST_FILES if _idx_path(root, stem) is None]
    if absent:
        return [f"MNIST: missing {', '.join(str(root / 'MNIST/raw' / s) for s in absent)}; {HOW['MNIST']}"]
    return []


def read_idx_file(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST), plain or gzip'd."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise TaskvecError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    header = 4 + 4 * ndim
    if len(raw) - header != int(np.prod(shape)):
        raise TaskvecError(f"{path}: IDX header says {shape} but holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


@functools.cache
def _load_mnist(root: Path) -> tuple[Split, Split]:
    messages = _mnist_missing(root)
    if messages:
        raise TaskvecError(messages[0])
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx_file(_idx_path(root, f"{prefix}-images-idx3-ubyte"))  # type: ignore[arg-type]
        labels = read_idx_file(_idx_path(root, f"{prefix}-labels-idx1-ubyte"))  # type: ignore[arg-type]
        if len(images) != len(labels):
            raise TaskvecError(f"MNIST {prefix}: {len(images)} images but {len(labels)} labels")
        splits.append(Split(images, labels.astype(np.int64)))
    return splits[0], splits[1]


# ------------------------------------------------------------------------------------ SVHN
SVHN = (("svhn/train_32x32.mat", "svhn/test_32x32.mat"),)


@functools.cache
def _load_svhn(root: Path) -> tuple[Split, Split]:
    _require(root, "SVHN", *SVHN)
    splits = []
    for name in ("train", "test"):
        data = _loadmat(root / f"svhn/{name}_32x32.mat")
        images = np.ascontiguousarray(np.transpose(np.asarray(data["X"], dtype=np.uint8), (3, 0, 1, 2)))
        labels = np.asarray(data["y"]).reshape(-1).astype(np.int64)
        labels[labels == 10] = 0  # SVHN labels the digit 0 as 10
        if len(images) != len(labels):
            raise TaskvecError(f"SVHN {name}: {len(images)} images but {len(labels)} labels")
        splits.append(Split(images, labels))
    return splits[0], splits[1]
