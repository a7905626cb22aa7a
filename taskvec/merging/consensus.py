"""Consensus merging with TALL masks: keep only the weights that several tasks need."""

from __future__ import annotations

from ..registry import Setting
from .base import MergeInputs, Tensors, merge_method


@merge_method(
    name="consensus",
    label="Consensus TA",
    color="#637939",
    reference="https://arxiv.org/abs/2405.07813",
    settings=(
        Setting(
            "k",
            int,
            2,
            "keep a weight if at least k tasks' TALL masks select it (votes ≥ k as the official prun_thre_k; 2 removes selfish and catastrophic weights, 0 gives TA)",
            low=0,
        ),
        Setting(
            "lam",
            float,
            0.4,
            "λ of the TALL masks m_t = 1{|τ_t| > λ |τ_MTL − τ_t|} (strict, as the official code)",
            low=0.0,
            grid=(0.2, 0.4, 0.6),
        ),
    ),
)
def consensus(inputs: MergeInputs, k: int, lam: float) -> Tensors:
    """Consensus Task Arithmetic (Wang et al., ICML 2024): TA without weights few tasks need.

    τ_MTL = Σ_t τ_t. Task t's TALL mask marks the weights where τ_t matters more than the other
    tasks' interference: |τ_t| > λ |τ_MTL − τ_t|, strictly, as the official `generate_task_masks`
    (nik-dim/tall_masks src/utils/tallmask_utils.py L58-61: `diff_pt_ft > diff_multi_ft *
    tall_mask_lambda`; a weight no task moved is in no mask). Weights selected by fewer than k
    tasks are "selfish" (one task) or "catastrophic" (none) and are removed: d = τ_MTL ⊙
    1{Σ_t m_t ≥ k} (`construct_consensus_mask`, L214-221: `>= prun_thre_k`; τ_MTL the plain sum,
    aggregation.py L131-136 with k = 100, no trim).
    The paper picks λ per task from {0.2, …, 0.6} by reconstructing each single-task model; a
    merge has no per-task evaluation, so one λ is shared by the tasks and searched with α on the
    merged model (grid 0.2, 0.4, 0.6). k = 2 as the paper; α over the standard TA grid.
    """
    merged = {}
    for name in inputs.names:
        deltas = inputs.stacked(name)
        total = deltas.sum(0)
        votes = (deltas.abs() > (total - deltas).abs() * lam).sum(0)
        merged[name] = total * (votes >= k)
    return merged
