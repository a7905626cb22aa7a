"""Bundled classification tasks by name, with seeded train / validation / test splits."""

# Importing a family registers its tasks.
from . import image as _image  # noqa: F401,E402
from . import paper as _paper  # noqa: F401,E402
from . import text as _text  # noqa: F401,E402
from .base import Split, Task, TaskData, make_splits
from .registry import available_tasks, get_task, load_task_data, register_task

__all__ = ["Split", "Task", "TaskData", "available_tasks", "get_task", "load_task_data", "make_splits", "register_task"]
