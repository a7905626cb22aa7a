"""Merge methods that act on each layer's singular value decomposition: TSV-M, Iso-C, Iso-CTS.

Each parameter that is a matrix (`tensors.matrix_view`: linear weights, and convolution kernels
reshaped to (out, in·kh·kw)) is merged from the tasks' matrices; every other parameter (biases,
norms, embeddings of fewer than two dimensions) is the *mean* of the tasks' values, as in the
official TSV-M and Iso codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import TaskvecError
from ..lazy import lazy_import
from ..registry import Setting
from .base import MergeInputs, Tensors, merge_method
from .tensors import fraction_count, low_rank, matrix_view, orthogonal_factor, svd

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

MatrixMerge = Callable[["torch.Tensor"], "torch.Tensor"]
"""(T, m, n) task matrices -> the merged (m, n) matrix."""

# α in (0, 3] as the official TSV-M and Iso codes search it (they use steps of 0.1; 0.2 here).
SPECTRAL_ALPHAS = tuple(round(0.2 * i, 1) for i in range(1, 16))


def merge_layerwise(inputs: MergeInputs, merge_matrices: MatrixMerge) -> Tensors:
    """Apply `merge_matrices` to every matrix parameter; average the others."""
    merged = {}
    for name in inputs.names:
        deltas = inputs.stacked(name)
        if matrix_view(deltas[0]) is None:
            merged[name] = deltas.mean(0)
            continue
        matrices = torch.stack([_matrix(d) for d in deltas])
        merged[name] = merge_matrices(matrices).reshape(deltas.shape[1:])
    return merged


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    """`matrix_view` of one task's tensor, which has the shape of the first, found to be a matrix."""
    matrix = matrix_view(tensor)
    assert matrix is not None, "the tasks' tensors of a parameter share its shape"
    return matrix


def top_directions(matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k leading singular triplets (U_k, S_k, Vh_k)."""
    u, s, vh = svd(matrix)
    return u[:, :k], s[:k], vh[:k]


def decorrelated(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], flat: bool = False) -> torch.Tensor:
    """Concatenate several sets of singular triplets, orthogonalize the bases (U_⊥ = P Qᵀ of the
    concatenated U, likewise for V) and recombine; `flat` replaces the singular values by their mean."""
    u = torch.cat([p[0] for p in parts], dim=1)
    s = torch.cat([p[1] for p in parts])
    vh = torch.cat([p[2] for p in parts], dim=0)
    if flat:
        s = torch.full_like(s, float(s.mean()))
    return low_rank(orthogonal_factor(u), s, orthogonal_factor(vh))


@merge_method(
    name="tsv_m",
    label="TSV-M",
    color="#e377c2",
    reference="https://arxiv.org/abs/2412.00081",
    settings=(
        Setting(
            "share",
            float,
            1.0,
            "singular directions kept per task, as a fraction of the rank times T (1: rank/T each, the paper's choice)",
            low=0.0,
        ),
    ),
    alphas=SPECTRAL_ALPHAS,
)
def tsv_m(inputs: MergeInputs, share: float) -> Tensors:
    """Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025).

    Per layer, each task matrix is low-rank: keep its top round(share·r/T) singular directions
    (at least one; r = min(m, n)), concatenate all tasks' U, Σ, V, and remove the interference
    between tasks by replacing the concatenated U and V by their nearest orthonormal matrices
    (SVD-based Procrustes), then recombine U_⊥ Σ V_⊥ᵀ. Non-matrix parameters: mean over tasks.
    """
    if share <= 0:
        raise TaskvecError("tsv_m: setting share must be > 0")

    def merge_matrices(matrices: torch.Tensor) -> torch.Tensor:
        rank = min(matrices.shape[1:])
        k = max(1, fraction_count(share / len(matrices), rank))
        return decorrelated([top_directions(m, k) for m in matrices])

    return merge_layerwise(inputs, merge_matrices)


@merge_method(name="iso_c", label="Iso-C", color="#bcbd22", reference="https://arxiv.org/abs/2502.04959", alphas=SPECTRAL_ALPHAS)
def iso_c(inputs: MergeInputs) -> Tensors:
    """Isotropic merging in the common subspace (Marczak et al., ICML 2025).

    Per layer, sum the task matrices (TA) and replace all of the sum's singular values by their
    mean: a flat spectrum stops a few dominant directions from drowning the tasks that live in the
    others. Non-matrix parameters: mean over tasks, as the official code.
    """

    def merge_matrices(matrices: torch.Tensor) -> torch.Tensor:
        u, s, vh = svd(matrices.sum(0))
        return low_rank(u, torch.full_like(s, float(s.mean())), vh)

    return merge_layerwise(inputs, merge_matrices)


@merge_method(
    name="iso_cts",
    label="Iso-CTS",
    color="#17becf",
    reference="https://arxiv.org/abs/2502.04959",
    settings=(
        Setting(
            "common",
            float,
            0.8,
            "fraction of the rank given to the common subspace (top directions of the TA sum); the rest is shared equally by the tasks",
            low=0.0,
            high=1.0,
        ),
    ),
    alphas=SPECTRAL_ALPHAS,
)
def iso_cts(inputs: MergeInputs, common: float) -> Tensors:
    """Isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025).

    Per layer: the common subspace is the top directions of the TA sum (a `common` fraction of the
    rank r); each task then contributes its top (r − k_common)/T directions after its matrix is
    projected off the common subspace. All bases are orthogonalized together (P Qᵀ) and given
    one flat spectrum, the mean of the kept singular values. As the official code, k_common is
    rounded so that the task-specific part divides equally among the T tasks (a layer whose rank
    is below T gets only the common subspace, i.e. Iso-C). Non-matrix parameters: mean over tasks.
    """

    def merge_matrices(matrices: torch.Tensor) -> torch.Tensor:
        tasks, rank = len(matrices), min(matrices.shape[1:])
        per_task = min(round((rank - fraction_count(common, rank)) / tasks), rank // tasks)
        shared = top_directions(matrices.sum(0), rank - per_task * tasks)
        basis = shared[0]
        parts = [shared]
        if per_task:
            for m in matrices:
                parts.append(top_directions(m - basis @ (basis.T @ m), per_task))
        return decorrelated(parts, flat=True)

    return merge_layerwise(inputs, merge_matrices)
