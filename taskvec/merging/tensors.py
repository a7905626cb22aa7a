"""Helpers shared by the merge methods: counts, an exact streaming top-k threshold, the matrix view
of a parameter, SVD pieces, and the depth of a parameter for layer-wise scaling."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Literal

from ..errors import TaskvecError
from ..lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")


def truncated_count(fraction: float, total: int) -> int:
    """How many of `total` entries a fraction means, as the official merge codes count them:
    `int(total * fraction)`, truncated (TIES's `int(d * K)`, TSV-M's `int(r * sv_reduction)`,
    Iso-CTS's `int(min(shape) * common_space_fraction)`, Breadcrumbs' `int(n * top_k)`)."""
    return min(total, max(0, int(total * fraction)))


# ----- exact k-th largest magnitude over many tensors, streaming ------------------------------------


def _magnitude_bits(tensor: torch.Tensor) -> torch.Tensor:
    """|x| as float32 bit patterns (int32): for non-negative floats, integer order = value order."""
    return tensor.detach().abs().to(torch.float32).contiguous().view(torch.int32).flatten()


def magnitudes(tensor: torch.Tensor) -> torch.Tensor:
    """|x| in float32, the values `kth_largest_magnitude` ranks (compare thresholds against these)."""
    return tensor.detach().abs().to(torch.float32)


def kth_largest_magnitude(tensors: Callable[[], Iterable[torch.Tensor]], k: int) -> float:
    """The exact k-th largest |x| over all entries of several tensors, in two streaming passes.

    A radix select on the float32 bit patterns of |x|, 16 bits per pass: the first pass histograms
    the high half of every entry's bits, the second the low half of the entries whose high half is
    the one found. Memory is one tensor at a time plus 65,536 counters; `tensors()` is called once
    per pass. (float16/bfloat16 values are exact in float32; float64 ones are ranked after rounding
    to float32.)
    """
    total = sum(t.numel() for t in tensors())
    if not 1 <= k <= total:
        raise TaskvecError(f"cannot take the {k}-th largest of {total} values")
    prefix, remaining = 0, k
    for shift in (16, 0):
        counts = torch.zeros(1 << 16, dtype=torch.int64)
        for tensor in tensors():
            bits = _magnitude_bits(tensor)
            if shift == 0:
                bits = bits[(bits >> 16) == (prefix >> 16)]
            counts += torch.bincount(((bits >> shift) & 0xFFFF).long(), minlength=1 << 16).cpu()
        at_least = counts.flip(0).cumsum(0)  # at_least[i]: entries whose digit is ≥ 65535 − i
        i = int(torch.searchsorted(at_least, torch.tensor(remaining)))
        digit = 0xFFFF - i
        remaining -= int(at_least[i] - counts[digit])  # those strictly above this digit
        prefix |= digit << shift
    return float(torch.tensor(prefix, dtype=torch.int32).view(torch.float32))


# ----- matrices ---------------------------------------------------------------------------------------


ConvConvention = Literal["matrix", "official"]
"""How the SVD merges see a convolution kernel (a tensor of more than two dimensions)."""


def matrix_view(tensor: torch.Tensor, conv: ConvConvention = "matrix") -> torch.Tensor | None:
    """The parameter as a matrix for SVD-based methods, or None if it is not one.

    A linear weight (out, in) is itself. A convolution kernel (out, in, kh, kw) is, with
    conv="matrix", reshaped to (out, in·kh·kw), the matrix its im2col product uses, so that the
    SVD methods act on EfficientNet's convolutions too; with conv="official" it is not a matrix,
    as in the official TSV-M and Iso codes (written for CLIP ViTs: `len(shape) == 2` is their
    test, iso-merging src/utils/TSVM_utils.py L36-39, src/utils/iso.py L14, L39), which average
    every other tensor. Tensors of fewer than two dimensions (biases, norms, class embedding)
    are never matrices.
    """
    if tensor.ndim < 2 or (tensor.ndim > 2 and conv == "official"):
        return None
    return tensor.reshape(tensor.shape[0], -1)


def svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD U, S, Vh of a matrix, in float32 or wider."""
    dtype = torch.promote_types(matrix.dtype, torch.float32)
    return torch.linalg.svd(matrix.to(dtype), full_matrices=False)


def orthogonal_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (or rows, if wide): P Qᵀ from the SVD P Σ Qᵀ.

    This is the Procrustes / polar-factor step TSV-M and Iso-CTS use to decorrelate the
    concatenated singular vectors of several tasks; an already orthonormal matrix is unchanged.
    """
    p, _, qh = svd(matrix)
    return p @ qh


def low_rank(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """U diag(S) Vh."""
    return (u * s) @ vh


# ----- depth, for layer-wise scaling ------------------------------------------------------------------

DEPTH_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"(?:^|\.)_blocks\.(\d+)\.",  # EfficientNet (lukemelas naming)
        r"(?:^|\.)encoder\.layer\.(\d+)\.",  # BERT / MiniLM (Hugging Face)
        r"(?:^|\.)transformer\.resblocks\.(\d+)\.",  # open_clip ViT
        r"(?:^|\.)layers\.(\d+)\.",  # generic
        r"(?:^|\.)blocks\.(\d+)\.",  # generic (timm ViT)
    )
)


def depth_index(name: str) -> int | None:
    """The 0-based index of the residual block a parameter belongs to, or None outside blocks
    (stem, embeddings, final norm, projection, head). The first pattern that matches wins."""
    for pattern in DEPTH_PATTERNS:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None
