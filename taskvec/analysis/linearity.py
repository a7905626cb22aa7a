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

from ..evaluate import Evaluator, correct, encode_jvp
from ..results import Linearity


def linearity_gap(evaluator: Evaluator, task: str, split: str = "val") -> Linearity:
    """The gap for the task's own vector (α = 1) in a non-linear `evaluator` (one forward pass,
    cached, and one Jacobian-vector product). Sharded, each rank takes its own rows; the
    accuracies are summed counts and the norms sum per-row squares in float64 in row order,
    so the result does not depend on the number of ranks."""
    data = evaluator.local(task, split)
    fine_tuned = evaluator.logits(task, split, {task: 1.0})
    if len(data):
        change = evaluator.vectors[task].weight_change(dict(evaluator.base.named_parameters()))  # LoRA adapters materialized
        f0, jt = encode_jvp(evaluator.base, change, data.inputs, evaluator.chunk, evaluator.device)
        linearized, pretrained = evaluator.apply_head(task, f0 + jt), evaluator.apply_head(task, f0)
    else:
        linearized = pretrained = fine_tuned
    ranks = evaluator.ranks
    counts = ranks.total(torch.tensor([correct(fine_tuned, data.labels), correct(linearized, data.labels)]))
    sizes = [b - a for a, b in ranks.spans(evaluator.size(task, split), evaluator.chunk)]
    differences = torch.stack([fine_tuned - pretrained, fine_tuned - linearized], 1)  # (rows, 2, classes)
    squares = (
        evaluator.by_chunks(lambda part: part.double().square().sum(-1), differences)
        if len(differences)
        else differences.new_empty((0, 2), dtype=torch.float64)
    )
    change, gap = ranks.gather(squares, sizes).sum(0).sqrt().tolist()
    n = evaluator.size(task, split)
    return Linearity(nonlinear=int(counts[0]) / n, linearized=int(counts[1]) / n, relative_gap=gap / change if change > 0 else 0.0)
