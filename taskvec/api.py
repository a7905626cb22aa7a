"""A few-line Python API over the building blocks (see the README's example)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .config import RunConfig, TrainConfig
from .evaluate import EvalSet, accuracy, encode
from .kinds import FINETUNE_MODES, NONLINEAR, FinetuneMode
from .models.base import Backbone
from .models.head_kinds import AUTO
from .models.heads import ClassificationHead, Classifier
from .pipeline.setup import Setup
from .task_vector import TaskVector
from .train import finetune


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


def setup_task(
    backbone: Backbone,
    name: str,
    *,
    head: str = AUTO,
    head_scale: float = 30.0,
    seed: int = 0,
    max_train: int | None = 2000,
    max_val: int | None = 300,
    max_test: int | None = 500,
) -> TaskSetup:
    """Load a registered task, split it (seeded), prepare its inputs and build its head on θ0
    (`head`: a registered head kind, `taskvec list`)."""
    defaults = RunConfig()
    cfg = replace(
        defaults,
        head=replace(defaults.head, kind=head, scale=head_scale),
        data=replace(defaults.data, seed=seed, max_train=max_train, max_val=max_val, max_test=max_test),
    )
    setup = Setup(cfg, backbone)
    sets = setup.prepared(name).sets
    return TaskSetup(name, setup.head(name), sets["train"], sets["val"], sets["test"])


def finetune_task(
    backbone: Backbone,
    setup: TaskSetup,
    mode: FinetuneMode | str = NONLINEAR,
    progress: bool = True,
    others: Sequence[TaskSetup] = (),
    control: TaskSetup | None = None,
    **options: Any,
) -> TaskVector:
    """Fine-tune `backbone` on the task in a registered mode (`taskvec list`) and return its task
    vector.

    `options` are `TrainConfig` fields (steps, batch_size, lr, weight_decay, warmup_steps, ...)
    and the mode's own settings (e.g. `rank=4` for LoRA). The learning rate defaults to the
    mode's own. `others`: the other tasks, for a mode that penalizes τ on their inputs (τJp) or
    on their KFAC factors at θ0 (TAK, computed here from their training inputs); `control`: a
    control task τJp penalizes beside them (its training inputs, as τJp's code does).
    """
    mode = FINETUNE_MODES.get(mode)
    cfg = TrainConfig.for_mode(mode, **options)
    factors = []
    if mode.curvature:
        from .finetuning.kfac import compute_factors, factor_settings

        given = factor_settings(mode.resolve(cfg.settings))
        factors = [compute_factors(backbone, o.train.inputs, **given, batch_size=cfg.batch_size, seed=cfg.seed) for o in others]
    return finetune(
        backbone,
        setup.head,
        setup.train.inputs,
        setup.train.labels,
        mode=mode,
        cfg=cfg,
        task=setup.name,
        progress=progress,
        others={o.name: o.train.inputs for o in others} if mode.penalty else {},
        control=(control.name, control.train.inputs) if control is not None else None,
        factors=factors,
    )


__all__ = ["TaskSetup", "setup_task", "finetune_task", "Classifier"]
