"""How each fine-tuning mode builds what it trains (`Trainable`) from the backbone and its settings.

A builder takes the backbone copy being fine-tuned (holding θ0), the mode's resolved settings,
whether the mode is linearized, and the task's training data (`FitData`, which only TaLoS
reads: it scores entries on the task before training). The settings each builder reads are
declared here, beside it; taskvec.kinds gives them to the modes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TaskvecError
from ..registry import Setting

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


PARAMS = Setting("params", str, "attention", "which parameters: all, attention, last-blocks:N, norm-bias, matrices, or globs")
ADAPTED = Setting("params", str, "matrices", "where adapters go: a parameter selection (its matrices)")
RANK = Setting("rank", int, 8, "adapter rank r", low=1)
ALPHA = Setting("alpha", float, 16.0, "LoRA alpha; the update is (alpha / r)·B·A", low=1e-12)
CANDIDATES = Setting(
    "params",
    str,
    "non-embedding",
    "where entries are chosen: a parameter selection (default: all but lookup "
    "tables, whose rows for tokens absent from the scored batches score 0)",
)
FRACTION = Setting(
    "fraction",
    float,
    0.1,
    "fraction of the candidate entries trained (the least sensitive; entries tied at the threshold all are)",
    low=1e-9,
    high=1.0,
)
SCORE = Setting(
    "score",
    str,
    "official",
    "official: Σ_x (∂ logit of a label sampled from the model's softmax)², per example (the authors' pruners.py); "
    "batch-fisher: Σ over mini-batches of (∂ mean cross-entropy with the true labels)² (taskvec's earlier score)",
    choices=("official", "batch-fisher"),
)
ROUNDS = Setting("rounds", int, 4, "calibration rounds; round r keeps fraction^(r/rounds), rescoring (the authors' code: 4)", low=1)
EXAMPLES = Setting("examples", int, 0, "training examples scored each round (0: all, as the authors' code)", low=0)
# τJp's penalty is a term of the training loss (taskvec.train), not a parameterization:
PENALTY_WEIGHT = Setting(
    "lam",
    float,
    0.1,
    "weight λ (tune it: it scales with the features) of Σ_{t'≠t} mean ‖J(x_t'; θ0) τ‖² over the other tasks' inputs",
    low=0.0,
)
PENALTY_BATCH = Setting("penalty_batch", int, 8, "examples of each other task per step for the penalty", low=1)

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
    return LowRank(_pretrained(backbone), names, rank=settings[RANK.name], alpha=settings[ALPHA.name], seed=fit.seed, linearized=linearized)


def sparse_least_sensitive(backbone: Backbone, settings: Mapping[str, Any], fit: FitData, linearized: bool) -> Trainable:
    """The entries with the lowest scores on the task, calibrated over rounds (TaLoS;
    taskvec.finetuning.sensitivity names the authors' files and lines it follows)."""
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
    masks, stats = calibrate(score, prefixed, settings[FRACTION.name], settings[ROUNDS.name])
    stats = {"score": settings[SCORE.name], "examples": len(data.index), **stats}
    stats["per_tensor"] = {n.removeprefix("encoder."): f for n, f in stats["per_tensor"].items()}
    return SparseWeights(pretrained, {n.removeprefix("encoder."): m for n, m in masks.items()}, stats={"mask": stats})
