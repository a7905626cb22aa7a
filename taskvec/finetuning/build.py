"""How each fine-tuning mode builds what it trains (`Trainable`) from the backbone and its settings.

A builder takes the backbone copy being fine-tuned (holding θ0), the mode's resolved settings,
whether the mode is linearized, and the task's training data (`FitData`, which only TaLoS
reads: it scores entries on the task before training).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..errors import TaskvecError
from ..models.base import Backbone, Batch
from ..models.heads import ClassificationHead, Classifier
from .parts import LowRank, SparseWeights, Trainable, WeightSubset
from .sensitivity import fisher_scores, least_sensitive
from .subsets import matrix_parameters, select_parameters


@dataclass
class FitData:
    """The task a fine-tune trains on, for builders that look at it before training."""

    head: ClassificationHead
    inputs: Batch
    labels: torch.Tensor
    batch_size: int
    seed: int
    device: torch.device


Builder = Callable[[Backbone, Mapping[str, Any], "FitData", bool], Trainable]


def _pretrained(backbone: Backbone) -> dict[str, torch.Tensor]:
    return dict(backbone.named_parameters())


def full_weights(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """Every parameter (the paper's modes)."""
    params = _pretrained(backbone)
    return WeightSubset(params, list(params))


def weight_subset(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """The parameters the `params` selection names (taskvec.finetuning.subsets)."""
    return WeightSubset(_pretrained(backbone), select_parameters(backbone, settings["params"]))


def low_rank(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """LoRA adapters on the matrices among the `params` selection."""
    selected = select_parameters(backbone, settings["params"])
    matrices = set(matrix_parameters(backbone))
    names = [n for n in selected if n in matrices]
    if not names:
        raise TaskvecError(f"parameter selection {settings['params']!r} holds no matrix or 1×1 convolution for LoRA")
    return LowRank(_pretrained(backbone), names, rank=settings["rank"], alpha=settings["alpha"], seed=fit.seed, linearized=linearized)


def sparse_least_sensitive(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """The fraction of entries with the lowest diagonal Fisher score on the task (TaLoS)."""
    params = _pretrained(backbone)
    model = Classifier(backbone, fit.head).to(fit.device)
    model.train()
    scores = fisher_scores(model, params, fit.inputs, fit.labels, batches=settings["batches"], batch_size=fit.batch_size,
                           seed=fit.seed, device=fit.device)
    return SparseWeights(params, least_sensitive(scores, settings["fraction"]))
