"""Fine-tuning modes beyond the paper's two: what is trained (parameter subsets, sparse entries,
low-rank adapters), how it is chosen, and what the fine-tune costs. The loop is taskvec.train.

The names below are imported on first use (PEP 562): taskvec.kinds reads the builders'
declared settings (taskvec.finetuning.build) without importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CostMeter": "cost",
    "LowRank": "parts",
    "SparseWeights": "parts",
    "Trainable": "parts",
    "TunedEncoder": "parts",
    "WeightSubset": "parts",
    "PRESETS": "subsets",
    "select_parameters": "subsets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from .cost import CostMeter  # noqa: F401
    from .parts import LowRank, SparseWeights, Trainable, TunedEncoder, WeightSubset  # noqa: F401
    from .subsets import PRESETS, select_parameters  # noqa: F401
