"""Task arithmetic and its sparsified variants as settings of one procedure (as mergekit's
generalized task arithmetic): sparsify each task's vector, then combine the tasks either by a sum
or, TIES-style, by electing a sign per entry and taking the mean of the entries that agree.

| method      | sparsify                                      | combine             |
|-------------|-----------------------------------------------|---------------------|
| TA          | none                                          | sum                 |
| TIES        | keep the top-k magnitudes of the whole vector | elect + mean        |
| DARE        | random drop with rate p, rescale by 1/(1−p)   | sum or elect + mean |
| Breadcrumbs | per tensor, mask the smallest and the largest | sum                 |
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from ..errors import TaskvecError
from ..lazy import lazy_import
from ..registry import Setting
from .base import MergeInputs, Tensors, merge_method
from .tensors import fraction_count, kth_largest_magnitude, magnitudes

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

Sparsifier = Callable[[int, str, "torch.Tensor"], "torch.Tensor"]
"""(task index, parameter name, that task's tensor) -> the sparsified tensor."""

Combine = Literal["sum", "ties"]


def elect_and_mean(deltas: torch.Tensor) -> torch.Tensor:
    """TIES's sign election and disjoint mean over the task axis 0.

    The elected sign of an entry is the sign of the sum of the tasks' values (a sum of exactly 0
    elects +, as mergekit; the official code falls back to the majority sign of the whole vector,
    which only differs on exact cancellations). The result is the mean of the non-zero values of
    that sign, or 0 where none agrees.
    """
    elected = torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(deltas.dtype)
    agree = torch.sign(deltas) == elected
    total = (deltas * agree).sum(0)
    return total / agree.sum(0).clamp(min=1)


def generalized_task_arithmetic(inputs: MergeInputs, sparsify: Sparsifier | None = None, combine: Combine = "sum") -> Tensors:
    """Parameter by parameter: sparsify each task's tensor, then sum or elect + disjoint mean."""
    merged = {}
    for name in inputs.names:
        deltas = inputs.stacked(name)
        if sparsify is not None:
            deltas = torch.stack([sparsify(t, name, delta) for t, delta in enumerate(deltas)])
        merged[name] = elect_and_mean(deltas) if combine == "ties" else deltas.sum(0)
    return merged


# ----- sparsifiers ----------------------------------------------------------------------------------


def global_top_k(inputs: MergeInputs, k: float) -> Sparsifier:
    """Keep, in each task's whole vector, the entries whose magnitude is among its top fraction k
    (round(k·d) of d entries; ties at the threshold are kept). Thresholds come from an exact
    streaming pre-pass per task."""
    thresholds = []
    for t in range(len(inputs)):
        total = sum(x.numel() for x in inputs.task(t)())
        thresholds.append(kth_largest_magnitude(inputs.task(t), max(1, fraction_count(k, total))))
    return lambda t, name, delta: delta * (magnitudes(delta) >= thresholds[t])


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


def middle_band(bottom: float, top: float) -> Sparsifier:
    """Breadcrumbs: in each tensor, mask the `bottom` fraction of smallest magnitudes and the `top`
    fraction of largest ones, ranking over the whole tensor (stable order for ties)."""

    def sparsify(task: int, name: str, delta: torch.Tensor) -> torch.Tensor:
        flat = magnitudes(delta).flatten()
        n = flat.numel()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[fraction_count(bottom, n) : n - fraction_count(top, n)]] = True
        return delta * keep.view(delta.shape)

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
        Setting("k", float, 0.2, "fraction of each task vector's largest magnitudes kept (trim)", low=0.0, high=1.0, grid=(0.1, 0.2, 0.3)),
    ),
    alphas=tuple(round(0.8 + 0.1 * i, 1) for i in range(18)),
)
def ties(inputs: MergeInputs, k: float) -> Tensors:
    """TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., NeurIPS 2023).

    Trim: keep each task's top-k fraction of magnitudes over its *whole* vector, as the paper's
    code does (not per tensor). Elect: per entry, the sign of the sum of the trimmed values. Merge:
    mean of the entries that agree with it. Interference from redundant small values and sign
    conflicts is removed before averaging. k = 20% by default (the paper's), {10, 20, 30}%
    searched; α from 0.8 to 2.5 in steps of 0.1, the search of the TIES authors' code for a
    disjoint *mean* (the CLIP codes of TALL masks / TSV / LiNeS search 0.1 to 1.5 instead).
    """
    if k <= 0:
        raise TaskvecError("ties: setting k must be > 0")
    return generalized_task_arithmetic(inputs, global_top_k(inputs, k), combine="ties")


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
            "after dropping: sum (DARE + TA) or ties (sign election and disjoint mean, as mergekit's dare_ties)",
            choices=("sum", "ties"),
        ),
        Setting("seed", int, 0, "seed of the drop masks (a multi-seed run adds its seed)", low=0, seeded=True),
    ),
    alphas=(0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
)
def dare(inputs: MergeInputs, p: float, combine: Combine, seed: int) -> Tensors:
    """DARE, Drop And REscale (Yu et al., ICML 2024): random sparsification, then TA or TIES.

    Each entry of each task vector is dropped with probability p and the rest rescaled by
    1/(1−p), which keeps the vector's expectation; then the tasks are merged by TA or TIES-style
    (no extra magnitude trim: the drop is the sparsification).

    Masks are drawn per tensor from a generator seeded by (seed, task index, parameter name), so
    a seed gives the same merge whatever order the parameters are processed in. The paper's
    headline rate is p = 0.9 (the default); it searches p in {0.1, …, 0.9} and α in {0.1, 0.3,
    0.5, 0.7, 0.9, 1.0}. The grid here is p ∈ {0.1, 0.5, 0.9}, α as the paper's.
    """
    return generalized_task_arithmetic(inputs, random_drop(p, seed), combine=combine)


@merge_method(
    name="breadcrumbs",
    label="Model Breadcrumbs",
    color="#8c564b",
    reference="https://arxiv.org/abs/2312.06795",
    settings=(
        Setting("bottom", float, 0.85, "fraction of each tensor's smallest magnitudes masked", low=0.0, high=1.0, grid=(0.8, 0.85, 0.9)),
        Setting("top", float, 0.01, "fraction of each tensor's largest magnitudes (outliers) masked", low=0.0, high=1.0),
    ),
)
def breadcrumbs(inputs: MergeInputs, bottom: float, top: float) -> Tensors:
    """Model Breadcrumbs (Davari & Belilovsky, ECCV 2024): per-layer masks of small and large values.

    Per layer, each task's negligible perturbations (smallest magnitudes) and outliers (largest)
    are masked; the masked vectors are summed as TA.

    Magnitudes are ranked over the whole tensor. The official code ranks along the last dimension,
    which for a 1×1 convolution (out, in, 1, 1) is a single entry, so nothing (or everything) is
    kept; ranking the whole tensor is the paper's "per layer" and works on every backbone. Its
    search (keep ≈ 15% after removing the top ≈ 0.6%) is matched by bottom 0.85, top 0.01 here.
    """
    if bottom + top > 1:
        raise TaskvecError(f"breadcrumbs: bottom + top must be ≤ 1, got {bottom} + {top}")
    return generalized_task_arithmetic(inputs, middle_band(bottom, top))
