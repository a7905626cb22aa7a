"""A config made ready to compute with: its backbone, its tasks loaded, split and prepared, and
their frozen heads built on θ0 (a registered head kind). One definition, used by the run's
context, the stand-alone commands (`taskvec evaluate`, `finetune`, `disentanglement`, `ntk`)
and the Python API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch

from ..config import RunConfig
from ..errors import TaskvecError
from ..evaluate import EvalSet, encode
from ..models import Backbone
from ..models.head_kinds import HeadKind, resolve_head
from ..models.heads import ClassificationHead, HeadSource
from ..models.registry import Init, backbone_kind, is_registered
from ..tasks import Task, get_task, make_splits

SPLITS = ("train", "val", "test")


@dataclass
class PreparedTask:
    task: Task
    sets: dict[str, EvalSet]


def _cap(value: int | Literal["all"] | None) -> int | None:
    """A cap of `DataConfig`, whose construction has already turned "all" into None."""
    return None if isinstance(value, str) else value


def prepare_tasks(backbone: Backbone, names: list[str], cfg: RunConfig) -> dict[str, PreparedTask]:
    """Load each task, split it with the configured seed and caps, and prepare the inputs once."""
    prepared = {}
    d = cfg.data
    for name in names:
        task = get_task(name, root=cfg.data.root)
        if task.modality != backbone.modality:
            raise TaskvecError(f"task {name!r} is {task.modality} data but backbone {backbone.name!r} encodes {backbone.modality}")
        data = make_splits(
            task,
            seed=d.seed,
            val_fraction=d.val_fraction,
            val_cap=d.val_cap,
            max_train=_cap(d.max_train),
            max_val=_cap(d.max_val),
            max_test=_cap(d.max_test),
        )
        sets = {}
        for split in SPLITS:
            raw = data.split(split)
            sets[split] = EvalSet(backbone.prepare(raw.inputs), torch.as_tensor(raw.labels, dtype=torch.long))
        prepared[name] = PreparedTask(task, sets)
    return prepared


def head_kind(backbone: Backbone, cfg: RunConfig) -> HeadKind:
    """The configured head kind, with "auto" resolved by the backbone's registered kind (a
    backbone built by hand, under no registered name, by its modality)."""
    default = backbone_kind(backbone.name).head if is_registered(backbone.name) else None
    return resolve_head(cfg.head.kind, default, backbone.modality)


def _text_from_pretrained(cfg: RunConfig) -> bool:
    """Class descriptions are embedded by the pre-trained model, not this randomly initialized one."""
    return cfg.init == Init.RANDOM and cfg.head.text_encoder == "pretrained"


_PRETRAINED_TEXT_ENCODERS: dict[str, Backbone] = {}


def text_encoder(backbone: Backbone, cfg: RunConfig) -> Backbone:
    """The model that embeds class descriptions for text-built heads: the pre-trained backbone
    when this one is randomly initialized and head.text_encoder = "pretrained" (built once per
    process), else the backbone itself."""
    if not _text_from_pretrained(cfg):
        return backbone
    key = json.dumps([cfg.backbone, cfg.backbone_options], sort_keys=True, default=str)
    if key not in _PRETRAINED_TEXT_ENCODERS:
        _PRETRAINED_TEXT_ENCODERS[key] = cfg.build_backbone(init=Init.PRETRAINED)
    return _PRETRAINED_TEXT_ENCODERS[key]


def describe_heads(backbone: Backbone, cfg: RunConfig) -> str:
    """What the run's heads are built from, for reports (which text encoder, at random init)."""
    kind = head_kind(backbone, cfg)
    if not kind.text:
        return f"{kind.name} heads on the model's own features"
    return f"{kind.name} heads from the {'pre-trained' if _text_from_pretrained(cfg) else 'model’s own'} text encoder"


def build_head(backbone: Backbone, prepared: PreparedTask, cfg: RunConfig) -> ClassificationHead:
    """The task's frozen head on θ0, by the configured head kind."""
    train = prepared.sets["train"]
    source = HeadSource(
        task=prepared.task,
        labels=train.labels,
        scale=cfg.head.scale,
        seed=cfg.data.seed,
        device=cfg.device,
        features=lambda: encode(backbone, train.inputs, cfg.eval.chunk, cfg.device),
        text_encoder=lambda: text_encoder(backbone, cfg),
        cache_dir=str(Path(cfg.data.cache_dir) / "heads") if cfg.data.cache_dir else None,
    )
    return head_kind(backbone, cfg).build(source)


class Setup:
    """A config's backbone, prepared tasks and heads, each made on first use."""

    def __init__(self, cfg: RunConfig, backbone: Backbone | None = None):
        self.cfg = cfg
        if backbone is not None:
            self.__dict__["backbone"] = backbone
        self._prepared: dict[str, PreparedTask] = {}
        self._heads: dict[str, ClassificationHead] = {}

    @cached_property
    def backbone(self) -> Backbone:
        torch.manual_seed(self.cfg.data.seed)  # random init, if asked for, is reproducible
        return self.cfg.build_backbone()

    def prepared(self, name: str) -> PreparedTask:
        if name not in self._prepared:
            self._prepared.update(prepare_tasks(self.backbone, [name], self.cfg))
        return self._prepared[name]

    def head(self, name: str) -> ClassificationHead:
        if name not in self._heads:
            self._heads[name] = build_head(self.backbone, self.prepared(name), self.cfg)
        return self._heads[name]

    def heads(self, names: list[str]) -> dict[str, ClassificationHead]:
        return {n: self.head(n) for n in names}

    def sets(self, names: list[str], *splits: str) -> dict[tuple[str, str], EvalSet]:
        """The prepared (task, split) sets an Evaluator reads."""
        return {(n, split): self.prepared(n).sets[split] for n in names for split in splits}
