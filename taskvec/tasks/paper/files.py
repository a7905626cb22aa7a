"""The data root and the folder conventions every paper dataset shares: where the root is,
which layout of a dataset is present (and the message naming what is not), image folders walked
in torchvision's order, and the seeded validation split. One place, so that each loader only
says which files it reads."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...errors import TaskvecError
from ...lazy import lazy_import
from ..base import Split
from .catalog import HOW

torch = lazy_import("torch")

ENV_ROOT = "TASKVEC_DATA"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------ utilities
def resolve_root(root: str | Path | None) -> Path | None:
    """The data root: the one given, else $TASKVEC_DATA, else None."""
    if root is None or root == "":
        root = os.environ.get(ENV_ROOT) or None
    return Path(root).expanduser() if root else None


def torch_random_split(n: int, fraction: float, cap: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held_out) exactly as `torch.utils.data.random_split(range(n), [n - k, k], seeded)`
    draws them, k = min(int(n · fraction), cap): the paper code's validation split."""
    k = int(n * fraction)
    if cap is not None:
        k = min(k, cap)
    k = max(1, k)
    if k >= n:
        raise TaskvecError(f"cannot hold out {k} of {n} examples for validation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[: n - k]), np.sort(order[n - k :])


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def image_folder(
    folder: Path, classes: list[str] | None = None, keep: Callable[[str], bool] | None = None
) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, labels, classes) in torchvision ImageFolder order: sorted classes, sorted walk."""
    classes = class_folders(folder) if classes is None else classes
    paths, labels = [], []
    for label, name in enumerate(classes):
        target = folder / name
        if not target.is_dir():
            continue
        for base, _, files in sorted(os.walk(target, followlinks=True)):
            for file in sorted(files):
                if _is_image(file) and (keep is None or keep(file)):
                    paths.append(os.path.join(base, file))
                    labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64), classes


def _split(paths: list[str] | np.ndarray, labels: np.ndarray, what: str) -> Split:
    if len(labels) == 0:
        raise TaskvecError(f"{what}: no images found")
    return Split(paths, np.asarray(labels, dtype=np.int64))


def _need(root: Path | None, name: str, *candidates: tuple[str, ...]) -> list[str]:
    """[] if one candidate (a tuple of relative paths, all required) exists, else one message."""
    if root is None:
        return [f"{name}: no data root; set data.root in the config or ${ENV_ROOT} (expects {root_hint(candidates[0])}); {HOW[name]}"]
    for group in candidates:
        if all((root / rel).exists() for rel in group):
            return []
    first = candidates[0]
    missing = [rel for rel in first if not (root / rel).exists()]
    return [f"{name}: missing {', '.join(str(root / rel) for rel in missing)}; {HOW[name]}"]


def root_hint(group: tuple[str, ...]) -> str:
    return ", ".join(f"<root>/{rel}" for rel in group)


def _require(root: Path | None, name: str, *candidates: tuple[str, ...]) -> Path:
    messages = _need(root, name, *candidates)
    if messages:
        raise TaskvecError(messages[0])
    assert root is not None
    return root


def _first_layout(root: Path, *candidates: tuple[str, ...]) -> int:
    for i, group in enumerate(candidates):
        if all((root / rel).exists() for rel in group):
            return i
    return -1


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises several kinds
        raise TaskvecError(f"cannot read {path}: {exc}") from None
