"""Validated run settings. A config is a TOML file mapped onto these dataclasses; an unknown
key or a value of the wrong type or range is a one-line TaskvecError naming it."""
from __future__ import annotations

import dataclasses
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
    seed: int = 0
    val_fraction: float = 0.1
    val_cap: int = 5000
    max_train: int | None = 2000
    max_val: int | None = 300
    max_test: int | None = 500

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise TaskvecError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("val_cap", "max_train", "max_val", "max_test"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TaskvecError(f"data.{name} must be positive, got {value}")


@dataclass(frozen=True)
class HeadConfig:
    kind: Literal["auto", "prototype", "probe", "text"] = "auto"
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
    """The paper's analyses (Fig. 2, 3, 6, Table 3), run after the edits."""

    disentanglement: bool = True
    disentanglement_pairs: int = 1  # task pairs, in config order: (t0, t1), (t2, t3), ...
    disentanglement_min: float = -3.0
    disentanglement_max: float = 3.0
    disentanglement_step: float = 0.5
    disentanglement_examples: int = 200
    ntk: bool = True
    ntk_examples: int = 100  # per task (training task and control)
    ntk_eigenfunctions: int = 20
    random_init: bool = True

    def __post_init__(self) -> None:
        if self.disentanglement_step <= 0 or self.disentanglement_max <= self.disentanglement_min:
            raise TaskvecError("analysis disentanglement grid is empty: check disentanglement_min/max/step")
        for name in ("disentanglement_examples", "ntk_examples", "ntk_eigenfunctions", "disentanglement_pairs"):
            if getattr(self, name) <= 0:
                raise TaskvecError(f"analysis.{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainModes:
    nonlinear: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-5))
    linear: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-4))


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
        kwargs = {k: dataclasses.replace(getattr(defaults, k), **{f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name in data[k]}) for k, v in kwargs.items()}
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


def quick(cfg: RunConfig) -> RunConfig:
    """A smoke-run version of a config: few steps, little data, a coarse α grid (≤ 2 minutes)."""
    def shrink(t: TrainConfig) -> TrainConfig:
        return dataclasses.replace(t, steps=12, warmup_steps=2, batch_size=min(t.batch_size, 16), checkpoint_every=6)

    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-quick",
        data=dataclasses.replace(cfg.data, max_train=128, max_val=48, max_test=64),
        train=TrainModes(nonlinear=shrink(cfg.train.nonlinear), linear=shrink(cfg.train.linear)),
        eval=dataclasses.replace(cfg.eval, alpha_step=0.25),
    )
