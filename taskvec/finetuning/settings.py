"""The fine-tuning modes' declared settings (`Setting`s): names, types, defaults, ranges and what
each means, as `taskvec list`, configs and the results show them. Torch-free, and imported by
the builders (taskvec.finetuning.build) and by the pieces that read a setting (TaLoS's scores,
τJp's penalty, TAK's factors), so that none of them imports another to read a name.
"""

from __future__ import annotations

from ..registry import Setting
from .penalty import NORM_MEAN, PENALTY_TERMS

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
