"""Merging task vectors: a registry of merge methods, each returning a direction d (θ0 + α·d).

    from taskvec.merging import MERGE_METHODS, merge
    d = merge([tau_a, tau_b], "ties", k=0.2)          # or TIES([tau_a, tau_b], k=0.2)
    alphas = MERGE_METHODS.get("ties").alpha_grid(standard_grid)

Registration order (the order reports use): TA, TIES, DARE, Breadcrumbs, TSV-M, Iso-C, Iso-CTS,
Consensus TA, LiNeS.
"""

from .base import MERGE_METHODS, MergeInputs, MergeMethod, check_mergeable, merge, merge_method

# Importing a module registers its methods: the order of these imports is the registry's, the
# order of `taskvec list`, of a config's default `[merge] methods` and of every report. A new
# module of merge methods is imported here, at the place it should take.
# isort: off
from .sparse import task_arithmetic as TASK_ARITHMETIC, ties as TIES, dare as DARE, breadcrumbs as BREADCRUMBS
from .spectral import tsv_m as TSV_M, iso_c as ISO_C, iso_cts as ISO_CTS
from .consensus import consensus as CONSENSUS
from .lines import lines as LINES

# isort: on
from .tensors import depth_index, kth_largest_magnitude, matrix_view  # noqa: E402

__all__ = [
    "BREADCRUMBS",
    "CONSENSUS",
    "DARE",
    "ISO_C",
    "ISO_CTS",
    "LINES",
    "MERGE_METHODS",
    "MergeInputs",
    "MergeMethod",
    "TASK_ARITHMETIC",
    "TIES",
    "TSV_M",
    "check_mergeable",
    "depth_index",
    "kth_largest_magnitude",
    "matrix_view",
    "merge",
    "merge_method",
]
