"""A few-line Python API over the building blocks (see the README's example)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch

from .config import RunConfig
from .evaluate import EvalSet, accuracy, encode
from .kinds import FINETUNE_MODES, NONLINEAR, FinetuneMode
from .models.base import Backbone
from .models.heads import ClassificationHead, Classifier
from .pipeline import build_head, prepare_tasks
from .task_vector import TaskVector
from .train import TrainConfig, finetune


@dataclass
class TaskSetup:
    """A task made ready for one backbone: prepared splits and its frozen head."""

    name: str
    head: ClassificationHead
    train: EvalSet
    val: EvalSet
    test: EvalSet

    def accuracy(self, encoder: torch.nn.Module, split: str = "test") -> float:
        """Accuracy of any encoder (plain, linearized or edited) with this task's head."""
        data = getattr(self, split)
        return accuracy(self.head(encode(encoder, data.inputs)), data.labels)


def setup_task(backbone: Backbone, name: str, *, head: str = "auto", head_scale: float = 30.0, seed: int = 0,
               max_train: int | None = 2000, max_val: int | None = 300, max_test: int | None = 500) -> TaskSetup:
    """Load a registered task, split it (seeded), prepare its inputs and build its head on θ0."""
    defaults = RunConfig()
    cfg = replace(defaults, head=replace(defaults.head, kind=head, scale=head_scale),
                  data=replace(defaults.data, seed=seed, max_train=max_train, max_val=max_val, max_test=max_test))
    prepared = prepare_tasks(backbone, [name], cfg)[name]
    sets = prepared.sets
    return TaskSetup(name, build_head(backbone, prepared, cfg), sets["train"], sets["val"], sets["test"])


def finetune_task(backbone: Backbone, setup: TaskSetup, mode: FinetuneMode | str = NONLINEAR, progress: bool = True,
                  others: Sequence[TaskSetup] = (), **options: Any) -> TaskVector:
    """Fine-tune `backbone` on the task in a registered mode (`taskvec list`) and return its task
    vector.

    `options` are `TrainConfig` fields (steps, batch_size, lr, weight_decay, warmup_steps, ...)
    and the mode's own settings (e.g. `rank=4` for LoRA). The learning rate defaults to the
    mode's own. `others`: the other tasks, for a mode that penalizes τ on their inputs (τJp).
    """
    mode = FINETUNE_MODES.get(mode)
    loop = {f.name for f in fields(TrainConfig)}
    settings = {k: v for k, v in options.items() if k not in loop}
    cfg = TrainConfig(**{"lr": mode.lr, **{k: v for k, v in options.items() if k in loop}, "settings": settings})
    return finetune(backbone, setup.head, setup.train.inputs, setup.train.labels, mode=mode, cfg=cfg, task=setup.name, progress=progress,
                    others=[o.train.inputs for o in others])


__all__ = ["TaskSetup", "setup_task", "finetune_task", "Classifier"]
