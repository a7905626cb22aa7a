"""Frozen classification heads: logits = scale · normalize(f(x)) · Wᵀ.

The analogue of CLIP's zero-shot head. Text encoders embed a description of each class;
image encoders without a text tower use class prototypes: the normalized mean of the
normalized pre-trained features of each class (nearest-class-mean on the sphere). Prototypes
are the default for images: in the measurements that led to this project (EfficientNet-Lite0
at 32 px, recorded in docs/benchmarks.md), logistic-regression probe heads made the addition
sweep choose α = 0 (interference dominated), while prototype heads let addition gain about
10 points. A probe fits the frozen features so well that fine-tuning has little to add and
much to break. `probe_head` stays available for comparison (`head = "probe"` in a config).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskvecError
from .base import Backbone


class ClassificationHead(nn.Module):
    """A frozen linear classifier on L2-normalized features."""

    weight: torch.Tensor  # a buffer (register_buffer), not a parameter

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        if weight.ndim != 2:
            raise TaskvecError(f"head weight must be 2-D (classes × features), got shape {tuple(weight.shape)}")
        self.register_buffer("weight", weight.detach().clone().float())
        self.scale = float(scale)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.weight.shape[1]:
            raise TaskvecError(f"features have {features.shape[-1]} dims but the head expects {self.weight.shape[1]}")
        return self.scale * F.normalize(features, dim=-1) @ self.weight.to(features.dtype).T


def prototype_head(features: torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int, scale: float = 30.0) -> ClassificationHead:
    """Rows = normalized mean of the normalized features of each class."""
    labels = torch.as_tensor(labels)
    normed = F.normalize(features.float(), dim=-1)
    rows = []
    for c in range(num_classes):
        members = normed[labels == c]
        if len(members) == 0:
            raise TaskvecError(f"class {c} has no training example; cannot build its prototype")
        rows.append(members.mean(0))
    return ClassificationHead(F.normalize(torch.stack(rows), dim=-1), scale)


def probe_head(
    features: torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int, scale: float = 1.0, seed: int = 0
) -> ClassificationHead:
    """Multinomial logistic regression on normalized features, without intercept."""
    from sklearn.linear_model import LogisticRegression

    x = F.normalize(features.float(), dim=-1).numpy()
    y = np.asarray(labels)
    clf = LogisticRegression(max_iter=1000, fit_intercept=False, random_state=seed).fit(x, y)
    coef = torch.from_numpy(clf.coef_).float()
    if coef.shape[0] == 1:  # binary: sklearn returns one row for class 1
        coef = torch.cat([-coef / 2, coef / 2])
    if coef.shape[0] != num_classes:
        raise TaskvecError(f"probe saw {coef.shape[0]} classes in training data, expected {num_classes}")
    return ClassificationHead(coef / scale, scale)


def text_head(text_features: torch.Tensor, scale: float = 30.0) -> ClassificationHead:
    """Rows = normalized embeddings of one description per class (zero-shot)."""
    return ClassificationHead(F.normalize(text_features.float(), dim=-1), scale)


class Classifier(nn.Module):
    """An encoder (plain or linearized) followed by a frozen head."""

    def __init__(self, encoder: nn.Module, head: ClassificationHead):
        super().__init__()
        self.encoder = encoder
        self.head = head
        for p in self.head.parameters():
            p.requires_grad_(False)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(**batch))


def describe(classnames: Sequence[str]) -> list[str]:
    """Fallback descriptions when a task gives none."""
    return [f"An example of {name}." for name in classnames]


# ----- builders of the registered head kinds (taskvec.models.head_kinds) --------------------------


@dataclass
class HeadSource:
    """What a head builder may read. `features` and `text_encoder` are computed on first call:
    prototype heads never build a text encoder, zero-shot heads never encode training data."""

    task: Any  # taskvec.tasks.Task
    labels: Any  # the training labels (tensor)
    features: Callable[[], Any]  # θ0's features of the training inputs
    text_encoder: Callable[[], Backbone]  # the model that embeds class descriptions
    scale: float
    seed: int = 0
    cache_dir: str | None = None
    device: Any = None


def from_prototypes(source: HeadSource) -> ClassificationHead:
    return prototype_head(source.features(), source.labels, source.task.num_classes, source.scale)


def from_probe(source: HeadSource) -> ClassificationHead:
    return probe_head(source.features(), source.labels, source.task.num_classes, seed=source.seed)


def from_descriptions(source: HeadSource) -> ClassificationHead:
    task = source.task
    return text_head(source.text_encoder().encode_text(list(task.descriptions or describe(task.classnames))), source.scale)
