"""Validated run settings. A config is a TOML file mapped onto these dataclasses; an unknown
key or a value of the wrong type or range is a one-line TaskvecError naming it."""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import TaskvecError
from .train import TrainConfig


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
    kind: Literal["auto", "prototype", "probe", "text", "zeroshot"] = "auto"
    scale: float = 30.0

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class TrainModes:
    """Fine-tuning settings per mode, and optional per-task lengths shared by both modes.

    epochs: {task: epochs}; a task listed runs epochs × ceil(n_train / batch_size) steps (the
    paper's protocol: Cars 35, DTD 76, ...). steps: {task: steps}, which wins over epochs.
    Tasks in neither table run the mode's `steps`.
    """

    nonlinear: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-5))
    linear: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4))
    epochs: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table in ("epochs", "steps"):
            for task, value in getattr(self, table).items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise TaskvecError(f"train.{table}.{task} must be a positive number, got {value!r}")
                if table == "steps" and not isinstance(value, int):
                    raise TaskvecError(f"train.steps.{task} must be an integer, got {value!r}")

    def for_task(self, mode: str, task: str, n_train: int) -> TrainConfig:
        """The TrainConfig of `mode` with this task's length resolved from the tables."""
        if mode not in ("nonlinear", "linear"):
            raise TaskvecError(f"unknown fine-tuning mode {mode!r}; expected 'nonlinear' or 'linear'")
        base: TrainConfig = getattr(self, mode)
        if task in self.steps:
            steps = int(self.steps[task])
        elif task in self.epochs:
            steps = steps_for_epochs(self.epochs[task], n_train, base.batch_size)
        else:
            return base
        if steps < base.warmup_steps:
            raise TaskvecError(f"task {task!r} resolves to {steps} {mode} steps, fewer than warmup_steps = {base.warmup_steps}")
        return dataclasses.replace(base, steps=steps)


def steps_for_epochs(epochs: float, n_train: int, batch_size: int) -> int:
    """Optimizer steps of `epochs` passes over n_train examples in batches of batch_size (the
    paper's loop: epochs × number of batches, the last batch of an epoch possibly short)."""
    if n_train <= 0:
        raise TaskvecError("cannot count epochs of an empty training set")
    return max(1, int(math.ceil(epochs * math.ceil(n_train / batch_size))))


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    backbone: str = "effnet-lite0"
    init: Literal["pretrained", "random"] = "pretrained"
    backbone_options: dict[str, Any] = field(default_factory=lambda: {"image_size": 32})
    tasks: list[str] = field(default_factory=lambda: ["mnist", "animal-mnist", "ising", "textile"])
    device: str = "cpu"
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainModes = field(default_factory=TrainModes)
    eval: EvalConfig = field(default_factory=EvalConfig)
    negation: NegationConfig = field(default_factory=NegationConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def __post_init__(self) -> None:
        if len(self.tasks) < 2:
            raise TaskvecError(f"tasks needs at least two tasks for task arithmetic, got {self.tasks}")
        if len(set(self.tasks)) != len(self.tasks):
            raise TaskvecError(f"tasks has duplicates: {self.tasks}")
        for table in ("epochs", "steps"):
            unknown = sorted(set(getattr(self.train, table)) - set(self.tasks))
            if unknown:
                raise TaskvecError(f"train.{table} names tasks that are not in tasks: {unknown}")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check a TOML value against a field annotation; ints are accepted where floats are."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise TaskvecError(f"config {where}: {value!r} is not one of {list(typing.get_args(annotation))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_type(value, option, where)
            except TaskvecError as exc:
                errors.append(str(exc))
        raise TaskvecError(errors[0] if errors else f"config {where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise TaskvecError(f"config {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TaskvecError(f"config {where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))):
        raise TaskvecError(f"config {where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise TaskvecError(f"config {where or 'file'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise TaskvecError(f"unknown config key {name!r}; allowed: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _check_type(value, hints[key], f"{where}.{key}" if where else key)
    if cls is TrainModes:  # a mode's table overrides that mode's defaults, not TrainConfig's
        defaults = TrainModes()
        kwargs = {k: dataclasses.replace(getattr(defaults, k), **{f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name in data[k]})
                  if isinstance(v, TrainConfig) else v for k, v in kwargs.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg)


def load_config(path: str | Path | None) -> RunConfig:
    """The default config when `path` is None; else the TOML file, validated."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TaskvecError(f"config file {path} is not valid TOML: {exc}") from None
    return from_dict(RunConfig, data)


def with_analyses(cfg: RunConfig) -> RunConfig:
    """The config with every analysis switched on (the CLI's --analyses)."""
    return dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, disentanglement=True, ntk=True, random_init=True))


def quick(cfg: RunConfig) -> RunConfig:
    """A smoke-run version of a config: few steps, little data, a coarse α grid, small analyses
    (≤ 1 minute for the default benchmark; about 1 more with --analyses)."""
    def shrink(t: TrainConfig) -> TrainConfig:
        return dataclasses.replace(t, steps=12, warmup_steps=2, batch_size=min(t.batch_size, 16), checkpoint_every=6, grad_accumulation=1)

    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-quick",
        data=dataclasses.replace(cfg.data, max_train=128, max_val=48, max_test=64),
        train=TrainModes(nonlinear=shrink(cfg.train.nonlinear), linear=shrink(cfg.train.linear)),
        eval=dataclasses.replace(cfg.eval, alpha_step=0.25),
        # analyses stay as switched on or off, only smaller: the NTK is the costly one
        analysis=dataclasses.replace(cfg.analysis, disentanglement_step=1.5, disentanglement_examples=48,
                                     ntk_examples=24, ntk_eigenfunctions=10),
    )
