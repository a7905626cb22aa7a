"""Validated run settings. A config is a TOML file mapped onto these dataclasses; an unknown
key or a value of the wrong type or range is a one-line TaskvecError naming it."""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from .edits import alpha_grid
from .errors import TaskvecError
from .kinds import FINETUNE_MODES, LINEARIZED, NONLINEAR, FinetuneMode
from .merging import MERGE_METHODS, MergeMethod
from .train import TrainConfig
from .typed import check_value, from_data, to_data

if TYPE_CHECKING:
    from .models.base import Backbone


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
    """kind: how each task's frozen head is built (auto: zero-shot for CLIP, text descriptions
    for text encoders, class prototypes otherwise). text_encoder: which model embeds the class
    descriptions of zeroshot and text heads when the backbone is randomly initialized (init =
    "random", and the random-init ablation): "pretrained" (the paper re-initializes only the
    image encoder: heads from the pre-trained text tower and logit scale) or "model" (the random
    model itself)."""

    kind: Literal["auto", "prototype", "probe", "text", "zeroshot"] = "auto"
    scale: float = 30.0
    text_encoder: Literal["pretrained", "model"] = "pretrained"

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

    modes: dict[str, TrainConfig] = field(default_factory=dict)
    epochs: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        modes = self.modes or {m.name: TrainConfig(lr=m.lr) for m in FINETUNE_MODES if m.paper}
        for name, train in modes.items():
            FINETUNE_MODES.get(name).resolve(train.settings)
        object.__setattr__(self, "modes", dict(modes))
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

    def replace_each(self, change: Callable[[TrainConfig], TrainConfig]) -> "TrainModes":
        """The same tables with `change` applied to every mode's TrainConfig."""
        return dataclasses.replace(self, modes={name: change(t) for name, t in self.modes.items()})

    @classmethod
    def from_table(cls, data: Any, where: str) -> "TrainModes":
        if not isinstance(data, dict):
            raise TaskvecError(f"{where}: expected a table, got {data!r}")
        allowed = ["modes", "epochs", "steps"] + FINETUNE_MODES.names()
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise TaskvecError(f"unknown key '{where}.{unknown[0]}'; allowed: {', '.join(allowed)}")
        names = check_value(data["modes"], list[str], f"{where}.modes") if "modes" in data else [m.name for m in FINETUNE_MODES if m.paper]
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
            modes[name] = _mode_train_config(mode, table, f"{where}.{name}")
        lengths = {k: check_value(data.get(k, {}), dict[str, float] if k == "epochs" else dict[str, int | float], f"{where}.{k}")
                   for k in ("epochs", "steps")}
        return cls(modes=modes, **lengths)

    def to_table(self) -> dict:
        def flat(t: TrainConfig) -> dict:
            table = to_data(t)
            return {**{k: v for k, v in table.items() if k != "settings"}, **table["settings"]}

        return {"modes": list(self.modes), **{name: flat(t) for name, t in self.modes.items()},
                "epochs": dict(self.epochs), "steps": dict(self.steps)}

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
        from .tuning import TUNE_CRITERIA

        TUNE_CRITERIA.get(self.criterion)
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

    def rates(self, mode: str, configured: float) -> list[float]:
        """The learning rates tried for `mode`, ascending."""
        if mode in self.lr:
            return sorted(self.lr[mode])
        return sorted(float(f"{configured * f:.3g}") for f in (1 / 3, 1.0, 3.0))


ALPHAS = "alphas"  # the key of a [merge.<method>] table that overrides the method's α grid


@dataclass(frozen=True)
class MergeConfig:
    """Which merge methods a run compares and the grids it searches on validation.

    TOML: `[merge] methods = [...]` (default: every registered method, `taskvec list`), and per
    method an optional `[merge.<method>]` table: `<setting> = value or [values]` replaces that
    setting's declared grid, `alphas = [...]` the method's α grid.
    """

    methods: tuple[str, ...] = field(default_factory=lambda: tuple(MERGE_METHODS.names()))
    grids: dict[str, dict[str, list]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise TaskvecError("merge.methods is empty: name at least one merge method")
        if len(set(self.methods)) != len(self.methods):
            raise TaskvecError(f"merge.methods has duplicates: {list(self.methods)}")
        for name in self.methods:
            MERGE_METHODS.get(name)
        for name in self.grids:
            method = MERGE_METHODS.get(name)
            if name not in self.methods:
                raise TaskvecError(f"[merge.{name}] sets a grid for a method that merge.methods leaves out")
            self.settings_grid(method)
            self.alphas(method, [0.0])

    def settings_grid(self, method: MergeMethod) -> list[dict[str, Any]]:
        """Every combination of the method's settings to try on validation."""
        grid = {k: v for k, v in self.grids.get(method.name, {}).items() if k != ALPHAS}
        return method.grid(grid, where=f"merge.{method.name}")

    def alphas(self, method: MergeMethod, default: list[float]) -> list[float]:
        """The α grid of `method`: the config's, else the method's own, else `default` (the run's)."""
        values = self.grids.get(method.name, {}).get(ALPHAS) or list(method.alpha_grid(default))
        for a in values:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
                raise TaskvecError(f"merge.{method.name}.{ALPHAS} must be finite numbers, got {a!r}")
        return [round(float(a), 6) for a in values]

    @classmethod
    def from_table(cls, data: Any, where: str) -> "MergeConfig":
        if not isinstance(data, dict):
            raise TaskvecError(f"{where}: expected a table, got {data!r}")
        methods = check_value(data["methods"], tuple[str, ...], f"{where}.methods") if "methods" in data else None
        grids = {}
        for name, table in data.items():
            if name == "methods":
                continue
            if name not in MERGE_METHODS:
                raise TaskvecError(f"unknown key '{where}.{name}'; allowed: methods, {', '.join(MERGE_METHODS.names())}")
            if not isinstance(table, dict):
                raise TaskvecError(f"{where}.{name}: expected a table of settings, got {table!r}")
            grids[name] = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in table.items()}
        return cls(grids=grids) if methods is None else cls(methods=methods, grids=grids)

    def to_table(self) -> dict:
        return {"methods": list(self.methods), **{name: {k: list(v) for k, v in g.items()} for name, g in self.grids.items()}}


def _mode_train_config(mode: FinetuneMode, table: dict, where: str) -> TrainConfig:
    """A `[train.<mode>]` table: the loop's settings (TrainConfig) and the mode's own, side by side."""
    own = {s.name for s in mode.settings}
    loop = {f.name for f in dataclasses.fields(TrainConfig)} - {"settings"}
    unknown = sorted(set(table) - own - loop)
    if unknown:
        raise TaskvecError(f"unknown key '{where}.{unknown[0]}'; allowed: {', '.join(sorted(loop | own))}")
    settings = mode.resolve({k: v for k, v in table.items() if k in own})
    return from_data(TrainConfig, {"lr": mode.lr, **{k: v for k, v in table.items() if k in loop}, "settings": settings}, where)


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
    # The default benchmark's rates, chosen on validation (configs/image.toml). A config's own
    # [train] table starts from each mode's registered defaults instead.
    train: TrainModes = field(default_factory=lambda: TrainModes(modes={m.name: TrainConfig(lr=3e-4) for m in (NONLINEAR, LINEARIZED)}))
    eval: EvalConfig = field(default_factory=EvalConfig)
    negation: NegationConfig = field(default_factory=NegationConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    # Repeat the run once per seed (data.seed and every mode's train seed set to it: split, data
    # order, head sampling), each in seed-<s>/, and report mean ± std across them. None: one run.
    seeds: list[int] | None = None
    # Task vectors from checkpoints fine-tuned elsewhere instead of fine-tuning here:
    # [checkpoints.<mode>] <task> = "<folder, state-dict file or Hugging Face repo id>"
    # (taskvec.checkpoints; the base is `backbone`).
    checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seeds is not None:
            if not self.seeds:
                raise TaskvecError("seeds is empty: name at least one seed, or leave it out for a single run")
            if len(set(self.seeds)) != len(self.seeds):
                raise TaskvecError(f"seeds has duplicates: {self.seeds}")
            if any(s < 0 for s in self.seeds):
                raise TaskvecError(f"seeds must be non-negative integers, got {self.seeds}")
        from .models.registry import check_options, is_registered

        if is_registered(self.backbone):  # an unknown backbone is named when the run builds it
            check_options(self.backbone, self.backbone_options)
        unknown = sorted(set(self.tune.lr) - set(self.train.modes))
        if unknown:
            raise TaskvecError(f"tune.lr.{unknown[0]} tunes a mode that train.modes leaves out ({', '.join(self.train.modes)})")
        if len(self.tasks) < 2:
            raise TaskvecError(f"tasks needs at least two tasks for task arithmetic, got {self.tasks}")
        if len(set(self.tasks)) != len(self.tasks):
            raise TaskvecError(f"tasks has duplicates: {self.tasks}")
        for table in ("epochs", "steps"):
            unknown = sorted(set(getattr(self.train, table)) - set(self.tasks))
            if unknown:
                raise TaskvecError(f"train.{table} names tasks that are not in tasks: {unknown}")
        for mode, sources in self.checkpoints.items():
            FINETUNE_MODES.get(mode)
            if mode not in self.train.modes:
                raise TaskvecError(f"[checkpoints.{mode}] gives vectors of a mode that train.modes leaves out ({', '.join(self.train.modes)})")
            unknown = sorted(set(sources) - set(self.tasks))
            if unknown:
                raise TaskvecError(f"checkpoints.{mode} names tasks that are not in tasks: {unknown}")
            empty = [task for task, source in sources.items() if not source.strip()]
            if empty:
                raise TaskvecError(f"checkpoints.{mode}.{empty[0]} is empty: give a folder, a file or a Hugging Face repo id")

    def build_backbone(self, init: str | None = None) -> "Backbone":
        """The run's backbone with its options (`init` overrides the config's)."""
        from .models import build_backbone

        return build_backbone(self.backbone, init=init or self.init, **self.backbone_options)

    def checkpoint(self, task: str, mode: FinetuneMode) -> str | None:
        """Where the task vector of (task, mode) comes from when it is not fine-tuned here."""
        return self.checkpoints.get(mode.name, {}).get(task)


# Config keys a finished run directory may change: the stages they feed record them and are
# redone when they differ; fine-tuning and the other stages are unaffected.
CHANGEABLE_SETTINGS = {"analysis", "threads", "merge", "tune"}


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build config dataclass `cls` from parsed TOML (or a saved config.json), validated."""
    return from_data(cls, data, where)


def to_dict(cfg: Any) -> Any:
    """The config as plain data (config.json); `from_dict` reads it back."""
    return to_data(cfg)


def load_config(path: str | Path | None) -> RunConfig:
    """The default config when `path` is None; else the TOML file, validated."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskvecError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise TaskvecError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        _check_finite(data, "")
        return from_dict(RunConfig, data)
    except TaskvecError as exc:
        raise TaskvecError(f"config {path.name}: {exc}") from None


def _check_finite(data: Any, where: str) -> None:
    """TOML can spell nan and inf; no setting takes them."""
    if isinstance(data, float) and not math.isfinite(data):
        raise TaskvecError(f"{where} must be a finite number, got {data}")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        _check_finite(value, f"{where}.{key}" if where else str(key))


def with_seeds(cfg: RunConfig, count: int) -> RunConfig:
    """The config repeated over `count` seeds, data.seed, data.seed + 1, ... (the CLI's --seeds)."""
    if count <= 0:
        raise TaskvecError(f"--seeds must be a positive number of seeds, got {count}")
    return dataclasses.replace(cfg, seeds=[cfg.data.seed + i for i in range(count)])


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """One seed's run of a multi-seed config: the split, the data order of every mode's
    fine-tune and any sampling (heads, analyses) all follow `seed`."""
    return dataclasses.replace(cfg, name=f"{cfg.name}-seed{seed}", seeds=None, data=dataclasses.replace(cfg.data, seed=seed),
                               train=cfg.train.replace_each(lambda t: dataclasses.replace(t, seed=seed)))


def with_analyses(cfg: RunConfig) -> RunConfig:
    """The config with every analysis switched on (the CLI's --analyses)."""
    return dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, disentanglement=True, ntk=True, random_init=True))


def quick(cfg: RunConfig) -> RunConfig:
    """A smoke-run version of a config: few steps, little data, a coarse α grid, small analyses
    (about 1.5 minutes for the default benchmark on 2 CPU cores; docs/results.md)."""
    def shrink(t: TrainConfig) -> TrainConfig:
        return dataclasses.replace(t, steps=12, warmup_steps=2, batch_size=min(t.batch_size, 16), checkpoint_every=6, grad_accumulation=1)

    def defaults_only(method: MergeMethod) -> dict[str, list]:
        """Each setting at its default and every fourth α of the method's grid."""
        alphas = cfg.merge.alphas(method, alpha_grid(cfg.eval.alpha_start, cfg.eval.alpha_stop, 0.25))
        return {**{s.name: [s.default] for s in method.settings}, ALPHAS: alphas[::4] if len(alphas) > 6 else alphas}

    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-quick",
        data=dataclasses.replace(cfg.data, max_train=128, max_val=48, max_test=64),
        train=TrainModes(modes={name: shrink(t) for name, t in cfg.train.modes.items()}),
        merge=dataclasses.replace(cfg.merge, grids={m: defaults_only(MERGE_METHODS.get(m)) for m in cfg.merge.methods}),
        eval=dataclasses.replace(cfg.eval, alpha_step=0.25),
        # analyses stay as switched on or off, only smaller: the NTK is the costly one
        analysis=dataclasses.replace(cfg.analysis, disentanglement_step=1.5, disentanglement_examples=48,
                                     ntk_examples=24, ntk_eigenfunctions=10),
    )
