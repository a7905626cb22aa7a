"""Tasks by name: `get_task("mnist")`, `load_task_data("mnist", seed=0, max_train=2000)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import cast

from ..errors import TaskvecError
from .base import Task, TaskData, make_splits

_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Register a factory returning a `Task` (data loads lazily via `Task.load`). Factories take
    no arguments, or an optional `root` (the data folder) when they read data from disk."""

    def decorator(factory: Callable[[], Task]) -> Callable[[], Task]:
        _TASKS[name] = factory
        return factory

    return decorator


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, *, root: str | Path | None = None) -> Task:
    """The task registered under `name`. `root` is the data folder for tasks read from disk
    (factories with a `root` parameter, e.g. the paper's datasets); other tasks ignore it."""
    if name not in _TASKS:
        raise TaskvecError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    factory = _TASKS[name]
    if root is not None and "root" in inspect.signature(factory).parameters:
        return cast("Callable[..., Task]", factory)(root=root)  # its signature, checked above, has a root parameter
    return factory()


def load_task_data(name: str, seed: int = 0, root: str | Path | None = None, **split_options) -> TaskData:
    return make_splits(get_task(name, root=root), seed=seed, **split_options)
