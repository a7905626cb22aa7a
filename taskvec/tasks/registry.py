"""Tasks by name: `get_task("mnist")`, `load_task_data("mnist", seed=0, max_train=2000)`."""
from __future__ import annotations

from typing import Callable

from ..errors import TaskvecError
from .base import Task, TaskData, make_splits

_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Register a zero-argument factory returning a `Task` (data loads lazily via `Task.load`)."""

    def decorator(factory: Callable[[], Task]) -> Callable[[], Task]:
        _TASKS[name] = factory
        return factory

    return decorator


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise TaskvecError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    return _TASKS[name]()


def load_task_data(name: str, seed: int = 0, **split_options) -> TaskData:
    return make_splits(get_task(name), seed=seed, **split_options)
