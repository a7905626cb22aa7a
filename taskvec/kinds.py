"""The paper's ways of getting and using task vectors, each defined once.

Fine-tuning modes say how a task vector is trained (f or its linearization f_lin); evaluation
methods say which vectors are applied to which model (f or f_lin). Everything else (training,
the evaluator, configs, the CLI, the report, `taskvec list`) asks these registries; a mode or
method is named by a string only here and in files it is saved to.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import Kind, Registry

PAPER = "https://arxiv.org/abs/2305.12827"


@dataclass(frozen=True)
class FinetuneMode(Kind):
    """How a task vector is fine-tuned. `linearized`: the trained model is f_lin, so its vectors
    live in the tangent space and only make sense applied to f_lin. `lr`: the learning rate a
    config or the Python API uses when none is given."""

    linearized: bool = False
    lr: float = 3e-5


FINETUNE_MODES: Registry[FinetuneMode] = Registry("fine-tuning mode")

NONLINEAR = FINETUNE_MODES.register(FinetuneMode(
    name="nonlinear", label="Non-linear FT", color="#1f77b4", linearized=False, lr=3e-5,
    description="fine-tune f(x; θ) itself", reference=PAPER))
LINEARIZED = FINETUNE_MODES.register(FinetuneMode(
    name="linear", label="Linearized FT", color="#2ca02c", linearized=True, lr=3e-4,
    description="fine-tune f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0)", reference=PAPER))


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

PRETRAINED = EVAL_METHODS.register(EvalMethod(
    name="pretrained", label="Pre-trained", color="#7f7f7f", description="θ0, no task vector"))
NONLINEAR_FT = EVAL_METHODS.register(EvalMethod(
    name="nonlinear", label=NONLINEAR.label, color=NONLINEAR.color, vectors=NONLINEAR, linearized=False,
    description="non-linear vectors applied to f", reference=PAPER))
POSTHOC = EVAL_METHODS.register(EvalMethod(
    name="posthoc", label="Post-hoc linearization", color="#ff7f0e", vectors=NONLINEAR, linearized=True,
    description="non-linear vectors applied to f_lin", reference=PAPER))
LINEARIZED_FT = EVAL_METHODS.register(EvalMethod(
    name="linear", label=LINEARIZED.label, color=LINEARIZED.color, vectors=LINEARIZED, linearized=True,
    description="linearized vectors applied to f_lin", reference=PAPER))


def editing_methods(modes: list[FinetuneMode] | None = None) -> list[EvalMethod]:
    """The evaluation methods that apply task vectors of the given modes (default: all), in
    registry order."""
    return [m for m in EVAL_METHODS if m.edits and (modes is None or m.vectors in modes)]


def method_for_vector(mode: FinetuneMode, *, linearized: bool = False) -> EvalMethod:
    """The method that evaluates a vector of `mode` on f, or on f_lin when `linearized`
    (a linearized mode's vectors are always evaluated on f_lin)."""
    wanted = linearized or mode.linearized
    for method in editing_methods([mode]):
        if method.linearized == wanted:
            return method
    raise LookupError(f"no evaluation method applies {mode.name} vectors to {'f_lin' if wanted else 'f'}")
