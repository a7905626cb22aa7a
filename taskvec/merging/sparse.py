"""Task arithmetic and its sparsified variants as settings of one procedure (as mergekit's
generalized task arithmetic): sparsify each task's vector, then combine the tasks either by a sum
or, TIES-style, by electing a sign per entry and taking the mean of the entries that agree.

| method      | sparsify                                      | combine             |
|-------------|-----------------------------------------------|---------------------|
| TA          | none                                          | sum                 |
| TIES        | keep the top-k magnitudes of the whole vector | elect + mean        |
| DARE        | random drop with rate p, rescale by 1/(1−p)   | sum or elect + mean |
| Breadcrumbs | per row, mask the smallest and the largest    | sum                 |
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

from ..errors import TaskvecError
from ..lazy import lazy_import
from ..registry import Setting
from .base import MergeInputs, Tensors, merge_method
from .tensors import kth_largest_magnitude, magnitudes, truncated_count

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

Sparsifier = Callable[[int, str, "torch.Tensor"], "torch.Tensor"]
"""(task index, parameter name, that task's tensor) -> the sparsified tensor."""

Combine = Literal["sum", "ties"]


def elected_signs(deltas: torch.Tensor) -> torch.Tensor:
    """TIES's elected sign per entry before the fallback: sign of the sum over the task axis 0
    (official `resolve_sign`, ties-merging src/utils/merge_utils.py "mass"; TALL masks'
    src/utils/ties_utils.py L17-20); 0 where the values cancel exactly."""
    return torch.sign(deltas.sum(0))


def elect_and_mean(deltas: torch.Tensor, majority: float) -> torch.Tensor:
    """TIES's sign election and disjoint mean over the task axis 0.

    The elected sign of an entry is the sign of the sum of the tasks' values; where that sum is
    exactly 0 it is `majority`, the sign of the sum of the elected signs over the *whole* vector
    (official `resolve_zero_signs(..., "majority")`, ties_utils.py L7-14; `majority_sign` below).
    As the official `disjoint_merge` (L23-37), an entry whose elected sign is > 0 averages the
    tasks' positive values, any other (< 0, or 0 when even the majority is 0) the negative ones;
    the result is their mean, or 0 where none agrees.
    """
    elected = elected_signs(deltas)
    elected = torch.where(elected == 0, torch.full_like(elected, majority), elected)
    agree = torch.where(elected > 0, deltas > 0, deltas < 0)
    total = (deltas * agree).sum(0)
    return total / agree.sum(0).clamp(min=1)


def sparsified(inputs: MergeInputs, name: str, sparsify: Sparsifier | None) -> torch.Tensor:
    """(T, *shape): every task's tensor of one parameter, after `sparsify`."""
    deltas = inputs.stacked(name)
    if sparsify is None:
        return deltas
    return torch.stack([sparsify(t, name, delta) for t, delta in enumerate(deltas)])


def majority_sign(inputs: MergeInputs, sparsify: Sparsifier | None) -> float:
    """sign(Σ elected signs) over every entry of the whole (sparsified) vector: a streaming
    pre-pass, parameter by parameter (official `majority_sign = torch.sign(sign_to_mult.sum())`)."""
    total = 0
    for name in inputs.names:
        total += int(elected_signs(sparsified(inputs, name, sparsify)).sum())
    return float((total > 0) - (total < 0))


def generalized_task_arithmetic(inputs: MergeInputs, sparsify: Sparsifier | None = None, combine: Combine = "sum") -> Tensors:
    """Parameter by parameter: sparsify each task's tensor, then sum or elect + disjoint mean."""
    majority = majority_sign(inputs, sparsify) if combine == "ties" else 0.0
    merged = {}
    for name in inputs.names:
        deltas = sparsified(inputs, name, sparsify)
        merged[name] = elect_and_mean(deltas, majority) if combine == "ties" else deltas.sum(0)
    return merged


# ----- sparsifiers ----------------------------------------------------------------------------------


def ties_trim_rank(k: float) -> Callable[[int], int]:
    """TIES's trim threshold, the (int(k·d) + 1)-th largest |x| of d, as the official
    `topk_values_mask` (ties-merging src/utils/merge_utils.py; TALL masks src/utils/utils.py
    L251-273): it takes the (d − int(d·K))-th smallest |x| and keeps |x| ≥ it, so int(k·d) + 1
    entries without ties (all d for k = 1, where the official code fails)."""
    return lambda d: min(d, truncated_count(k, d) + 1)


def global_top_k(inputs: MergeInputs, rank: Callable[[int], int], before: Sparsifier | None = None) -> Sparsifier:
    """Keep, in each task's whole vector of d entries (first sparsified by `before`), those whose
    magnitude is at least its rank(d)-th largest. Thresholds come from an exact streaming
    pre-pass per task (`before` is applied again then: it must be deterministic)."""

    def stream(t: int) -> Callable[[], Iterator[torch.Tensor]]:
        if before is None:
            return inputs.task(t)
        vector = inputs.vectors[t]
        return lambda: (before(t, name, vector[name].to(torch.promote_types(vector[name].dtype, torch.float32))) for name in inputs.names)

    thresholds = []
    for t in range(len(inputs)):
        total = sum(x.numel() for x in inputs.task(t)())
        thresholds.append(kth_largest_magnitude(stream(t), rank(total)))

    def sparsify(t: int, name: str, delta: torch.Tensor) -> torch.Tensor:
        if before is not None:
            delta = before(t, name, delta)
        return delta * (magnitudes(delta) >= thresholds[t])

    return sparsify


def dare_seed(seed: int, task: int, name: str) -> int:
    """The generator seed of one task's tensor: a function of (seed, task index, parameter name)
    only, so the drop masks do not depend on the order parameters are processed in."""
    return zlib.crc32(f"{seed}/{task}/{name}".encode())


def random_drop(p: float, seed: int) -> Sparsifier:
    """DARE: drop each entry with probability p, rescale the kept ones by 1/(1−p)."""

    def sparsify(task: int, name: str, delta: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(dare_seed(seed, task, name))
        keep = torch.rand(delta.shape, generator=generator) >= p
        return delta * keep.to(delta.device) / (1.0 - p)

    return sparsify


Ranking = Literal["row", "tensor"]


def middle_band(keep: float, top: float, ranking: Ranking) -> Sparsifier:
    """Breadcrumbs: mask the int(n·top) largest magnitudes (outliers), keep the int(n·keep) next
    largest, mask the rest, where n is a row's length (ranking="row": along the last dimension,
    as the official `TaskVectorMiddleKeep`, rezazzr/breadcrumbs src/task_vectors.py L155-195:
    `mask_remove_top` then `mask_keep_top`, each `int(tensor.shape[-1] * fraction)` by
    `torch.topk` along the last dimension) or the whole tensor's size (ranking="tensor", as
    mergekit's `magnitude_outliers`, arcee-ai/mergekit mergekit/sparsify.py, which counts
    `int(density * numel)` and `int(gamma * numel)`). A 0-d tensor is left as it is (official
    L176, L187)."""

    def sparsify(task: int, name: str, delta: torch.Tensor) -> torch.Tensor:
        if delta.ndim == 0:
            return delta
        rows = magnitudes(delta).reshape(-1, delta.shape[-1]) if ranking == "row" else magnitudes(delta).reshape(1, -1)
        n = rows.shape[1]
        removed, kept = truncated_count(top, n), truncated_count(keep, n)
        rank = torch.argsort(torch.argsort(rows, dim=1, descending=True, stable=True), dim=1)  # 0 = largest
        mask = (rank >= removed) & (rank < removed + kept)
        return delta * mask.view(delta.shape)

    return sparsify


# ----- the registered methods -------------------------------------------------------------------------


@merge_method(name="task_arithmetic", label="Task Arithmetic", color="#393b79", reference="https://arxiv.org/abs/2212.04089")
def task_arithmetic(inputs: MergeInputs) -> Tensors:
    """Σ_t τ_t: plain task addition (Ilharco et al., ICLR 2023), the baseline all others modify.

    With the standard α grid {0, …, 1} this reproduces the paper's task addition exactly.
    """
    return generalized_task_arithmetic(inputs)


@merge_method(
    name="ties",
    label="TIES",
    color="#d62728",
    reference="https://arxiv.org/abs/2306.01708",
    settings=(
        Setting(
            "k",
            float,
            0.2,
            "fraction of each task vector's largest magnitudes kept (trim): int(k·d) + 1 of d entries, as the official topk_values_mask",
            low=0.0,
            high=1.0,
            grid=(0.1, 0.2, 0.3),
        ),
    ),
    alphas=tuple(round(0.8 + 0.1 * i, 1) for i in range(18)),
)
def ties(inputs: MergeInputs, k: float) -> Tensors:
    """TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., NeurIPS 2023).

    Trim: keep each task's top-k fraction of magnitudes over its *whole* vector, as the paper's
    code does (not per tensor), counted as the official `topk_values_mask` (`global_top_k`).
    Elect: per entry, the sign of the sum of the trimmed values, and where they cancel exactly the
    majority sign of the whole vector (`elect_and_mean`). Merge: mean of the entries that agree
    with it ("dis-mean"). Official code: prateeky2806/ties-merging src/utils/merge_utils.py
    (`topk_values_mask`, `resolve_sign`, `resolve_zero_signs`, `disjoint_merge`), the same
    functions as nik-dim/tall_masks src/utils/ties_utils.py L7-58 and src/utils/utils.py L251-282
    used by the CLIP codes. Interference from redundant small values and sign conflicts is
    removed before averaging. k = 20% by default (the paper's), {10, 20, 30}%
    searched; α from 0.8 to 2.5 in steps of 0.1, the search of the TIES authors' code for a
    disjoint *mean* (the CLIP codes of TALL masks / TSV / LiNeS search 0.1 to 1.5 instead).
    """
    if k <= 0:
        raise TaskvecError("ties: setting k must be > 0")
    return generalized_task_arithmetic(inputs, global_top_k(inputs, ties_trim_rank(k)), combine="ties")


@merge_method(
    name="dare",
    label="DARE",
    color="#9467bd",
    reference="https://arxiv.org/abs/2311.03099",
    settings=(
        Setting("p", float, 0.9, "drop rate: probability of zeroing each entry", low=0.0, high=0.99, grid=(0.1, 0.5, 0.9)),
        Setting(
            "combine",
            str,
            "sum",
            "after dropping: sum (DARE + TA) or ties (TIES's sign election and disjoint mean, as mergekit's dare_ties)",
            choices=("sum", "ties"),
        ),
        Setting("seed", int, 0, "seed of the drop masks (a multi-seed run adds its seed)", low=0, seeded=True),
        Setting(
            "mask_rate",
            float,
            0.8,
            "with combine=ties: fraction of each dropped vector's smallest magnitudes that TIES then trims "
            "(0.8: the official DARE code's ties_merging param_value_mask_rate; 0: no trim, as mergekit's dare_ties)",
            low=0.0,
            high=0.99,
        ),
    ),
    alphas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
)
def dare(inputs: MergeInputs, p: float, combine: Combine, seed: int, mask_rate: float) -> Tensors:
    """DARE, Drop And REscale (Yu et al., ICML 2024): random sparsification, then TA or TIES.

    Each entry of each task vector is dropped with probability p and the rest rescaled by
    1/(1−p), which keeps the vector's expectation; then the tasks are merged by TA or by TIES.

    The drop and rescale are the official `mask_input_with_mask_rate` (yule-BUAA/MergeLM
    model_merging_methods/mask_weights_utils.py: `torch.bernoulli(p)` drops, the rest divided by
    1 − p); its random stream is torch's global generator, here a seeded one per tensor (the
    masks' law is the same, their draws differ). combine="ties" runs the official code's
    `ties_merging` on the dropped vectors (MergeLM model_merging_methods/merging_methods.py):
    `mask_smallest_magnitude_param_values` keeps |x| ≥ the int(d·mask_rate)-th smallest of each
    whole vector (mask_rate 0.8 by default; 0 skips the trim, as mergekit's dare_ties), then
    `get_param_signs` elects the sign of the sum with the whole vector's majority sign where it
    is 0, and `disjoint_merge` averages the values of that sign (`elect_and_mean`; where even the
    majority is 0, MergeLM keeps no value and official TIES the negative ones, as here).

    Masks are drawn per tensor from a generator seeded by (seed, task index, parameter name), so
    a seed gives the same merge whatever order the parameters are processed in. The paper's
    headline rate is p = 0.9 (the default); it searches p in {0.1, …, 0.9} and α in {0.1, 0.3,
    0.5, 0.7, 0.9, 1.0}. The grid here is p ∈ {0.1, 0.5, 0.9}, α as the paper's.
    """
    drop = random_drop(p, seed)
    if combine == "ties" and mask_rate > 0:
        # the int(d·rate)-th smallest is the (d − int(d·rate) + 1)-th largest
        drop = global_top_k(inputs, lambda d: d - max(1, truncated_count(mask_rate, d)) + 1, before=drop)
    return generalized_task_arithmetic(inputs, drop, combine=combine)


@merge_method(
    name="breadcrumbs",
    label="Model Breadcrumbs",
    color="#8c564b",
    reference="https://arxiv.org/abs/2312.06795",
    settings=(
        Setting(
            "keep",
            float,
            0.15,
            "β: fraction of each row's magnitudes kept, the largest after the outliers (official top_k_keep)",
            low=0.0,
            high=1.0,
            grid=(0.1, 0.15, 0.2),
        ),
        Setting(
            "top", float, 0.006, "γ: fraction of each row's largest magnitudes (outliers) masked (official top_k_remove)", low=0.0, high=1.0
        ),
        Setting(
            "ranking",
            str,
            "row",
            "row: rank along the last dimension, each row apart (the official code; a 1×1 or depthwise convolution's rows are too short to keep anything); "
            "tensor: rank the whole tensor (mergekit, the paper's 'per layer')",
            choices=("row", "tensor"),
        ),
    ),
)
def breadcrumbs(inputs: MergeInputs, keep: float, top: float, ranking: Ranking) -> Tensors:
    """Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): masks of small and large values per layer.

    Each task's outliers (the int(n·top) largest magnitudes) are masked, the int(n·keep) next
    largest kept, the negligible rest masked; the masked vectors are summed as TA. As the
    official `TaskVectorMiddleKeep` (rezazzr/breadcrumbs src/task_vectors.py L155-195), n is the
    length of a row along the last dimension and each row is ranked apart (ranking="row"); with
    ranking="tensor" the whole tensor is ranked, as mergekit's breadcrumbs, which keeps 1×1 and
    depthwise convolutions (rows of 1 or 3 entries keep int(0.15·3) = 0 officially). The defaults
    are the official search's starting point, `points_to_evaluate = [{"alpha": 0.2, "beta": 0.15,
    "gamma": 0.006}]` (find_best_hyperparam.py L243), searched over β ∈ [0.05, 0.2] and
    γ ∈ [0.001, 0.01] (L240-241); the grid here is keep ∈ {0.1, 0.15, 0.2}.
    """
    if keep + top > 1:
        raise TaskvecError(f"breadcrumbs: keep + top must be ≤ 1, got {keep} + {top}")
    return generalized_task_arithmetic(inputs, middle_band(keep, top, ranking))
