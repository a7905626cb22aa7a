"""TaLoS's choice of what to fine-tune: the entries the task's loss is least sensitive to at θ0.

Iurada et al. (ICLR 2025) fine-tune only the weights whose diagonal Fisher information on the
task is smallest: a change there moves the network's outputs least to first order, so
the fine-tuned model stays close to its linearization and its task vector interferes little
with others. The score here is the empirical diagonal Fisher, Σ_b (∂L_b/∂θ)², summed over a
few training mini-batches of the task at θ0 (the loss of the task's frozen head). The
fraction k of entries with the lowest scores is selected over all candidate parameters at once
(by default all but lookup tables: the rows of tokens absent from the scored batches score
exactly 0 and would be chosen first, though training never moves them); equal scores are
broken by position (parameter order, then entry), so exactly round(k·n) entries are chosen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import Batch
from .parts import Tensors


def fisher_scores(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    inputs: Batch,
    labels: torch.Tensor,
    *,
    batches: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> Tensors:
    """Σ over `batches` seeded mini-batches of the squared gradient of the loss, per entry.

    `model(**batch)` gives logits and must depend on `params` (tensors it uses, gradients on).
    """
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    n = len(labels)
    for _ in range(batches):
        index = torch.randperm(n, generator=generator)[: min(batch_size, n)]
        batch = {k: v[index].to(device) for k, v in inputs.items()}
        loss = F.cross_entropy(model(**batch).float(), labels[index].to(device))
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads):
            if g is not None:
                scores[name] += g.detach().float() ** 2
    return scores


def least_sensitive(scores: Tensors, fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks selecting the round(fraction · n) entries with the lowest scores."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).cpu() for n in names])
    keep = int(round(fraction * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[:keep]] = True
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = chosen[start : start + size].view(scores[n].shape).to(scores[n].device)
        start += size
    return masks
