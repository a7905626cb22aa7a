"""Tiny fake copies of the paper's datasets, each in its on-disk layout, under a temp root.

`make(root, names)` writes the datasets named (benchmark layouts by default; `alt=True` for the
torchvision / alternative layouts of DTD, EuroSAT and SUN397) with a few 8×8 images per class,
and returns {name: (n_train, n_test, n_classes)} as written.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def _image(path: Path, seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8 + seed % 3, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _folder(base: Path, classes: list[str], per_class: int, ext: str = ".jpg", seed: int = 0) -> int:
    count = 0
    for c, name in enumerate(classes):
        for i in range(per_class):
            _image(base / name / f"{name}_{i:04d}{ext}", seed + 31 * c + i)
            count += 1
    return count


def cars(root: Path) -> tuple[int, int, int]:
    import scipy.io

    base = root / "stanford_cars"
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"], dtype=object)
    for split, n in (("train", 12), ("test", 6)):
        annos = np.zeros(n, dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("class", "O"), ("fname", "O")])
        for i in range(n):
            annos[i] = (0, 0, i % 3 + 1, f"{i:05d}.jpg")
            _image(base / f"cars_{split}" / f"{i:05d}.jpg", i + (100 if split == "test" else 0))
        target = base / "devkit/cars_train_annos.mat" if split == "train" else base / "cars_test_annos_withlabels.mat"
        target.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(target), {"annotations": annos})
    scipy.io.savemat(str(base / "devkit/cars_meta.mat"), {"class_names": names})
    return 12, 6, 3


DTD_CLASSES = ["banded", "blotchy", "polka-dotted"]


def dtd(root: Path, alt: bool = False) -> tuple[int, int, int]:
    if not alt:
        return _folder(root / "dtd/train", DTD_CLASSES, 4), _folder(root / "dtd/val", DTD_CLASSES, 2, seed=500), 3
    images = root / "dtd/dtd/images"
    _folder(images, DTD_CLASSES, 5)
    labels = root / "dtd/dtd/labels"
    labels.mkdir(parents=True)
    rows = {k: [] for k in ("train1", "val1", "test1")}
    for c in DTD_CLASSES:
        for i in range(5):
            rows["train1" if i < 2 else "val1" if i < 3 else "test1"].append(f"{c}/{c}_{i:04d}.jpg")
    for k, lines in rows.items():
        (labels / f"{k}.txt").write_text("\n".join(lines) + "\n")
    return 9, 6, 3


EUROSAT = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def eurosat(root: Path, alt: bool = False) -> tuple[int, int, int]:
    if alt:
        return _folder(root / "eurosat/2750", EUROSAT, 3, ".jpg"), 3, 10
    n_train = _folder(root / "EuroSAT_splits/train", EUROSAT, 2)
    _folder(root / "EuroSAT_splits/val", EUROSAT, 1, seed=300)
    return n_train, _folder(root / "EuroSAT_splits/test", EUROSAT, 1, seed=600), 10


def gtsrb(root: Path) -> tuple[int, int, int]:
    base = root / "gtsrb"
    n = 0
    for c in range(43):
        for i in range(2 if c < 3 else 1):
            _image(base / f"GTSRB/Training/{c:05d}/{c:05d}_{i:05d}.ppm", c * 7 + i, "PPM")
            n += 1
        (base / f"GTSRB/Training/{c:05d}/GT-{c:05d}.csv").write_text("Filename;ClassId\n")
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(5):
        _image(base / f"GTSRB/Final_Test/Images/{i:05d}.ppm", 900 + i, "PPM")
        rows.append(f"{i:05d}.ppm;9;8;0;0;8;7;{(i * 10) % 43}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return n, 5, 43


def _idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def mnist(root: Path) -> tuple[int, int, int]:
    for prefix, n in (("train", 40), ("t10k", 10)):
        _idx(root / f"MNIST/raw/{prefix}-images-idx3-ubyte", RNG.integers(0, 256, (n, 28, 28)), compress=prefix == "t10k")
        _idx(root / f"MNIST/raw/{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress=False)
    return 40, 10, 10


def resisc45(root: Path) -> tuple[int, int, int]:
    from taskvec.tasks.paper import RESISC45_FOLDERS

    base = root / "resisc45"
    _folder(base / "NWPU-RESISC45", list(RESISC45_FOLDERS), 2)
    train = [f"{c}_{0:04d}.jpg" for c in RESISC45_FOLDERS]
    test = [f"{c}_{1:04d}.jpg" for c in RESISC45_FOLDERS[:10]]
    (base / "resisc45-train.txt").write_text("\n".join(train) + "\n")
    (base / "resisc45-val.txt").write_text("")
    (base / "resisc45-test.txt").write_text("\n".join(test) + "\n")
    return 45, 10, 45


SUN_CLASSES = ["/a/abbey", "/b/bakery/shop", "/y/youth_hostel"]


def sun397(root: Path, alt: bool = False) -> tuple[int, int, int]:
    if not alt:
        folders = [c.strip("/").replace("/", "_") for c in SUN_CLASSES]
        return _folder(root / "sun397/train", folders, 4), _folder(root / "sun397/val", folders, 2, seed=200), 3
    base = root / "SUN397"
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(SUN_CLASSES) + "\n")
    train, test = [], []
    for c, cls in enumerate(SUN_CLASSES):
        for i in range(5):
            rel = f"{cls}/sun_{c}{i:03d}.jpg"
            _image(base / rel.strip("/"), 40 * c + i)
            (train if i < 3 else test).append(rel)
    (base / "Training_01.txt").write_text("\n".join(train) + "\n")
    (base / "Testing_01.txt").write_text("\n".join(test) + "\n")
    return 9, 6, 3


def svhn(root: Path) -> tuple[int, int, int]:
    import scipy.io

    for split, n in (("train", 30), ("test", 10)):
        x = RNG.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)  # 1..10, where 10 means the digit 0
        (root / "svhn").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(root / f"svhn/{split}_32x32.mat"), {"X": x, "y": y})
    return 30, 10, 10


def imagenet(root: Path) -> tuple[int, int, int]:
    wnids = [f"n{i:08d}" for i in range(1000)]
    for split in ("train", "val"):
        for w in wnids:
            (root / "imagenet" / split / w).mkdir(parents=True, exist_ok=True)
    n_train = _folder(root / "imagenet/train", wnids[:4], 3, ".JPEG")
    n_test = _folder(root / "imagenet/val", wnids[:4], 1, ".JPEG", seed=70)
    return n_train, n_test, 1000


MAKERS = {
    "Cars": cars,
    "DTD": dtd,
    "EuroSAT": eurosat,
    "GTSRB": gtsrb,
    "MNIST": mnist,
    "RESISC45": resisc45,
    "SUN397": sun397,
    "SVHN": svhn,
    "ImageNet": imagenet,
}


def make(root: Path, names=tuple(MAKERS), alt: bool = False) -> dict[str, tuple[int, int, int]]:
    root = Path(root)
    out = {}
    for name in names:
        maker = MAKERS[name]
        out[name] = maker(root, alt=True) if alt and name in ("DTD", "EuroSAT", "SUN397") else maker(root)
    return out
