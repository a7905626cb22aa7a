"""Tasks: class names, raw data and deterministic, seeded train / validation / test splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Modality = Literal["image", "text"]


@dataclass
class Split:
    """Raw inputs (a uint8 array N×H×W[×3] for images, a list of strings for text) and labels."""

    inputs: Any
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        if isinstance(self.inputs, np.ndarray):
            inputs = self.inputs[index]
        else:
            inputs = [self.inputs[i] for i in index]
        return Split(inputs, self.labels[index])


@dataclass
class TaskData:
    """A task's three splits; validation is carved from train as in the paper."""

    task: Task
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass(frozen=True)
class Task:
    """A classification task.

    `load` returns (train, test) raw splits as the source ships them; when the source has no
    test split, `load` returns (all, None) and a seeded test split is carved here.
    `descriptions` are short sentences per class, used by zero-shot heads of text encoders.

    Additions for datasets read from disk (all optional):
    - `load` may also return (train, val, test) when the source fixes the validation split
      (EuroSAT in the task-vector benchmark); validation is then not carved from train.
    - `templates`: prompt templates with a "{}" for the class name (CLIP zero-shot heads).
    - `val_split(n, fraction, cap, seed) -> (rest, held_out)` replaces `seeded_split` for
      carving validation (the paper tasks reproduce torch's `random_split`).
    - `missing()` lists what is absent from disk (empty when the data are all there), each
      entry naming the folder expected and how to obtain it; it must not load the data.
    """

    name: str
    modality: Modality
    classnames: tuple[str, ...]
    load: Callable[[], tuple[Split, Split | None] | tuple[Split, Split, Split]] = field(repr=False, compare=False)
    descriptions: tuple[str, ...] | None = None
    source: str = ""
    notes: str = ""
    templates: tuple[str, ...] | None = None
    val_split: Callable[[int, float, int | None, int], tuple[np.ndarray, np.ndarray]] | None = field(
        default=None, repr=False, compare=False
    )
    missing: Callable[[], list[str]] | None = field(default=None, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def seeded_split(n: int, fraction: float, cap: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held_out): a seeded random `fraction` of n, capped at `cap`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    k = max(1, int(round(n * fraction)))
    if cap is not None:
        k = min(k, cap)
    return np.sort(order[k:]), np.sort(order[:k])


def seeded_subsample(split: Split, limit: int | None, seed: int) -> Split:
    """At most `limit` examples, drawn with a fixed seed (None keeps all)."""
    if limit is None or len(split) <= limit:
        return split
    index = np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])
    return split.subset(index)


def make_splits(
    task: Task,
    seed: int = 0,
    val_fraction: float = 0.1,
    val_cap: int | None = 5000,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
) -> TaskData:
    """Deterministic splits: validation = seeded `val_fraction` of train capped at `val_cap`.

    Caps on each split (max_*) subsample with the same seed, for quick runs on small machines.
    """
    loaded = task.load()
    test: Split | None
    if len(loaded) == 3:  # the source fixes all three splits
        train, val, test = loaded
    else:
        train, test = loaded
        if test is None:
            rest, held = seeded_split(len(train), test_fraction, None, seed + 1)
            train, test = train.subset(rest), train.subset(held)
        carve = task.val_split or seeded_split
        rest, held = carve(len(train), val_fraction, val_cap, seed)
        train, val = train.subset(rest), train.subset(held)
    return TaskData(
        task=task,
        train=seeded_subsample(train, max_train, seed),
        val=seeded_subsample(val, max_val, seed),
        test=seeded_subsample(test, max_test, seed),
    )
