"""The ways of getting and using task vectors (the paper's and later ones), each defined once.

Fine-tuning modes say how a task vector is trained (f or its linearization f_lin, and which
parameters: all, a subset, sparse entries, low-rank adapters; taskvec.finetuning); evaluation
methods say which vectors are applied to which model (f or f_lin). Everything else (training,
the evaluator, configs, the CLI, the report, `taskvec list`) asks these registries; a mode or
method is named by a string only here and in files it is saved to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import TaskvecError
from .finetuning.build import Builder, full_weights, kfac_layers, low_rank, sparse_least_sensitive, weight_subset
from .finetuning.settings import (
    ADAPTED,
    ALPHA,
    ARITHMETIC,
    CANDIDATES,
    CONVS,
    EXAMPLES,
    FACTOR_EXAMPLES,
    FRACTION,
    LINEARIZE,
    PARAMS,
    PENALTY_BATCH,
    PENALTY_FORM,
    PENALTY_WEIGHT,
    PROBES,
    RANK,
    ROUNDS,
    SCORE,
    TAK_WEIGHT,
)
from .registry import Kind, Registry, Setting, resolve_settings

PAPER = "https://arxiv.org/abs/2305.12827"


@dataclass(frozen=True)
class FinetuneMode(Kind):
    """How a task vector is fine-tuned.

    `linearized`: the trained model is linearized in the trained part (f_lin, or under
    L-LoRA's official `linearize = "adapters"` each adapted layer on its own, which leaves f:
    `applies_to_f_lin` says which model its vectors edit). `lr`: the learning rate a config or
    the Python API uses when none is given. `builds`: what it trains (taskvec.finetuning.build),
    with its declared `settings`. `penalty`: a term of the loss on τ's tangent features over other
    datasets (τJp: λ · mean over the other tasks and the control of mean_x ‖J(x; θ0) τ‖, its
    form a setting; taskvec.finetuning.penalty), which needs their training inputs. `curvature`: TAK's term, which
    needs the other tasks' KFAC factors at θ0 (taskvec.finetuning.kfac), not their inputs.
    `paper`: one of the paper's modes, which a run trains unless its config names others.
    """

    linearized: bool = False
    lr: float = 3e-5
    builds: Builder = field(default=full_weights, compare=False, repr=False)
    settings: tuple[Setting, ...] = ()
    penalty: bool = False
    curvature: bool = False
    paper: bool = False

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `given`; unknown or out-of-range values are a TaskvecError."""
        return resolve_settings(self.settings, given, f"train.{self.name}")

    def applies_to_f_lin(self, settings: Mapping[str, Any]) -> bool:
        """Whether this mode run with `settings` trains f_lin, so that its vectors live in the
        tangent space and edit f_lin (else f). `linearized` decides, except under L-LoRA's
        `linearize = "adapters"`: each LoRA layer linearized on its own is f at W0 + s·B·A0,
        so those vectors edit f. Settings without `linearize` (vectors made before it, or from
        a linearized checkpoint) mean the whole network."""
        return self.linearized and settings.get(LINEARIZE.name, "network") == "network"


FINETUNE_MODES: Registry[FinetuneMode] = Registry("fine-tuning mode")

_LORA = (ADAPTED, RANK, ALPHA)

NONLINEAR = FINETUNE_MODES.register(
    FinetuneMode(
        name="nonlinear",
        label="Non-linear FT",
        color="#1f77b4",
        linearized=False,
        lr=3e-5,
        paper=True,
        description="fine-tune f(x; θ) itself",
        reference=PAPER,
    )
)
LINEARIZED = FINETUNE_MODES.register(
    FinetuneMode(
        name="linear",
        label="Linearized FT",
        color="#2ca02c",
        linearized=True,
        lr=3e-4,
        paper=True,
        description="fine-tune f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0)",
        reference=PAPER,
    )
)
SUBSET = FINETUNE_MODES.register(
    FinetuneMode(
        name="subset",
        label="Subset FT",
        color="#9467bd",
        linearized=False,
        lr=3e-5,
        builds=weight_subset,
        settings=(PARAMS,),
        description="fine-tune f in a subset of its parameters (default: the attention projections)",
        reference="Jin et al., Fine-tuning attention modules only, ICLR 2025",
    )
)
LINEAR_SUBSET = FINETUNE_MODES.register(
    FinetuneMode(
        name="linear-subset",
        label="Linearized subset FT",
        color="#c5b0d5",
        linearized=True,
        lr=3e-4,
        builds=weight_subset,
        settings=(PARAMS,),
        description="fine-tune f linearized in a subset of its parameters, the rest frozen at θ0",
        reference=PAPER,
    )
)
LORA = FINETUNE_MODES.register(
    FinetuneMode(
        name="lora",
        label="LoRA",
        color="#8c564b",
        linearized=False,
        lr=3e-4,
        builds=low_rank,
        settings=(*_LORA, ARITHMETIC),
        description="low-rank adapters W0 + (alpha/r)·B·A, trained through f; the vector is (alpha/r)·B·A, or the adapters",
        reference="Hu et al., LoRA, ICLR 2022",
    )
)
LINEAR_LORA = FINETUNE_MODES.register(
    FinetuneMode(
        name="linear-lora",
        label="Linearized LoRA",
        color="#c49c94",
        linearized=True,
        lr=1e-3,
        builds=low_rank,
        settings=(*_LORA, LINEARIZE),
        description="L-LoRA: each LoRA layer (or the whole f) linearized in its adapters around (A0, 0); the vector is (alpha/r)·B·A0",
        reference="Tang et al., Partial linearization for parameter-efficient model fusion (L-LoRA), ICLR 2024",
    )
)
TALOS = FINETUNE_MODES.register(
    FinetuneMode(
        name="talos",
        label="TaLoS",
        color="#e377c2",
        linearized=False,
        lr=3e-3,
        builds=sparse_least_sensitive,
        settings=(FRACTION, SCORE, ROUNDS, EXAMPLES, CANDIDATES),
        description="fine-tune f in the entries least sensitive on the task (squared gradients of sampled logits), calibrated over rounds",
        reference="Iurada et al., Task-localized sparse fine-tuning (TaLoS), ICLR 2025",
    )
)
TJP = FINETUNE_MODES.register(
    FinetuneMode(
        name="tjp",
        label="τJp",
        color="#17becf",
        linearized=True,
        lr=3e-4,
        penalty=True,
        settings=(PENALTY_WEIGHT, PENALTY_BATCH, PENALTY_FORM),
        description="linearized FT penalizing τ's tangent features on the other tasks' (and the control's) training inputs",
        reference="Yoshida et al., τJp, ICLR 2025",
    )
)
TAK = FINETUNE_MODES.register(
    FinetuneMode(
        name="tak",
        label="TAK",
        color="#bcbd22",
        linearized=True,
        lr=3e-4,
        builds=kfac_layers,
        curvature=True,
        settings=(TAK_WEIGHT, FACTOR_EXAMPLES, PROBES, CONVS),
        description="linearized FT penalized by the other tasks' KFAC factors of their representation drift at θ0 (dataless)",
        reference="Porrello et al., TAK, ICLR 2026 (arXiv 2602.17385; code: aimagelab/mammoth models/tak.py)",
    )
)


@dataclass(frozen=True)
class EvalMethod(Kind):
    """How task vectors are used: which mode's vectors (`vectors`; None: none, θ0 alone) are
    applied to which model (`linearized`: f_lin, else f)."""

    vectors: FinetuneMode | None = None
    linearized: bool = False

    @property
    def edits(self) -> bool:
        return self.vectors is not None

    @property
    def post_hoc(self) -> bool:
        """Applies vectors fine-tuned non-linearly to f_lin (post-hoc linearization)."""
        return self.linearized and self.vectors is not None and not self.vectors.linearized


EVAL_METHODS: Registry[EvalMethod] = Registry("evaluation method")

PRETRAINED = EVAL_METHODS.register(EvalMethod(name="pretrained", label="Pre-trained", color="#7f7f7f", description="θ0, no task vector"))
NONLINEAR_FT = EVAL_METHODS.register(
    EvalMethod(
        name="nonlinear",
        label=NONLINEAR.label,
        color=NONLINEAR.color,
        vectors=NONLINEAR,
        linearized=False,
        description="non-linear vectors applied to f",
        reference=PAPER,
    )
)
POSTHOC = EVAL_METHODS.register(
    EvalMethod(
        name="posthoc",
        label="Post-hoc linearization",
        color="#ff7f0e",
        vectors=NONLINEAR,
        linearized=True,
        description="non-linear vectors applied to f_lin",
        reference=PAPER,
    )
)
LINEARIZED_FT = EVAL_METHODS.register(
    EvalMethod(
        name="linear",
        label=LINEARIZED.label,
        color=LINEARIZED.color,
        vectors=LINEARIZED,
        linearized=True,
        description="linearized vectors applied to f_lin",
        reference=PAPER,
    )
)

# Every other mode's vectors are evaluated on the model they were trained through, under the
# mode's own name (as the paper's two are).
for _mode in FINETUNE_MODES:
    if _mode.name not in EVAL_METHODS:
        EVAL_METHODS.register(
            EvalMethod(
                name=_mode.name,
                label=_mode.label,
                color=_mode.color,
                vectors=_mode,
                linearized=_mode.linearized,
                description=f"{_mode.name} vectors applied to "
                + ("f or f_lin by its linearize setting" if LINEARIZE in _mode.settings else "f_lin" if _mode.linearized else "f"),
                reference=_mode.reference,
            )
        )


def editing_methods(modes: list[FinetuneMode] | None = None) -> list[EvalMethod]:
    """The evaluation methods that apply task vectors of the given modes (default: all), in
    registry order."""
    return [m for m in EVAL_METHODS if m.edits and (modes is None or m.vectors in modes)]


def method_for_vector(mode: FinetuneMode, *, linearized: bool = False) -> EvalMethod:
    """The method that evaluates a vector of `mode` on f, or on f_lin when `linearized` (a
    linearized mode's own method; its evaluator follows the vectors' `applies_to_f_lin`)."""
    wanted = linearized or mode.linearized
    for method in editing_methods([mode]):
        if method.linearized == wanted:
            return method
    raise TaskvecError(
        f"no evaluation method applies {mode.name} vectors to {'f_lin' if wanted else 'f'} "
        f"(post-hoc linearization is registered for {', '.join(m.vectors.name for m in EVAL_METHODS if m.post_hoc and m.vectors is not None)} vectors)"
    )
