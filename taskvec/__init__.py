"""taskvec: task arithmetic in weight space and in the tangent space.

    import taskvec as tv
    base = tv.build_backbone("effnet-lite0")
    mnist = tv.setup_task(base, "mnist")
    tau = tv.finetune_task(base, mnist, mode="linear", steps=150, lr=3e-4)
    print(mnist.accuracy(tau.apply_to(base)))
    multi = tv.merge([tau, other_tau], method="ties", k=0.2)   # a merged direction d; θ0 + α·d

The names below are imported on first use (PEP 562), so `import taskvec` and the commands
that need no model do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

# public name -> the module that defines it
_EXPORTS = {
    "TaskSetup": "api",
    "finetune_task": "api",
    "setup_task": "api",
    "TaskvecError": "errors",
    "EVAL_METHODS": "kinds",
    "FINETUNE_MODES": "kinds",
    "LinearizedBackbone": "linearization",
    "linearize": "linearization",
    "MERGE_METHODS": "merging",
    "merge": "merging",
    "available_backbones": "models",
    "build_backbone": "models",
    "TaskVector": "task_vector",
    "sum_vectors": "task_vector",
    "available_tasks": "tasks",
    "get_task": "tasks",
    "load_task_data": "tasks",
    "TrainConfig": "config",
    "finetune": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'taskvec' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from .api import TaskSetup, finetune_task, setup_task  # noqa: F401
    from .config import TrainConfig  # noqa: F401
    from .errors import TaskvecError  # noqa: F401
    from .kinds import EVAL_METHODS, FINETUNE_MODES  # noqa: F401
    from .linearization import LinearizedBackbone, linearize  # noqa: F401
    from .merging import MERGE_METHODS, merge  # noqa: F401
    from .models import available_backbones, build_backbone  # noqa: F401
    from .task_vector import TaskVector, sum_vectors  # noqa: F401
    from .tasks import available_tasks, get_task, load_task_data  # noqa: F401
    from .train import finetune  # noqa: F401
