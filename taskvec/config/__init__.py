"""Validated run settings, torch-free: a config is a TOML file mapped onto these dataclasses;
an unknown key or a value of the wrong type or range is a one-line TaskvecError naming it.

One module per table: `sections` (data, head, eval, negation, analysis, tune), `train`
(`[train]`: the loop's settings and each mode's), `merge` (`[merge]`), `run` (the whole
config, reading TOML, and the CLI's variants). `import taskvec.config` imports no torch.
"""

from .merge import ALPHAS, MergeConfig
from .run import CHANGEABLE_SETTINGS, RunConfig, load_config, quick, read_config, seed_config, with_analyses, with_seeds
from .sections import AnalysisConfig, DataConfig, EvalConfig, HeadConfig, NegationConfig, TuneConfig, alpha_grid
from .train import LOOP_FIELDS, TrainConfig, TrainModes, steps_for_epochs

__all__ = [
    "ALPHAS",
    "CHANGEABLE_SETTINGS",
    "LOOP_FIELDS",
    "AnalysisConfig",
    "DataConfig",
    "EvalConfig",
    "HeadConfig",
    "MergeConfig",
    "NegationConfig",
    "RunConfig",
    "TrainConfig",
    "TrainModes",
    "TuneConfig",
    "alpha_grid",
    "load_config",
    "quick",
    "read_config",
    "seed_config",
    "steps_for_epochs",
    "with_analyses",
    "with_seeds",
]
