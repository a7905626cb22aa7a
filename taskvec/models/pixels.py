"""Lazily preprocessed images, for datasets too large to hold as float tensors.

`LazyImages(items, transform)` stands in for a float tensor N×3×S×S in a backbone's batch
dict: `len(x)`, `x[a:b]` and `x[index]` (a LongTensor, a numpy array or a list) return the
preprocessed float tensor of those images, loading them on demand. Items are file paths
(decoded with PIL) or uint8 arrays (N×H×W or N×H×W×3).

Every image goes through the same two steps: the geometric part of the model's own
preprocessing (resize, crop, RGB) producing uint8 S×S×3, then `(x / 255 - mean) / std`. With
a cache folder the uint8 images of a split of image files are computed once into a
memory-mapped .npy keyed by the geometric transform and the split's identity (file paths
and sizes), so repeated passes (epochs, α sweeps) only read and normalize instead of
decoding. Splits held as arrays in memory (MNIST, SVHN) have nothing to decode and are not
cached: resizing them is cheap, and caching them at 224 px would take 25 GB. Cached and
uncached images are bit-identical: the cache holds exactly the intermediate uint8 array.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TaskvecError

CACHE_FORMAT = "taskvec.pixels/1"
BUILD_CHUNK = 512


def default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2)))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=default_workers(), thread_name_prefix="taskvec-pixels")
    return _POOL


def _is_rgb_conversion(transform: Any) -> bool:
    name = getattr(transform, "__name__", type(transform).__name__)
    return "convert" in name.lower() and "rgb" in name.lower() or name == "MaybeConvertMode"


@dataclass(frozen=True)
class ImageTransform:
    """The geometric part of a preprocessing pipeline (PIL in, PIL out) and the normalization.

    `from_torchvision(compose)` splits a torchvision/open_clip `Compose` at its ToTensor step:
    what comes before (resize, crop) is applied to RGB PIL images; the Normalize after it
    gives `mean` and `std`.
    """

    geometric: tuple[Callable, ...]
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_torchvision(cls, compose: Any, size: int) -> ImageTransform:
        steps = list(getattr(compose, "transforms", [compose]))
        geometric, mean, std, seen_tensor = [], None, None, False
        for step in steps:
            name = type(step).__name__
            if "ToTensor" in name:
                seen_tensor = True
            elif name == "Normalize":
                mean, std = tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std)
            elif seen_tensor:
                raise TaskvecError(f"unsupported preprocessing step after ToTensor: {step!r}")
            elif not _is_rgb_conversion(step):
                geometric.append(step)
        if mean is None or std is None:
            raise TaskvecError(f"preprocessing has no Normalize step: {compose!r}")
        return cls(tuple(geometric), int(size), mean, std)  # type: ignore[arg-type]

    def describe(self) -> str:
        """What determines the uint8 output (part of the cache key)."""
        return " | ".join(repr(t) for t in self.geometric) + f" | rgb uint8 {self.size}"

    def to_uint8(self, item: Any) -> np.ndarray:
        """One raw item (path or uint8 array) -> uint8 S×S×3."""
        from PIL import Image

        if isinstance(item, (str, os.PathLike)):
            try:
                with Image.open(item) as opened:
                    image = opened.convert("RGB")
            except (OSError, ValueError) as exc:
                raise TaskvecError(f"cannot read image {item}: {exc}") from None
        else:
            array = np.asarray(item)
            if array.dtype != np.uint8:
                raise TaskvecError(f"image arrays must be uint8, got {array.dtype}")
            image = Image.fromarray(array, "L" if array.ndim == 2 else "RGB").convert("RGB")
        for step in self.geometric:
            image = step(image)
        out = np.asarray(image, dtype=np.uint8)
        if out.shape != (self.size, self.size, 3):
            raise TaskvecError(f"preprocessing gave an image of shape {out.shape}, expected {(self.size, self.size, 3)}")
        return out

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 N×S×S×3 -> float N×3×S×S, as ToTensor + Normalize compute it."""
        x = torch.as_tensor(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div(255)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)


def source_key(items: Any) -> str:
    """Identity of a split's raw items: file paths and sizes, or an array's bytes."""
    digest = hashlib.sha256()
    if isinstance(items, np.ndarray):
        digest.update(f"array {items.dtype} {items.shape}".encode())
        digest.update(np.ascontiguousarray(items).data)
        return digest.hexdigest()
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            try:
                size = os.stat(item).st_size
            except OSError:
                size = -1
            digest.update(f"{os.fspath(item)}\t{size}\n".encode())
        else:
            array = np.ascontiguousarray(np.asarray(item))
            digest.update(f"array {array.dtype} {array.shape}".encode())
            digest.update(array.data)
    return digest.hexdigest()


class LazyImages:
    """A float N×3×S×S tensor of preprocessed images, computed (or read from cache) on access."""

    def __init__(
        self,
        items: Sequence[Any] | np.ndarray,
        transform: ImageTransform,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        progress: bool = True,
    ):
        self.items = items
        self.transform = transform
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.workers = workers
        self.progress = progress
        self._cached: np.ndarray | None = None

    # ----- tensor-like interface ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.transform.size, self.transform.size)

    def __getitem__(self, index: Any) -> torch.Tensor:
        positions = self._positions(index)
        return self.transform.normalize(self.uint8(positions))

    def __repr__(self) -> str:
        where = f", cache={self.cache_dir}" if self.cache_dir else ""
        return f"LazyImages(n={len(self)}, size={self.transform.size}{where})"

    def _positions(self, index: Any) -> np.ndarray:
        n = len(self)
        if isinstance(index, slice):
            return np.arange(n)[index]
        if isinstance(index, (int, np.integer)):
            return np.asarray([index if index >= 0 else n + index])
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        positions = np.asarray(index)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        positions = positions.astype(np.int64).reshape(-1)
        if len(positions) and (positions.min() < -n or positions.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return np.where(positions < 0, positions + n, positions)

    # ----- uint8 images -----------------------------------------------------------------------
    def uint8(self, positions: np.ndarray) -> np.ndarray:
        """uint8 images (len(positions)×S×S×3) at these positions."""
        if self.cache_dir is not None and not isinstance(self.items, np.ndarray):
            cached = self._cache()
            return np.asarray(cached[positions])
        return self._compute(positions)

    def _compute(self, positions: np.ndarray) -> np.ndarray:
        s = self.transform.size
        out = np.empty((len(positions), s, s, 3), dtype=np.uint8)
        if len(positions) == 0:
            return out

        def work(i: int) -> None:
            out[i] = self.transform.to_uint8(self.items[int(positions[i])])

        if len(positions) == 1 or (self.workers or default_workers()) == 1:
            for i in range(len(positions)):
                work(i)
        else:
            list(_pool().map(work, range(len(positions))))
        return out

    # ----- disk cache -------------------------------------------------------------------------
    def cache_path(self) -> Path:
        assert self.cache_dir is not None
        key = hashlib.sha256(f"{CACHE_FORMAT}\n{self.transform.describe()}\n{source_key(self.items)}".encode()).hexdigest()[:32]
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _cache(self) -> np.ndarray:
        if self._cached is not None:
            return self._cached
        path = self.cache_path()
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait and reuse it
                if not path.exists():
                    self._build(path)
        array = np.load(path, mmap_mode="r")
        if array.shape != (len(self), self.transform.size, self.transform.size, 3) or array.dtype != np.uint8:
            raise TaskvecError(f"pixel cache {path} has shape {array.shape} {array.dtype}; delete it to rebuild")
        self._cached = array
        return array

    def _build(self, path: Path) -> None:
        from tqdm.auto import tqdm

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        s = self.transform.size
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(self), s, s, 3))
        try:
            quiet = not self.progress or len(self) < 1000
            bar = tqdm(total=len(self), desc=f"caching {len(self)} images at {s}px", disable=True if quiet else None, leave=False)
            for start in range(0, len(self), BUILD_CHUNK):
                positions = np.arange(start, min(start + BUILD_CHUNK, len(self)))
                out[start : start + len(positions)] = self._compute(positions)
                bar.update(len(positions))
            bar.close()
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
