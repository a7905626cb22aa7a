"""How each fine-tuning mode builds what it trains (`Trainable`) from the backbone and its settings.

A builder takes the backbone copy being fine-tuned (holding θ0), the mode's resolved settings,
whether the mode is linearized, and the task's training data (`FitData`, which only TaLoS
reads: it scores entries on the task before training). The settings the builders read are
declared in taskvec.finetuning.settings; taskvec.kinds gives them to the modes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TaskvecError
from .settings import (
    ADAPTED,
    ALPHA,
    ARITHMETIC,
    CANDIDATES,
    CONVS,
    EXAMPLES,
    FRACTION,
    PARAMS,
    RANK,
    ROUNDS,
    SCORE,
)

if TYPE_CHECKING:  # the builders import torch's side when they run, so taskvec.kinds stays light
    import torch

    from ..models.base import Backbone, Batch
    from ..models.heads import ClassificationHead
    from .parts import Trainable


@dataclass
class FitData:
    """The task a fine-tune trains on, for builders that look at it before training."""

    head: ClassificationHead
    inputs: Batch
    labels: torch.Tensor
    batch_size: int
    seed: int
    device: torch.device


Builder = Callable[["Backbone", Mapping[str, Any], "FitData", bool], "Trainable"]


def _pretrained(backbone: Backbone) -> dict[str, torch.Tensor]:
    return dict(backbone.named_parameters())


def full_weights(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """Every parameter (the paper's modes)."""
    from .parts import WeightSubset

    params = _pretrained(backbone)
    return WeightSubset(params, list(params))


def weight_subset(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """The parameters the `params` selection names (taskvec.finetuning.subsets)."""
    from .parts import WeightSubset
    from .subsets import select_parameters

    return WeightSubset(_pretrained(backbone), select_parameters(backbone, settings[PARAMS.name]))


def low_rank(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """LoRA adapters on the matrices among the `params` selection."""
    from .parts import LowRank
    from .subsets import matrix_parameters, select_parameters

    selected = select_parameters(backbone, settings[ADAPTED.name])
    matrices = set(matrix_parameters(backbone))
    names = [n for n in selected if n in matrices]
    if not names:
        raise TaskvecError(f"parameter selection {settings[ADAPTED.name]!r} holds no matrix or 1×1 convolution for LoRA")
    adapters = settings.get(ARITHMETIC.name) == "adapters"
    return LowRank(
        _pretrained(backbone),
        names,
        rank=settings[RANK.name],
        alpha=settings[ALPHA.name],
        seed=fit.seed,
        linearized=linearized,
        adapters=adapters,
    )


def kfac_layers(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """The layers TAK has KFAC factors for: linear layers and, unless convs = frozen, convolutions."""
    from .kfac import factored_parameters
    from .parts import WeightSubset

    return WeightSubset(_pretrained(backbone), factored_parameters(backbone, settings[CONVS.name]))


def sparse_least_sensitive(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """The entries with the lowest scores on the task, calibrated over rounds (TaLoS;
    taskvec.finetuning.sensitivity names the authors' files and lines it follows)."""
    import time

    import torch

    from ..models.heads import Classifier
    from .parts import SparseWeights
    from .sensitivity import ScoringData, calibrate, scorer, scoring_index
    from .subsets import select_parameters

    pretrained = _pretrained(backbone)
    names = select_parameters(backbone, settings[CANDIDATES.name])
    model = Classifier(backbone, fit.head).to(fit.device).eval()  # eval, as pruners.py's TaLoS.score
    data = ScoringData(
        model,
        fit.inputs,
        fit.labels,
        scoring_index(len(fit.labels), settings[EXAMPLES.name], fit.seed),
        fit.batch_size,
        torch.Generator().manual_seed(fit.seed * 1_000_003 + 11),
        fit.device,
    )
    score = scorer(settings[SCORE.name], data)
    prefixed = {f"encoder.{n}": pretrained[n].detach() for n in names}  # the parameters' names in `model`
    started = time.perf_counter()
    masks, stats = calibrate(score, prefixed, settings[FRACTION.name], settings[ROUNDS.name])
    seconds = round(time.perf_counter() - started, 2)  # before the fine-tune's own cost meter starts
    stats = {"score": settings[SCORE.name], "examples": len(data.index), "seconds": seconds, **stats}
    stats["per_tensor"] = {n.removeprefix("encoder."): f for n, f in stats["per_tensor"].items()}
    return SparseWeights(pretrained, {n.removeprefix("encoder."): m for n, m in masks.items()}, stats={"mask": stats})
