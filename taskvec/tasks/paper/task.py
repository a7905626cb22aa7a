"""One paper dataset as a `Task`: its layouts and loader, its class names, and what of it is
missing under the root. Nothing is read until the task's data are asked for."""

from __future__ import annotations

from pathlib import Path

from ...errors import TaskvecError
from ..base import Task
from .catalog import DIGITS, EUROSAT_CLASSES, GTSRB_CLASSES, HOW, RESISC45_FOLDERS, TEMPLATES
from .digits import SVHN, _load_mnist, _load_svhn, _mnist_missing
from .files import ENV_ROOT, _need, resolve_root, root_hint, torch_random_split
from .imagenet import IMAGENET, _load_imagenet, imagenet_metadata
from .loaders import (
    CARS,
    DTD,
    EUROSAT,
    GTSRB,
    RESISC45,
    SUN397,
    _cars_classnames,
    _dtd_classes,
    _load_cars,
    _load_dtd,
    _load_eurosat,
    _load_gtsrb,
    _load_resisc45,
    _load_sun397,
    _sun_classes,
)

LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Cars": CARS,
    "DTD": DTD,
    "EuroSAT": EUROSAT,
    "GTSRB": GTSRB,
    "RESISC45": RESISC45,
    "SUN397": SUN397,
    "SVHN": SVHN,
    "ImageNet": IMAGENET,
}
LOADERS = {
    "Cars": _load_cars,
    "DTD": _load_dtd,
    "EuroSAT": _load_eurosat,
    "GTSRB": _load_gtsrb,
    "MNIST": _load_mnist,
    "RESISC45": _load_resisc45,
    "SUN397": _load_sun397,
    "SVHN": _load_svhn,
    "ImageNet": _load_imagenet,
}


def missing_data(name: str, root: str | Path | None) -> list[str]:
    """What of dataset `name` is absent under the root ([] when all there), without loading it."""
    resolved = resolve_root(root)
    if name == "MNIST":
        return _mnist_missing(resolved)
    return _need(resolved, name, *LAYOUTS[name])


def _classnames(name: str, root: Path | None) -> tuple[str, ...]:
    """Class names; for Cars, DTD and SUN397 they come from the data (empty when it is absent)."""
    if name in ("MNIST", "SVHN"):
        return DIGITS
    if name == "GTSRB":
        return GTSRB_CLASSES
    if name == "RESISC45":
        return tuple(c.replace("_", " ") for c in RESISC45_FOLDERS)
    if name == "EuroSAT":
        return tuple(EUROSAT_CLASSES[k] for k in sorted(EUROSAT_CLASSES))
    if name == "ImageNet":
        return imagenet_metadata()[0]
    if root is None or missing_data(name, root):
        return ()
    if name == "Cars":
        return _cars_classnames(root)
    if name == "DTD":
        return tuple(c.replace("_", " ") for c in _dtd_classes(root))
    if name == "SUN397":
        return tuple(n for _, n in _sun_classes(root))
    raise KeyError(name)


def paper_task(name: str, root: str | Path | None = None) -> Task:
    resolved = resolve_root(root)
    loader = LOADERS[name]

    def load():
        if resolved is None:
            raise TaskvecError(missing_data(name, None)[0])
        return loader(resolved)

    templates = imagenet_metadata()[1] if name == "ImageNet" else TEMPLATES[name]
    where = str(resolved) if resolved is not None else f"${ENV_ROOT} (unset)"
    return Task(
        name=name,
        modality="image",
        classnames=_classnames(name, resolved),
        load=load,
        templates=templates,
        val_split=None if name == "EuroSAT" else torch_random_split,
        missing=lambda: missing_data(name, resolved),
        source=f"data root {where}: {' or '.join(root_hint(g) for g in LAYOUTS.get(name, (('MNIST/raw',),)))}",
        notes=f"Paper task (Ortiz-Jimenez et al. 2023). How to obtain: {HOW[name]}.",
    )
