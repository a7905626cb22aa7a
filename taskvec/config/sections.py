"""The tables of a run config that stand alone: data splits, heads, the α grid, negation, the
analyses and `taskvec tune`'s grid. Each field's default is its one definition."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..errors import TaskvecError
from ..kinds import FINETUNE_MODES
from ..models.head_kinds import AUTO, check_head_choice
from ..tuning import TUNE_CRITERIA, TuneCriterion


def alpha_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.05) -> list[float]:
    """The paper's grid {0, 0.05, …, 1.0} by default, rounded so keys compare exactly."""
    if step <= 0 or stop < start:
        raise TaskvecError(f"bad α grid: start={start}, stop={stop}, step={step}")
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count)]


@dataclass(frozen=True)
class DataConfig:
    """Splits and caps. `max_*` = "all" (TOML has no null) keeps every example.

    root: folder holding datasets read from disk (the paper's); default $TASKVEC_DATA.
    cache_dir: folder for caches whose content depends only on their key (zero-shot heads,
    pre-resized images); shared between runs. None: no disk caches.
    """

    seed: int = 0
    val_fraction: float = 0.1
    val_cap: int = 5000
    max_train: int | Literal["all"] | None = 2000
    max_val: int | Literal["all"] | None = 300
    max_test: int | Literal["all"] | None = 500
    root: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise TaskvecError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("max_train", "max_val", "max_test"):
            if getattr(self, name) == "all":
                object.__setattr__(self, name, None)
        for name in ("val_cap", "max_train", "max_val", "max_test"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TaskvecError(f"data.{name} must be positive, got {value}")


@dataclass(frozen=True)
class HeadConfig:
    """kind: how each task's frozen head is built (a registered head kind, `taskvec list`; auto:
    the backbone kind's own, e.g. zero-shot for CLIP, else text descriptions for text encoders
    and class prototypes otherwise). text_encoder: which model embeds the class descriptions of
    zeroshot and text heads when the backbone is randomly initialized (init = "random", and the
    random-init ablation): "pretrained" (the paper re-initializes only the image encoder: heads
    from the pre-trained text tower and logit scale) or "model" (the random model itself)."""

    kind: str = AUTO
    scale: float = 30.0
    text_encoder: Literal["pretrained", "model"] = "pretrained"

    def __post_init__(self) -> None:
        check_head_choice(self.kind)
        if self.scale <= 0:
            raise TaskvecError(f"head.scale must be positive, got {self.scale}")


@dataclass(frozen=True)
class EvalConfig:
    alpha_start: float = 0.0
    alpha_stop: float = 1.0
    alpha_step: float = 0.05
    chunk: int = 256

    def __post_init__(self) -> None:
        if self.alpha_step <= 0 or self.alpha_stop < self.alpha_start:
            raise TaskvecError(f"eval α grid is empty: start={self.alpha_start}, stop={self.alpha_stop}, step={self.alpha_step}")
        if self.chunk <= 0:
            raise TaskvecError(f"eval.chunk must be positive, got {self.chunk}")

    def alphas(self) -> list[float]:
        """The α grid of task addition and negation (the paper's {0, 0.05, …, 1} by default)."""
        return alpha_grid(self.alpha_start, self.alpha_stop, self.alpha_step)


@dataclass(frozen=True)
class NegationConfig:
    control: str | None = None
    threshold: float = 0.95
    targets: list[str] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise TaskvecError(f"negation.threshold must be in [0, 1], got {self.threshold}")


@dataclass(frozen=True)
class AnalysisConfig:
    """The paper's analyses (Fig. 3, 6, Table 3), run after the edits. Off by default to keep the
    default benchmark inside its time budget; `taskvec run --analyses` switches all three on."""

    disentanglement: bool = False
    disentanglement_pairs: int = 1  # task pairs, in config order: (t0, t1), (t2, t3), ...
    disentanglement_min: float = -3.0
    disentanglement_max: float = 3.0
    disentanglement_step: float = 0.5
    disentanglement_examples: int = 200
    ntk: bool = False
    ntk_examples: int = 100  # per task (training task and control)
    ntk_eigenfunctions: int = 20
    random_init: bool = False

    def __post_init__(self) -> None:
        if self.disentanglement_step <= 0 or self.disentanglement_max <= self.disentanglement_min:
            raise TaskvecError("analysis disentanglement grid is empty: check disentanglement_min/max/step")
        for name in ("disentanglement_examples", "ntk_examples", "ntk_eigenfunctions", "disentanglement_pairs"):
            if getattr(self, name) <= 0:
                raise TaskvecError(f"analysis.{name} must be positive, got {getattr(self, name)}")

    def disentanglement_alphas(self) -> list[float]:
        """The α1 and α2 axes of the ξ heatmaps."""
        return alpha_grid(self.disentanglement_min, self.disentanglement_max, self.disentanglement_step)


@dataclass(frozen=True)
class TuneConfig:
    """`taskvec tune`'s grid (taskvec.tuning): per fine-tuning mode of the run the learning rates
    to try (`[tune.lr] <mode> = [...]`; default: the mode's configured lr × 1/3, 1 and 3) and the
    step counts (default: the configured ones). Every grid point is scored by every criterion;
    `criterion` names the one whose choice is printed as config lines."""

    lr: dict[str, list[float]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    criterion: str = "single-task"

    def __post_init__(self) -> None:
        self.chosen_by()
        for mode, rates in self.lr.items():
            FINETUNE_MODES.get(mode)
            if not rates:
                raise TaskvecError(f"tune.lr.{mode} is empty: give at least one learning rate")
            for lr in rates:
                if not math.isfinite(lr) or lr <= 0:
                    raise TaskvecError(f"tune.lr.{mode} must hold positive finite numbers, got {lr!r}")
            if len(set(rates)) != len(rates):
                raise TaskvecError(f"tune.lr.{mode} has duplicates: {rates}")
        for n in self.steps:
            if n <= 0:
                raise TaskvecError(f"tune.steps must hold positive integers, got {n!r}")

    def chosen_by(self) -> TuneCriterion:
        """The criterion whose choice `taskvec tune` prints as config lines."""
        return TUNE_CRITERIA.get(self.criterion)

    def rates(self, mode: str, configured: float) -> list[float]:
        """The learning rates tried for `mode`, ascending."""
        if mode in self.lr:
            return sorted(self.lr[mode])
        return sorted(float(f"{configured * f:.3g}") for f in (1 / 3, 1.0, 3.0))
