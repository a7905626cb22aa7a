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
from .penalty import NORM_MEAN, PENALTY_TERMS

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
# L-LoRA's official code (peta finetune_clip.py linearize_lora_model, fusion_bench
# linearize_lora_model_) wraps each LoRA layer in its own first-order expansion inside the
# otherwise non-linear network; taskvec's earlier variant expands the whole network in the adapters.
LINEARIZE = Setting(
    "linearize",
    str,
    "adapters",
    "what is linearized in the adapters: 'adapters' (each LoRA layer on its own, as the official code: the network stays "
    "non-linear and vectors edit f) or 'network' (f_lin of the whole network: vectors edit f_lin)",
    choices=("adapters", "network"),
)
# LoRA task arithmetic has two official conventions: the L-LoRA paper's code adds the adapters
# themselves, A and B less their shared initialization (peta evaluate_single_task_clip.py
# l. 150-167, evaluate_multi_task_clip.py l. 244-281); fusion_bench merges each LoRA model into
# its weights first (merge_and_unload defaults to True: modelpool/PeftModelForSeq2SeqLM.py l. 46-47,
# modelpool/seq2seq_lm/modelpool.py l. 19 and 69), so its task arithmetic adds s·B·A, as taskvec's
# default does (every merge method and analysis takes it).
ARITHMETIC = Setting(
    "arithmetic",
    str,
    "weights",
    "what task arithmetic adds: 'weights' (the weight change s·B·A, as fusion_bench) or 'adapters' (ΔA, ΔB, as the L-LoRA paper's code: "
    "θ0 + α·Στ materializes W0 + s·(ΣαΔB)(A0 + ΣαΔA); merged by task arithmetic and TIES only)",
    choices=("weights", "adapters"),
)
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
# τJp's penalty is a term of the training loss (taskvec.finetuning.penalty), not a parameterization.
# Defaults: the official code's (katoro8989/tau-Jp_Task_Arithmetic, args.py `--penalty` 0.1;
# finetune_reg_strict.py line 306 `orth_batch_size` 16, lines 186-194 the norm-mean form).
PENALTY_WEIGHT = Setting(
    "lam",
    float,
    0.1,
    "weight λ of the penalty on τ's tangent features over the other tasks' (and the control's) inputs",
    low=0.0,
)
PENALTY_BATCH = Setting("penalty_batch", int, 16, "examples of each penalized dataset per step", low=1)
PENALTY_FORM = Setting(
    "penalty",
    str,
    NORM_MEAN,
    "norm-mean: mean over datasets of mean_x ‖J(x;θ0)τ‖ (official); squared-sum: Σ over datasets of mean_x ‖J(x;θ0)τ‖² (taskvec's earlier form)",
    choices=tuple(PENALTY_TERMS),
)
# TAK's (taskvec.finetuning.kfac): the official defaults of aimagelab/mammoth models/tak.py
TAK_WEIGHT = Setting(
    "lam", float, 500.0, "weight λ of Σ_layers tr(G ΔW A ΔWᵀ) over the other tasks' KFAC factors (official reg_lambda)", low=0.0
)
FACTOR_EXAMPLES = Setting(
    "examples", int, 0, "training examples of a task its KFAC factors average (0: all, official train_percent = 1.0)", low=0
)
PROBES = Setting("probes", int, 1, "Gaussian probes of the normalized features per example for G (official num_samples_expectation)", low=1)
CONVS = Setting(
    "convs",
    str,
    "kfac",
    "convolutions with groups = 1: kfac (trained, KFC factors of their patches) or frozen (as the official ViT's patch embedding)",
    choices=("kfac", "frozen"),
)

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
