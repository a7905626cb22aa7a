"""Merging task vectors: a registry of merge methods, each returning a direction d (θ0 + α·d).

    from taskvec.merging import MERGE_METHODS, merge
    d = merge([tau_a, tau_b], "ties", k=0.2)          # or TIES([tau_a, tau_b], k=0.2)
    alphas = MERGE_METHODS.get("ties").alpha_grid(standard_grid)

Registration order (the order reports use): TA, TIES, DARE, Breadcrumbs, TSV-M, Iso-C, Iso-CTS,
Consensus TA, LiNeS.
"""
from .base import MERGE_METHODS, MergeInputs, MergeMethod, check_mergeable, merge, merge_method
from .sparse import breadcrumbs as BREADCRUMBS, dare as DARE, task_arithmetic as TASK_ARITHMETIC, ties as TIES
from .spectral import iso_c as ISO_C, iso_cts as ISO_CTS, tsv_m as TSV_M
from .consensus import consensus as CONSENSUS
from .lines import lines as LINES
from .tensors import depth_index, kth_largest_magnitude, matrix_view

__all__ = [
    "BREADCRUMBS", "CONSENSUS", "DARE", "ISO_C", "ISO_CTS", "LINES", "MERGE_METHODS", "MergeInputs", "MergeMethod",
    "TASK_ARITHMETIC", "TIES", "TSV_M", "check_mergeable", "depth_index", "kth_largest_magnitude", "matrix_view",
    "merge", "merge_method",
]
