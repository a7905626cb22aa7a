"""τJp's penalty on τ's tangent features over other datasets, a term of the training loss.

The official code (katoro8989/tau-Jp_Task_Arithmetic, finetune_reg_strict.py, lines 165-196)
adds to the loss, every step, `args.penalty · mean_d mean_x ‖J(x; θ0) τ‖` (args.py: penalty
= 0.1): for each dataset d of `train_datasets_to_orth` (the other tasks, then "ImageNetVal",
line 301), the next batch of its own persistent training loader (lines 170-179: drawn from
`dataset.train_loader`, `is_train=True`, line 100; 16 examples, `orth_batch_size`, line 306),
`tau_jacob = image_encoder.model.dp(inputs)` (the JVP of the encoder's unnormalized features
at θ0 along τ = θ − θ0, linearize.py `LinearizedModel.dp`), `torch.norm(tau_jacob, dim=1)`
(the L2 norm over the output features of each example, line 187), the mean over the batch
(line 190), then the mean over the datasets, the control being one more dataset (line 194).

`norm-mean` is that form; `squared-sum` is the form taskvec used before, λ Σ_d mean_x
‖J(x; θ0) τ‖² — squared and summed, so the same λ is a different strength. A penalty term is
a function `(encoder, batches) -> scalar tensor` named by a form (`PENALTY_TERMS`), so another
penalty kind can be registered beside these. Torch is imported when a term runs, so
taskvec.kinds, which reads the forms, stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import TaskvecError

if TYPE_CHECKING:
    import torch

    from ..models.base import Batch
    from .parts import TunedEncoder

NORM_MEAN = "norm-mean"
SQUARED_SUM = "squared-sum"
PenaltyTerm = Callable[["TunedEncoder", Sequence["Batch"]], "torch.Tensor"]


def _tangents(encoder: TunedEncoder, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """J(x; θ0) τ for each batch (examples first), at least float32 (under bf16 autocast too)."""
    import torch

    out = []
    for batch in batches:
        tangent = encoder.tangent_features(batch)[1]
        out.append(tangent.to(torch.promote_types(tangent.dtype, torch.float32)))
    return out


def norm_mean(encoder: TunedEncoder, batches: Sequence[Batch]) -> torch.Tensor:
    """mean over datasets of mean_x ‖J(x; θ0) τ‖ (finetune_reg_strict.py lines 186-194)."""
    import torch

    return torch.stack([t.flatten(1).norm(dim=1).mean() for t in _tangents(encoder, batches)]).mean()


def squared_sum(encoder: TunedEncoder, batches: Sequence[Batch]) -> torch.Tensor:
    """Σ over datasets of mean_x ‖J(x; θ0) τ‖² (taskvec's earlier form; the squares summed over
    the last axis, averaged over the others)."""
    import torch

    return torch.stack([t.pow(2).sum(-1).mean() for t in _tangents(encoder, batches)]).sum()


PENALTY_TERMS: dict[str, PenaltyTerm] = {NORM_MEAN: norm_mean, SQUARED_SUM: squared_sum}


@dataclass(frozen=True)
class EffectivePenalty:
    """What a fine-tune's penalty was: its form, λ, the datasets it read (other tasks, then the
    control, if any) and the examples of each per step. Recorded in the task vector's info."""

    form: str
    lam: float
    examples: int
    datasets: tuple[str, ...]
    control: str | None = None

    def describe(self) -> str:
        """One line, e.g. "λ = 0.1 · mean over 3 datasets (b, c + control d) of mean_x ‖J(x)τ‖, 16 examples each"."""
        others = [d for d in self.datasets if d != self.control]
        names = ", ".join(others) + (f" + control {self.control}" if self.control else "; no control")
        n = len(self.datasets)
        if self.form == NORM_MEAN:
            term = f"mean over {n} datasets ({names}) of mean_x ‖J(x;θ0)τ‖"
        elif self.form == SQUARED_SUM:
            term = f"sum over {n} datasets ({names}) of mean_x ‖J(x;θ0)τ‖²"
        else:
            term = f"{self.form} over {n} datasets ({names})"
        return f"λ = {self.lam:g} · {term}, {self.examples} examples each per step"


def penalty_data(
    task_inputs: Batch, others: Sequence[Batch] | Mapping[str, Batch], control: tuple[str, Batch] | None
) -> tuple[tuple[str, ...], list[Batch], str | None]:
    """(names, inputs, control name) of the datasets a penalty reads: the other tasks (unnamed
    ones called "other 1", ...), then the control as one more dataset (finetune_reg_strict.py
    line 301 appends "ImageNetVal" to the list). Each must hold examples with the task's input
    keys, else a one-line TaskvecError."""
    named = dict(others) if isinstance(others, Mapping) else {f"other {k + 1}": b for k, b in enumerate(others)}
    if control is not None:
        if control[0] in named:
            raise TaskvecError(f"the control {control[0]!r} is also among the other tasks: give it once")
        named[control[0]] = control[1]
    for name, batch in named.items():
        if set(batch) != set(task_inputs):
            raise TaskvecError(f"penalty data {name!r} has inputs {sorted(batch)}, but the task's are {sorted(task_inputs)}")
        if len({len(v) for v in batch.values()}) != 1 or len(next(iter(batch.values()))) == 0:
            raise TaskvecError(f"penalty data {name!r} has no examples (or inputs of unequal lengths)")
    return tuple(named), list(named.values()), control[0] if control is not None else None
