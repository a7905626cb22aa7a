"""LiNeS: scale the merged vector by a coefficient that grows linearly with layer depth."""

from __future__ import annotations

from collections.abc import Iterable

from ..registry import Setting
from .base import MergeInputs, Tensors, merge_method
from .sparse import generalized_task_arithmetic
from .tensors import depth_index


def layer_scales(names: Iterable[str], shallow: float, beta: float) -> dict[str, float]:
    """λ per parameter: shallow + β ℓ/(L−1) for a parameter of block ℓ (0-based) out of L blocks.

    Parameters outside the residual blocks (stem, embeddings, final norm, projection, head) get
    the shallow coefficient (our reading of the paper; the official code was not available to
    check it). A single block counts as the first one.
    """
    depths = {name: depth_index(name) for name in names}
    blocks = 1 + max((d for d in depths.values() if d is not None), default=0)
    return {name: shallow + (beta * d / (blocks - 1) if d is not None and blocks > 1 else 0.0) for name, d in depths.items()}


@merge_method(
    name="lines",
    label="LiNeS + TA",
    color="#843c39",
    reference="https://arxiv.org/abs/2410.17146",
    settings=(
        Setting(
            "beta",
            float,
            0.5,
            "increase of the coefficient from the first to the last block",
            low=0.0,
            grid=tuple(round(0.1 * i, 1) for i in range(1, 11)),
        ),
        Setting(
            "alpha_scale",
            float,
            1.0,
            "coefficient of the shallowest layers, in units of 1/T (1: the paper's multi-task choice, α_lines = 1/T for TA)",
            low=0.0,
        ),
    ),
    alphas=(1.0,),
)
def lines(inputs: MergeInputs, beta: float, alpha_scale: float) -> Tensors:
    """LiNeS, Layer-increasing Network Scaling (Wang et al., ICLR 2025), on task arithmetic.

    Shallow layers hold general features that merging should disturb least; deep layers hold the
    task-specific ones. The TA sum τ_MTL is scaled per block ℓ = 0…L−1 by λ(ℓ) = α_lines + β ℓ/(L−1).
    In the paper's multi-task variant α_lines = (‖Σ_t τ_t‖₁ / ‖τ_MTL‖₁) / T, 1/T for TA, and β is
    searched over {0.1, …, 1.0} with the final coefficient fixed to 1 (α grid (1.0,)): ten
    evaluations, fewer than TA's 21. Block depths come from parameter names (`tensors.depth_index`).
    The official code (wang-kx/LiNeS) is not in the reference store this was checked against; the
    paper's formula (arXiv 2410.17146, Sec. 3, multi-task merging) is followed.
    """
    scales = layer_scales(inputs.names, alpha_scale / len(inputs), beta)
    return {name: total.mul_(scales[name]) for name, total in generalized_task_arithmetic(inputs).items()}
