"""Merge methods that act on each layer's singular value decomposition: TSV-M, Iso-C, Iso-CTS.

Each parameter that is a matrix (`tensors.matrix_view`: linear weights, and, with the default
setting conv="matrix", convolution kernels reshaped to (out, in·kh·kw)) is merged from the tasks'
matrices; every other parameter (biases, norms, embeddings of fewer than two dimensions, any
parameter named `text_projection`, and convolution kernels with conv="official") is the *mean* of
the tasks' values, as in the official codes (danielm1405/iso-merging src/utils/TSVM_utils.py,
the TSV-M authors' code, and src/utils/iso.py). On 2-D matrices every count is the official one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import TaskvecError
from ..lazy import lazy_import
from ..registry import Setting
from .base import MergeInputs, Tensors, merge_method
from .tensors import ConvConvention, low_rank, matrix_view, orthogonal_factor, svd, truncated_count

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

MatrixMerge = Callable[["torch.Tensor"], "torch.Tensor"]
"""(T, m, n) task matrices -> the merged (m, n) matrix."""

# α in (0, 3] as the official TSV-M and Iso codes search it (they use steps of 0.1; 0.2 here).
SPECTRAL_ALPHAS = tuple(round(0.2 * i, 1) for i in range(1, 16))

CONV_SETTING = Setting(
    "conv",
    str,
    "matrix",
    "convolution kernels: matrix = merged as (out, in·k·k) matrices (taskvec's extension); "
    "official = averaged over the tasks, as the official code averages every tensor that is not 2-D",
    choices=("matrix", "official"),
)

# Never a matrix in the official codes, whatever its shape (TSVM_utils.py L38, iso.py L14, L39).
OFFICIAL_NON_MATRICES = ("text_projection",)


def merge_layerwise(inputs: MergeInputs, merge_matrices: MatrixMerge, conv: ConvConvention) -> Tensors:
    """Apply `merge_matrices` to every matrix parameter; average the others (as the official codes,
    TSVM_utils.py L61-65, iso.py L40-48)."""
    merged = {}
    for name in inputs.names:
        deltas = inputs.stacked(name)
        if matrix_view(deltas[0], conv) is None or any(part in name for part in OFFICIAL_NON_MATRICES):
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
            "singular directions kept per task: int(rank·share/T) (1: the official sv_reduction = 1/T; 0 directions leave the layer 0)",
            low=0.0,
        ),
        CONV_SETTING,
    ),
    alphas=SPECTRAL_ALPHAS,
)
def tsv_m(inputs: MergeInputs, share: float, conv: ConvConvention) -> Tensors:
    """Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025).

    Per layer, each task matrix is low-rank: keep its top k = int(r·share/T) singular directions
    (r = min(m, n); share = 1 is the official `sv_reduction = 1 / len(DATASETS)`, `reduced_index_s
    = int(s.shape[0] * sv_reduction)`, iso-merging src/utils/TSVM_utils.py L24, L47), concatenate
    all tasks' U, Σ, V, and remove the interference between tasks by replacing the concatenated U
    and V by their nearest orthonormal matrices (SVD-based Procrustes, L68-79), then recombine
    U_⊥ Σ V_⊥ᵀ. Where k = 0 (rank below T, e.g. a 2×384 matrix with 3 tasks) the official code
    concatenates nothing and the layer's merged value is 0; so it is here. Non-matrix parameters:
    mean over tasks (L61-65). Convolution kernels: see the `conv` setting.
    """
    if share <= 0:
        raise TaskvecError("tsv_m: setting share must be > 0")

    def merge_matrices(matrices: torch.Tensor) -> torch.Tensor:
        rank = min(matrices.shape[1:])
        k = truncated_count(share / len(matrices), rank)
        if k == 0:
            return torch.zeros_like(matrices[0])
        return decorrelated([top_directions(m, k) for m in matrices])

    return merge_layerwise(inputs, merge_matrices, conv)


@merge_method(
    name="iso_c",
    label="Iso-C",
    color="#bcbd22",
    reference="https://arxiv.org/abs/2502.04959",
    settings=(CONV_SETTING,),
    alphas=SPECTRAL_ALPHAS,
)
def iso_c(inputs: MergeInputs, conv: ConvConvention) -> Tensors:
    """Isotropic merging in the common subspace (Marczak et al., ICML 2025).

    Per layer, sum the task matrices (TA) and replace all of the sum's singular values by their
    mean (iso-merging src/utils/iso.py L5-27): a flat spectrum stops a few dominant directions
    from drowning the tasks that live in the others. Non-matrix parameters: mean over tasks, as
    the official code. Convolution kernels: see the `conv` setting.
    """

    def merge_matrices(matrices: torch.Tensor) -> torch.Tensor:
        u, s, vh = svd(matrices.sum(0))
        return low_rank(u, torch.full_like(s, float(s.mean())), vh)

    return merge_layerwise(inputs, merge_matrices, conv)


def iso_cts_sizes(rank: int, tasks: int, common: float) -> tuple[int, int]:
    """(k_common, directions per task) exactly as the official code counts them (iso.py L54-65):
    k_common = int(r·common), then enlarged so that the task-specific part round((r − k)/T)·T
    divides equally; per task int((r − k_common)/T). Where that rounding would ask for more than
    the rank (only for a small `common` and r < T, never at the default 0.8), the official code
    slices with k_common < 0 and silently drops tasks (torch broadcasts into empty slots); the
    task part is capped at r // T per task instead."""
    initial = truncated_count(common, rank)
    per_task = min(round((rank - initial) / tasks), rank // tasks)
    shared = rank - per_task * tasks
    return shared, int((rank - shared) / tasks)


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
            "fraction of the rank given to the common subspace (top directions of the TA sum), int(r·common) as the official code; the rest is shared equally by the tasks (capped at rank // T each where the official count exceeds the rank)",
            low=0.0,
            high=1.0,
        ),
        CONV_SETTING,
    ),
    alphas=SPECTRAL_ALPHAS,
)
def iso_cts(inputs: MergeInputs, common: float, conv: ConvConvention) -> Tensors:
    """Isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025).

    Per layer (iso-merging src/utils/iso.py L30-104): the common subspace is the top directions
    of the TA sum; each task then contributes its top directions after its matrix is projected
    off the common subspace (L70). All bases are orthogonalized together (P Qᵀ, L88-91) and given
    one flat spectrum, the mean of the kept singular values (L94). The counts are the official
    ones (`iso_cts_sizes`): a layer whose rank is below T gets only the common subspace, i.e.
    Iso-C. Non-matrix parameters: mean over tasks. Convolution kernels: see the `conv` setting.
    """

    def merge_matrices(matrices: torch.Tensor) -> torch.Tensor:
        shared_count, per_task = iso_cts_sizes(min(matrices.shape[1:]), len(matrices), common)
        shared = top_directions(matrices.sum(0), shared_count)
        basis = shared[0]
        parts = [shared]
        if per_task:
            for m in matrices:
                parts.append(top_directions(m - basis @ (basis.T @ m), per_task))
        return decorrelated(parts, flat=True)

    return merge_layerwise(inputs, merge_matrices, conv)
