"""How linearly a non-linearly fine-tuned model behaves: f(θ0 + τ) against f_lin(θ0 + τ).

TaLoS and the paper both argue that task arithmetic works when fine-tuning stays in the tangent
space. For a vector τ trained through f, the gap between the fine-tuned model and its
linearization at θ0 measures how far it left that regime: on a task's validation set, the
accuracies of f(x; θ0 + τ) and f_lin(x; θ0 + τ) = f(x; θ0) + J(x; θ0)τ, and the relative
distance of their logits, ‖f − f_lin‖ / ‖f − f(θ0)‖ (Frobenius norms over the set): 0 when
fine-tuning was exactly linear, about 1 or more when the linear term misses the change.
"""
from __future__ import annotations

import torch

from ..evaluate import Evaluator, accuracy, encode_jvp
from ..results import Linearity


def linearity_gap(evaluator: Evaluator, task: str, split: str = "val") -> Linearity:
    """The gap for the task's own vector (α = 1) in a non-linear `evaluator` (one forward pass,
    cached, and one Jacobian-vector product)."""
    data = evaluator.sets[(task, split)]
    head = evaluator.heads[task]
    fine_tuned = evaluator.logits(task, split, {task: 1.0})
    f0, jt = encode_jvp(evaluator.base, evaluator.vectors[task].vector, data.inputs, evaluator.chunk, evaluator.device)
    linearized = head(f0 + jt)
    pretrained = head(f0)
    change = torch.linalg.vector_norm(fine_tuned - pretrained)
    gap = torch.linalg.vector_norm(fine_tuned - linearized)
    return Linearity(nonlinear=accuracy(fine_tuned, data.labels), linearized=accuracy(linearized, data.labels),
                     relative_gap=float(gap / change) if change > 0 else 0.0)
