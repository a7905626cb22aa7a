"""Loaders of the paper's datasets that are folders of image files (Cars, DTD, EuroSAT, GTSRB,
RESISC45, SUN397): each names its accepted layouts and turns them into (train, test) splits of
file paths. Each load is cached per root, since a run asks for the same splits many times."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np

from ...errors import TaskvecError
from ..base import Split
from .catalog import EUROSAT_CLASSES, GTSRB_CLASSES, RESISC45_FOLDERS
from .files import _first_layout, _loadmat, _require, _split, class_folders, image_folder

# ---------------------------------------------------------------------------- Stanford Cars
CARS = (
    (
        "stanford_cars/devkit/cars_meta.mat",
        "stanford_cars/devkit/cars_train_annos.mat",
        "stanford_cars/cars_train",
        "stanford_cars/cars_test",
        "stanford_cars/cars_test_annos_withlabels.mat",
    ),
    (
        "stanford_cars/devkit/cars_meta.mat",
        "stanford_cars/devkit/cars_train_annos.mat",
        "stanford_cars/cars_train",
        "stanford_cars/cars_test",
        "stanford_cars/devkit/cars_test_annos_withlabels.mat",
    ),
)


def _cars_classnames(root: Path) -> tuple[str, ...]:
    names = _loadmat(root / "stanford_cars/devkit/cars_meta.mat")["class_names"]
    return tuple(str(n) for n in np.atleast_1d(names).tolist())


def _cars_split(root: Path, annotations: Path, images: Path) -> Split:
    annos = np.atleast_1d(_loadmat(annotations)["annotations"])
    paths = [str(images / str(a["fname"])) for a in annos]
    labels = np.asarray([int(a["class"]) - 1 for a in annos], dtype=np.int64)
    return _split(paths, labels, f"Cars {images.name}")


@functools.cache
def _load_cars(root: Path) -> tuple[Split, Split]:
    _require(root, "Cars", *CARS)
    base = root / "stanford_cars"
    test_annos = CARS[_first_layout(root, *CARS)][-1]
    return (
        _cars_split(root, base / "devkit/cars_train_annos.mat", base / "cars_train"),
        _cars_split(root, root / test_annos, base / "cars_test"),
    )


# ------------------------------------------------------------------------------------- DTD
DTD = (("dtd/train", "dtd/val"), ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt", "dtd/dtd/labels/test1.txt"))


def _dtd_classes(root: Path) -> list[str]:
    if _first_layout(root, *DTD) == 0:
        return class_folders(root / "dtd/train")
    return class_folders(root / "dtd/dtd/images")


@functools.cache
def _load_dtd(root: Path) -> tuple[Split, Split]:
    _require(root, "DTD", *DTD)
    classes = _dtd_classes(root)
    if _first_layout(root, *DTD) == 0:
        train = image_folder(root / "dtd/train", classes)
        test = image_folder(root / "dtd/val", classes)
        return _split(train[0], train[1], "DTD train"), _split(test[0], test[1], "DTD val")
    index = {c: i for i, c in enumerate(classes)}
    images = root / "dtd/dtd/images"

    def listed(*files: str) -> Split:
        paths, labels = [], []
        for file in files:
            for line in (root / "dtd/dtd/labels" / file).read_text().split():
                cls, _, name = line.strip().partition("/")
                paths.append(str(images / cls / name))
                labels.append(index[cls])
        return _split(paths, np.asarray(labels), f"DTD {'+'.join(files)}")

    return listed("train1.txt", "val1.txt"), listed("test1.txt")


# --------------------------------------------------------------------------------- EuroSAT
EUROSAT = (("EuroSAT_splits/train", "EuroSAT_splits/val", "EuroSAT_splits/test"), ("eurosat/2750",))


def _eurosat_folders(folder: Path) -> list[str]:
    found = class_folders(folder)
    if sorted(found) != sorted(EUROSAT_CLASSES):
        raise TaskvecError(f"EuroSAT: {folder} has class folders {found}, expected {sorted(EUROSAT_CLASSES)}")
    return sorted(EUROSAT_CLASSES)


@functools.cache
def _load_eurosat(root: Path) -> tuple[Split, Split, Split]:
    _require(root, "EuroSAT", *EUROSAT)
    if _first_layout(root, *EUROSAT) == 0:
        classes = _eurosat_folders(root / "EuroSAT_splits/train")
        splits = []
        for name in ("train", "val", "test"):
            paths, labels, _ = image_folder(root / "EuroSAT_splits" / name, classes)
            splits.append(_split(paths, labels, f"EuroSAT {name}"))
        return splits[0], splits[1], splits[2]
    classes = _eurosat_folders(root / "eurosat/2750")
    paths, labels, _ = image_folder(root / "eurosat/2750", classes)
    everything = _split(paths, labels, "EuroSAT")
    order = np.random.default_rng(0).permutation(len(everything))
    n_test = n_val = len(order) // 10
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return everything.subset(np.sort(train)), everything.subset(np.sort(val)), everything.subset(np.sort(test))


# ----------------------------------------------------------------------------------- GTSRB
GTSRB = (("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),)


@functools.cache
def _load_gtsrb(root: Path) -> tuple[Split, Split]:
    _require(root, "GTSRB", *GTSRB)
    training = root / "gtsrb/GTSRB/Training"
    folders = class_folders(training)
    if len(folders) != len(GTSRB_CLASSES):
        raise TaskvecError(f"GTSRB: {training} has {len(folders)} class folders, expected {len(GTSRB_CLASSES)}")
    paths, labels, _ = image_folder(training, folders, keep=lambda f: f.lower().endswith(".ppm"))
    test_paths, test_labels = [], []
    with open(root / "gtsrb/GT-final_test.csv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter=";", skipinitialspace=True):
            test_paths.append(str(root / "gtsrb/GTSRB/Final_Test/Images" / row["Filename"]))
            test_labels.append(int(row["ClassId"]))
    return _split(paths, labels, "GTSRB train"), _split(test_paths, np.asarray(test_labels), "GTSRB test")


# -------------------------------------------------------------------------------- RESISC45
RESISC45 = (("resisc45/NWPU-RESISC45", "resisc45/resisc45-train.txt", "resisc45/resisc45-test.txt"),)


@functools.cache
def _load_resisc45(root: Path) -> tuple[Split, Split]:
    _require(root, "RESISC45", *RESISC45)
    images = root / "resisc45/NWPU-RESISC45"
    found = class_folders(images)
    unknown = sorted(set(found) - set(RESISC45_FOLDERS))
    if unknown:
        raise TaskvecError(f"RESISC45: unexpected class folders in {images}: {unknown[:5]}")
    splits = []
    for name in ("train", "test"):
        listed = {line.strip() for line in (root / f"resisc45/resisc45-{name}.txt").read_text().splitlines() if line.strip()}
        paths, labels, _ = image_folder(images, list(RESISC45_FOLDERS), keep=listed.__contains__)
        splits.append(_split(paths, labels, f"RESISC45 {name}"))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------- SUN397
SUN397 = (("sun397/train", "sun397/val"), ("SUN397/ClassName.txt", "SUN397/Training_01.txt", "SUN397/Testing_01.txt"))


def _sun_classes(root: Path) -> list[tuple[str, str]]:
    """[(key, class name)] in label order; key = folder name or ClassName.txt entry."""
    if _first_layout(root, *SUN397) == 0:
        return [(f, f[2:].replace("_", " ")) for f in class_folders(root / "sun397/train")]
    entries = [line.strip() for line in (root / "SUN397/ClassName.txt").read_text().splitlines() if line.strip()]
    return [(e, " ".join(e.strip("/").split("/")[1:]).replace("_", " ")) for e in entries]


@functools.cache
def _load_sun397(root: Path) -> tuple[Split, Split]:
    _require(root, "SUN397", *SUN397)
    classes = _sun_classes(root)
    if _first_layout(root, *SUN397) == 0:
        keys = [k for k, _ in classes]
        train = image_folder(root / "sun397/train", keys)
        test = image_folder(root / "sun397/val", keys)
        return _split(train[0], train[1], "SUN397 train"), _split(test[0], test[1], "SUN397 val")
    index = {k: i for i, (k, _) in enumerate(classes)}
    base = root / "SUN397"

    def listed(file: str) -> Split:
        paths, labels = [], []
        for line in (base / file).read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            paths.append(str(base.joinpath(*line.strip("/").split("/"))))
            labels.append(index["/" + "/".join(line.strip("/").split("/")[:-1])])
        return _split(paths, np.asarray(labels), f"SUN397 {file}")

    return listed("Training_01.txt"), listed("Testing_01.txt")
