"""TaLoS's choice of what to fine-tune: the entries the task's outputs are least sensitive to.

Iurada et al. (ICLR 2025) fine-tune only the weights whose diagonal Fisher information is
smallest: a change there moves the network's outputs least to first order, so the fine-tuned
model stays close to its linearization and its task vector interferes little with others.
This module follows the authors' code, github.com/iurada/talos-task-arithmetic at b99d422:

* the score (`vision/pruners.py`, `TaLoS.score`, lines 189-212): the model in eval mode, one
  label ŷ per example sampled from the model's own softmax (`Categorical(logits).sample()`,
  line 204; the true labels are not used), and Σ_x (∂ z_ŷ(x) / ∂θ)² summed over the scoring
  data, one backward per example (lines 207-212): the empirical Fisher of the model's own
  predictive distribution, a gradient of the *logit*, not of the loss. The scoring data is
  the task's whole training split (`prune_finetune.py` line 91: `N_PRUNING_BATCHES = -1`).
* the calibration (`vision/prune_finetune.py` lines 107-113): 4 rounds (line 90, the `rounds`
  setting's default); round r keeps the fraction k^((r+1)/4) of the candidates (line 109), rescoring each round with the
  model in which every entry already dropped is scaled by 0.1 (`pruners.py` line 71: the mask
  buffer becomes 0.1, and `layers.py`'s masked layers compute W·mask). The threshold
  (`pruners.py` lines 60-71) is the m-th smallest score among the entries still kept, with
  m = min(int(fraction·n), kept − 1) over all n candidates, and an entry stays if its score is
  ≤ the threshold: every entry tied at the threshold is kept, so more than the requested
  fraction can be trained (`mask_stats` says how many; a warning says so).

Sampling here is seeded: each round draws one uniform per scored example from a generator seeded
by the run's seed and samples ŷ by inversion of the softmax's cumulative distribution (an exact
categorical draw that does not depend on how examples are batched). Per-example gradients are
`torch.func.vmap(grad(...))` over chunks of examples sized to a memory budget.

`score = "batch-fisher"` keeps taskvec's earlier score (a deliberate difference, for comparison):
Σ over mini-batches of the squared gradient of the mean cross-entropy with the true labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import TaskvecError
from ..models.base import Batch
from .parts import Tensors
from .settings import SCORE

DROPPED_SCALE = 0.1  # pruners.py line 71: a dropped entry's mask value while later rounds score
GRADIENT_BYTES = 256 * 2**20  # per-example gradients held at once (a chunk of examples)

Scorer = Callable[[Tensors], Tensors]


@dataclass
class ScoringData:
    """What the scores are summed over: `model(**batch)` gives logits; `index` the examples
    scored; `generator` draws the sampled labels (official score)."""

    model: nn.Module
    inputs: Batch
    labels: torch.Tensor
    index: torch.Tensor
    batch_size: int
    generator: torch.Generator
    device: torch.device


def scoring_index(n: int, examples: int, seed: int) -> torch.Tensor:
    """All `n` examples in order (`examples` = 0, as the official code), else a seeded subset."""
    if examples == 0 or examples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 7))[:examples]


def _take(data: ScoringData, index: torch.Tensor) -> Batch:
    return {k: v[index].to(data.device) for k, v in data.inputs.items()}


def _chunk_size(weights: Tensors) -> int:
    per_example = sum(w.numel() * w.element_size() for w in weights.values())
    return max(1, min(64, GRADIENT_BYTES // max(1, per_example)))


def sample_labels(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """ŷ ~ softmax(logits) per row, by inversion: the first class whose cumulative probability
    exceeds the row's uniform draw."""
    cumulative = torch.softmax(logits.detach().double().cpu(), dim=-1).cumsum(-1)
    return (cumulative <= uniforms.double().unsqueeze(1)).sum(-1).clamp(max=logits.shape[-1] - 1)


def sampled_logit_scores(data: ScoringData, weights: Tensors) -> Tensors:
    """Σ_x (∂ z_ŷ(x) / ∂w)² at `weights`, ŷ sampled from the model's softmax (pruners.py 189-212)."""
    model = data.model

    def logit(w: Tensors, example: Batch, label: torch.Tensor) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in example.items()}
        return functional_call(model, w, args=(), kwargs=one)[0].gather(0, label.view(1)).squeeze(0)

    per_example = vmap(grad(logit), in_dims=(None, 0, 0))
    scores = {n: torch.zeros_like(w) for n, w in weights.items()}
    uniforms = torch.rand(len(data.index), generator=data.generator, dtype=torch.float64)
    chunk = _chunk_size(weights)
    for start in range(0, len(data.index), chunk):
        index = data.index[start : start + chunk]
        batch = _take(data, index)
        with torch.no_grad():
            logits = functional_call(model, weights, args=(), kwargs=batch)
        labels = sample_labels(logits, uniforms[start : start + len(index)]).to(data.device)
        grads = per_example({n: w.detach() for n, w in weights.items()}, batch, labels)
        for n, g in grads.items():
            scores[n] += g.detach().pow(2).sum(0)
    return scores


def batch_fisher_scores(data: ScoringData, weights: Tensors) -> Tensors:
    """Σ over mini-batches of (∂ mean cross-entropy(true labels) / ∂w)² (taskvec's earlier score)."""
    scores = {n: torch.zeros_like(w) for n, w in weights.items()}
    leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
    for index in data.index.split(data.batch_size):
        logits = functional_call(data.model, leaves, args=(), kwargs=_take(data, index))
        loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), data.labels[index].to(data.device))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for n, g in zip(leaves, grads):
            if g is not None:
                scores[n] += g.detach().to(scores[n].dtype) ** 2
    return scores


def scorer(score: str, data: ScoringData) -> Scorer:
    """weights -> per-entry scores at those weights, for the named score."""
    SCORE.check(score, "train.talos")
    chosen = sampled_logit_scores if score == "official" else batch_fisher_scores

    def run(weights: Tensors) -> Tensors:
        with torch.enable_grad():
            return chosen(data, weights)

    return run


def calibrate(score: Scorer, pretrained: Tensors, fraction: float, rounds: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The boolean masks of the entries TaLoS trains and their statistics (`mask_stats`).

    Round r (of `rounds`) scores the model whose dropped entries are scaled by DROPPED_SCALE,
    then keeps, among the entries still kept, those scoring ≤ the threshold for the fraction
    fraction^((r+1)/rounds) of all candidates (prune_finetune.py 107-113, pruners.py 60-71).
    """
    kept = {n: torch.ones_like(p, dtype=torch.bool) for n, p in pretrained.items()}
    total = sum(p.numel() for p in pretrained.values())
    if fraction >= 1.0:  # prune_finetune.py line 107: nothing to calibrate
        return kept, mask_stats(kept, fraction, rounds, zero=None, threshold=None)
    zero, threshold = 0, 0.0
    for r in range(rounds):
        keep = fraction ** ((r + 1) / rounds)
        weights = {n: p * torch.where(kept[n], 1.0, DROPPED_SCALE).to(p.dtype) for n, p in pretrained.items()}
        scores = score(weights)
        if r == 0:
            zero = sum(int((s == 0).sum()) for s in scores.values())
        candidates = torch.cat([scores[n][kept[n]].flatten().cpu() for n in pretrained])
        m = min(int(keep * total), candidates.numel() - 1)
        if m < 1:
            raise TaskvecError(f"TaLoS fraction {fraction} keeps no entry of the {total} candidates: raise train.talos.fraction")
        t = torch.kthvalue(candidates, m).values
        kept = {n: kept[n] & (scores[n] <= t.to(scores[n].device)) for n in pretrained}
        threshold = float(t)
    stats = mask_stats(kept, fraction, rounds, zero=zero / total, threshold=threshold)
    _warn_if_tied(stats, total)
    return kept, stats


def mask_stats(
    masks: dict[str, torch.Tensor], fraction: float, rounds: int, *, zero: float | None, threshold: float | None
) -> dict[str, Any]:
    """What was really selected: requested and trained fractions of the candidates, the fraction
    scoring exactly 0 at θ0, the last round's threshold, and each tensor's fraction trained."""
    total = sum(m.numel() for m in masks.values())
    trained = sum(int(m.sum()) for m in masks.values())
    return {
        "requested": fraction,
        "trained": trained / total,
        "zero_score": zero,
        "candidates": total,
        "threshold": threshold,
        "rounds": rounds,
        "per_tensor": {n: int(m.sum()) / m.numel() for n, m in masks.items()},
    }


def _warn_if_tied(stats: dict[str, Any], total: int) -> None:
    requested = int(stats["requested"] * total)
    trained = round(stats["trained"] * total)
    if trained > requested:
        warnings.warn(
            f"TaLoS: {trained - requested} candidate entries tie at the threshold score {stats['threshold']:.3g} "
            f"({stats['zero_score']:.1%} score exactly 0): {stats['trained']:.2%} of the candidates are trained, "
            f"not the requested {stats['requested']:.2%}",
            stacklevel=2,
        )
