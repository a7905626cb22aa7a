"""CLIP zero-shot heads: class names under prompt templates, through the frozen text tower.

Row c of the head = normalize(mean_t normalize(text(template_t(class_c)))); logits =
logit_scale · normalize(f(x)) · Wᵀ, with the model's own logit scale (100 for OpenAI CLIP).
This is the head of the paper (and of the task-vector code it builds on), the same for every
method, and frozen. Heads depend only on the text tower, the class names and the templates,
so they are cached on disk under a key of exactly those: a second run, another method or
another config with the same model never re-encodes the prompts.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..errors import TaskvecError
from ..io import load_tensors, save_tensors
from .base import Backbone
from .heads import ClassificationHead
from .identity import base_identity

if TYPE_CHECKING:
    from .head_kinds import HeadSource

FORMAT = "taskvec.zeroshot_head/1"
DEFAULT_TEMPLATE = "a photo of a {}."


def task_prompts(task) -> list[list[str]]:
    """Prompts per class: the task's templates, else its descriptions, else 'a photo of a {}.'."""
    if task.templates:
        return [[template.format(name) for template in task.templates] for name in task.classnames]
    if task.descriptions:
        return [[d] for d in task.descriptions]
    return [[DEFAULT_TEMPLATE.format(name)] for name in task.classnames]


def _encode(backbone: Backbone, texts: list[str], device: str | torch.device | None) -> torch.Tensor:
    if device is not None and "device" in inspect.signature(backbone.encode_text).parameters:
        return backbone.encode_text(texts, device=device)  # type: ignore[call-arg]
    return backbone.encode_text(texts)


@torch.no_grad()
def zeroshot_weights(backbone: Backbone, prompts: Sequence[Sequence[str]], device: str | torch.device | None = None) -> torch.Tensor:
    """(classes × dim) rows: normalize each prompt's embedding, average per class, normalize."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise TaskvecError("zero-shot head needs at least one prompt per class")
    flat = [text for per_class in prompts for text in per_class]
    embeddings = F.normalize(_encode(backbone, flat, device).float(), dim=-1)
    rows, start = [], 0
    for per_class in prompts:
        rows.append(embeddings[start : start + len(per_class)].mean(0))
        start += len(per_class)
    return F.normalize(torch.stack(rows), dim=-1)


def text_identity(backbone: Backbone) -> dict:
    """What a zero-shot head depends on, besides the prompts: the text encoder's weights."""
    identity = dict(backbone.identity())
    fingerprint = getattr(backbone, "text_fingerprint", None)
    identity["text"] = fingerprint() if callable(fingerprint) else base_identity(backbone)["fingerprint"]
    return identity


def head_cache_path(cache_dir: str | Path, backbone: Backbone, task_name: str, prompts: Sequence[Sequence[str]]) -> Path:
    key = json.dumps({"format": FORMAT, "model": text_identity(backbone), "prompts": [list(p) for p in prompts]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_name) or "task"
    return Path(cache_dir).expanduser() / f"{safe}-{digest}.safetensors"


def zeroshot_head(
    backbone: Backbone, task, *, cache_dir: str | Path | None = None, device: str | torch.device | None = None, scale: float | None = None
) -> ClassificationHead:
    """The frozen zero-shot head of `task` for this backbone, from `cache_dir` when present.

    scale: the logit scale; default the backbone's `logit_scale` (CLIP), else 100.
    device: where the text tower runs (a GPU makes ImageNet's 80 000 prompts take seconds).
    """
    if scale is None:
        scale = float(getattr(backbone, "logit_scale", 100.0))
    prompts = task_prompts(task)
    if len(prompts) != task.num_classes:
        raise TaskvecError(f"task {task.name!r}: {len(prompts)} prompt groups for {task.num_classes} classes")
    path = head_cache_path(cache_dir, backbone, task.name, prompts) if cache_dir else None
    if path is not None and path.exists():
        tensors, meta = load_tensors(path)
        if meta.get("format") == FORMAT and tuple(tensors["weight"].shape) == (
            task.num_classes,
            backbone.embed_dim or tensors["weight"].shape[1],
        ):
            return ClassificationHead(tensors["weight"], scale)
    weight = zeroshot_weights(backbone, prompts, device)
    if path is not None:
        save_tensors(
            path,
            {"weight": weight},
            {
                "format": FORMAT,
                "task": task.name,
                "model": text_identity(backbone),
                "templates": list(task.templates or []),
                "classes": task.num_classes,
            },
        )
    return ClassificationHead(weight, scale)


def from_templates(source: HeadSource) -> ClassificationHead:
    """The builder of the registered zero-shot head kind: the text encoder's own logit scale."""
    return zeroshot_head(source.text_encoder(), source.task, cache_dir=source.cache_dir, device=source.device)
