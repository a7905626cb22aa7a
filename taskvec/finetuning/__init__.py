"""Fine-tuning modes beyond the paper's two: what is trained (parameter subsets, sparse entries,
low-rank adapters), how it is chosen, and what the fine-tune costs. The loop is taskvec.train."""
from .cost import CostMeter
from .parts import LowRank, SparseWeights, Trainable, TunedEncoder, WeightSubset
from .subsets import PRESETS, select_parameters

__all__ = ["CostMeter", "LowRank", "SparseWeights", "Trainable", "TunedEncoder", "WeightSubset", "PRESETS", "select_parameters"]
