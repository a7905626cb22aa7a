"""Fine-tuning settings: the loop's (`TrainConfig`) and, per mode of a run, its table.

A learning rate has one default: the mode's own (`FinetuneMode.lr`, `taskvec list`), whether
the mode comes from a config without a `[train]` table, from a `[train.<mode>]` table that
leaves `lr` out, from `taskvec finetune` or from the Python API (`TrainConfig.for_mode`). A
benchmark that wants other rates says so in its config (the default benchmark's are in
taskvec/config/default.toml).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import TaskvecError
from ..kinds import FINETUNE_MODES, FinetuneMode
from ..typed import check_value, from_data, to_data


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning loop's settings; `settings` are the mode's own (FinetuneMode.settings).
    `lr` has no default here: it is the mode's (`for_mode`)."""

    steps: int = 150
    batch_size: int = 32
    lr: float = field(kw_only=True)
    weight_decay: float = 0.1
    warmup_steps: int = 15
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    grad_accumulation: int = 1  # equal micro-batches per (process's share of a) step
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: CUDA autocast for forward and backward
    settings: dict[str, Any] = field(default_factory=dict)  # the mode's own (FinetuneMode.settings)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise TaskvecError(f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "grad_accumulation"):
            if getattr(self, name) <= 0:
                raise TaskvecError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise TaskvecError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise TaskvecError(f"train.warmup_steps must be in [0, steps], got {self.warmup_steps}")

    @classmethod
    def for_mode(cls, mode: str | FinetuneMode, **given: Any) -> TrainConfig:
        """`mode`'s loop: `given` loop fields and mode settings side by side, the rest (the
        learning rate included) at their defaults; unknown names are a TaskvecError."""
        mode = FINETUNE_MODES.get(mode)
        return from_data(cls, _split_mode_table(mode, given, f"train.{mode.name}"), f"train.{mode.name}")


LOOP_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"settings"}


def _split_mode_table(mode: FinetuneMode, table: dict[str, Any], where: str) -> dict[str, Any]:
    """A `[train.<mode>]` table as TrainConfig data: the loop's fields beside the mode's settings
    (resolved to their defaults), the mode's learning rate unless the table gives one."""
    own = {s.name for s in mode.settings}
    clash = sorted(own & LOOP_FIELDS)
    if clash:  # a mode's setting may not hide a loop field of the same name
        raise TaskvecError(f"fine-tuning mode {mode.name!r} declares setting {clash[0]!r}, a name the training loop uses")
    unknown = sorted(set(table) - own - LOOP_FIELDS)
    if unknown:
        raise TaskvecError(f"unknown key '{where}.{unknown[0]}'; allowed: {', '.join(sorted(LOOP_FIELDS | own))}")
    settings = mode.resolve({k: v for k, v in table.items() if k in own})
    return {"lr": mode.lr, **{k: v for k, v in table.items() if k in LOOP_FIELDS}, "settings": settings}


def steps_for_epochs(epochs: float, n_train: int, batch_size: int) -> int:
    """Optimizer steps of `epochs` passes over n_train examples in batches of batch_size (the
    paper's loop: epochs × number of batches, the last batch of an epoch possibly short)."""
    if n_train <= 0:
        raise TaskvecError("cannot count epochs of an empty training set")
    return max(1, int(math.ceil(epochs * math.ceil(n_train / batch_size))))


def paper_modes() -> dict[str, TrainConfig]:
    """The modes a run trains when its config names none: the paper's, at their defaults."""
    return {m.name: TrainConfig.for_mode(m) for m in FINETUNE_MODES if m.paper}


@dataclass(frozen=True)
class TrainModes:
    """The fine-tuning modes a run trains, each with its settings, and optional per-task lengths
    shared by all modes.

    TOML: `[train] modes = [...]` (registered modes, `taskvec list`; default: the paper's two),
    and per mode an optional `[train.<mode>]` table overriding that mode's defaults: the loop's
    settings (TrainConfig: steps, batch_size, lr — default the mode's own — ...) and the mode's
    declared settings (e.g. `params = "attention"` for subset, `rank = 8` for lora).
    epochs: {task: epochs}; a task listed runs epochs × ceil(n_train / batch_size) steps (the
    paper's protocol: Cars 35, DTD 76, ...). steps: {task: steps}, which wins over epochs.
    Tasks in neither table run the mode's `steps`.
    """

    modes: dict[str, TrainConfig] = field(default_factory=paper_modes)
    epochs: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.modes:
            raise TaskvecError("train.modes is empty: name at least one fine-tuning mode")
        for name, train in self.modes.items():
            FINETUNE_MODES.get(name).resolve(train.settings)
        for table in ("epochs", "steps"):
            for task, value in getattr(self, table).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise TaskvecError(f"train.{table}.{task} must be a positive number, got {value!r}")
                if table == "steps" and not isinstance(value, int):
                    raise TaskvecError(f"train.steps.{task} must be an integer, got {value!r}")

    def __getitem__(self, mode: str | FinetuneMode) -> TrainConfig:
        mode = FINETUNE_MODES.get(mode)
        if mode.name not in self.modes:
            raise TaskvecError(f"mode {mode.name!r} is not among this run's train.modes: {', '.join(self.modes)}")
        return self.modes[mode.name]

    def replace_each(self, change: Callable[[TrainConfig], TrainConfig]) -> TrainModes:
        """The same tables with `change` applied to every mode's TrainConfig."""
        return dataclasses.replace(self, modes={name: change(t) for name, t in self.modes.items()})

    @classmethod
    def from_table(cls, data: Any, where: str) -> TrainModes:
        if not isinstance(data, dict):
            raise TaskvecError(f"{where}: expected a table, got {data!r}")
        allowed = ["modes", "epochs", "steps"] + FINETUNE_MODES.names()
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise TaskvecError(f"unknown key '{where}.{unknown[0]}'; allowed: {', '.join(allowed)}")
        names = check_value(data["modes"], list[str], f"{where}.modes") if "modes" in data else list(paper_modes())
        if not names:
            raise TaskvecError(f"{where}.modes is empty: name at least one fine-tuning mode")
        if len(set(names)) != len(names):
            raise TaskvecError(f"{where}.modes has duplicates: {names}")
        for name in data:
            if name in FINETUNE_MODES and name not in names:
                raise TaskvecError(f"[{where}.{name}] configures a mode that {where}.modes leaves out ({', '.join(names)})")
        modes = {}
        for name in names:
            mode = FINETUNE_MODES.get(name)
            table = data.get(name, {})
            if not isinstance(table, dict):
                raise TaskvecError(f"{where}.{name}: expected a table, got {table!r}")
            modes[name] = from_data(TrainConfig, _split_mode_table(mode, table, f"{where}.{name}"), f"{where}.{name}")
        lengths = {
            k: check_value(data.get(k, {}), dict[str, float] if k == "epochs" else dict[str, int | float], f"{where}.{k}")
            for k in ("epochs", "steps")
        }
        return cls(modes=modes, **lengths)

    def to_table(self) -> dict:
        def flat(t: TrainConfig) -> dict:
            table = to_data(t)
            return {**{k: v for k, v in table.items() if k != "settings"}, **table["settings"]}

        return {
            "modes": list(self.modes),
            **{name: flat(t) for name, t in self.modes.items()},
            "epochs": dict(self.epochs),
            "steps": dict(self.steps),
        }

    def for_task(self, mode: str | FinetuneMode, task: str, n_train: int) -> TrainConfig:
        """The TrainConfig of `mode` with this task's length resolved from the tables."""
        mode = FINETUNE_MODES.get(mode)
        base = self[mode]
        if task in self.steps:
            steps = int(self.steps[task])
        elif task in self.epochs:
            steps = steps_for_epochs(self.epochs[task], n_train, base.batch_size)
        else:
            return base
        if steps < base.warmup_steps:
            raise TaskvecError(f"task {task!r} resolves to {steps} {mode.name} steps, fewer than warmup_steps = {base.warmup_steps}")
        return dataclasses.replace(base, steps=steps)
