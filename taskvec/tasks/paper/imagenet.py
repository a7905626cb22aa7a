"""ImageNet, the negation control: its image folders, and its class names and prompt templates,
which come from open_clip (CLIP's own) rather than from the data."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path
from typing import Any

from ...errors import TaskvecError
from ..base import Split
from .files import _first_layout, _require, _split, class_folders, image_folder

# -------------------------------------------------------------------------------- ImageNet
IMAGENET = (("imagenet/train", "imagenet/val"), ("imagenet/train", "imagenet/val_in_folder"))


@functools.cache
def imagenet_metadata() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, templates): CLIP's, as open_clip ships them. Its zero_shot_metadata.py
    (plain Python) is read on its own, since importing open_clip imports torch and `taskvec
    list` names this task."""
    metadata = _open_clip_file_module("zero_shot_metadata")
    return tuple(metadata.IMAGENET_CLASSNAMES), tuple(t("{}") for t in metadata.OPENAI_IMAGENET_TEMPLATES)


def _open_clip_file_module(name: str) -> Any:
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise TaskvecError("open_clip is not installed: pip install 'open-clip-torch==3.3.0'")
    path = Path(list(spec.submodule_search_locations)[0]) / f"{name}.py"
    try:
        file_spec = importlib.util.spec_from_file_location(f"taskvec._open_clip_{name}", path)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(f"no loader for {path}")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    except (OSError, ImportError):  # a later open_clip that moved or split it
        module = importlib.import_module(f"open_clip.{name}")
    return module


@functools.cache
def _load_imagenet(root: Path) -> tuple[Split, Split]:
    _require(root, "ImageNet", *IMAGENET)
    classnames, _ = imagenet_metadata()
    wnids = class_folders(root / "imagenet/train")
    if len(wnids) != len(classnames):
        raise TaskvecError(f"ImageNet: {root / 'imagenet/train'} has {len(wnids)} class folders, expected {len(classnames)} (one per wnid)")
    test_dir = root / IMAGENET[_first_layout(root, *IMAGENET)][1]
    train = image_folder(root / "imagenet/train", wnids)
    test = image_folder(test_dir, wnids)
    return _split(train[0], train[1], "ImageNet train"), _split(test[0], test[1], f"ImageNet {test_dir.name}")
