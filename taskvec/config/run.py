"""A run's whole config (`RunConfig`), read from TOML, and the variants the CLI derives from it
(quick, with analyses, over seeds)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TaskvecError
from ..finetuning.settings import ARITHMETIC
from ..kinds import FINETUNE_MODES, FinetuneMode
from ..merging import MERGE_METHODS, MergeMethod
from ..merging.base import ADAPTER_MERGES
from ..models.registry import Init, check_options, is_registered
from ..typed import from_data
from .merge import ALPHAS, MergeConfig
from .sections import AnalysisConfig, DataConfig, EvalConfig, HeadConfig, NegationConfig, TuneConfig, alpha_grid
from .train import TrainConfig, TrainModes

if TYPE_CHECKING:
    from ..models.base import Backbone


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    backbone: str = "effnet-lite0"
    init: Init = Init.PRETRAINED
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
        self._check_seeds()
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
        self._check_checkpoints()
        self._check_adapter_merges()

    def _check_adapter_merges(self) -> None:
        """LoRA vectors under `arithmetic = "adapters"` merge by the methods the L-LoRA code runs
        on adapters only: say so before anything is fine-tuned."""
        for mode in self.train.modes:
            others = [m for m in self.merge.methods if m not in ADAPTER_MERGES]
            if self.train[mode].settings.get(ARITHMETIC.name) == "adapters" and others:
                raise TaskvecError(
                    f"train.{mode}.arithmetic = 'adapters' merges by {' and '.join(ADAPTER_MERGES)} only; merge.methods also names "
                    f"{others}: set merge.methods to those or arithmetic = 'weights'"
                )

    def _check_seeds(self) -> None:
        if self.seeds is None:
            return
        if not self.seeds:
            raise TaskvecError("seeds is empty: name at least one seed, or leave it out for a single run")
        if len(set(self.seeds)) != len(self.seeds):
            raise TaskvecError(f"seeds has duplicates: {self.seeds}")
        if any(s < 0 for s in self.seeds):
            raise TaskvecError(f"seeds must be non-negative integers, got {self.seeds}")

    def _check_checkpoints(self) -> None:
        for mode, sources in self.checkpoints.items():
            FINETUNE_MODES.get(mode)
            if mode not in self.train.modes:
                raise TaskvecError(
                    f"[checkpoints.{mode}] gives vectors of a mode that train.modes leaves out ({', '.join(self.train.modes)})"
                )
            unknown = sorted(set(sources) - set(self.tasks))
            if unknown:
                raise TaskvecError(f"checkpoints.{mode} names tasks that are not in tasks: {unknown}")
            empty = [task for task, source in sources.items() if not source.strip()]
            if empty:
                raise TaskvecError(f"checkpoints.{mode}.{empty[0]} is empty: give a folder, a file or a Hugging Face repo id")

    @property
    def modes(self) -> list[FinetuneMode]:
        """The fine-tuning modes the run trains (train.modes), in the config's order."""
        return [FINETUNE_MODES.get(name) for name in self.train.modes]

    def build_backbone(self, init: Init | None = None) -> Backbone:
        """The run's backbone with its options (`init` overrides the config's)."""
        from ..models import build_backbone

        return build_backbone(self.backbone, init=init or self.init, **self.backbone_options)

    def checkpoint(self, task: str, mode: FinetuneMode) -> str | None:
        """Where the task vector of (task, mode) comes from when it is not fine-tuned here."""
        return self.checkpoints.get(mode.name, {}).get(task)


# Config keys a finished run directory may change: the stages they feed record them and are
# redone when they differ; fine-tuning and the other stages are unaffected.
CHANGEABLE_SETTINGS = {"analysis", "threads", "merge", "tune"}

DEFAULT_CONFIG = "default.toml"  # the default benchmark, shipped beside this module


def load_config(path: str | Path | None) -> RunConfig:
    """The default benchmark when `path` is None; else the TOML file, validated."""
    if path is None:
        return read_config(resources.files(__package__).joinpath(DEFAULT_CONFIG).read_text(), DEFAULT_CONFIG, DEFAULT_CONFIG)
    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise TaskvecError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise TaskvecError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return read_config(text, str(path), path.name)


def read_config(text: str, source: str, name: str) -> RunConfig:
    """A config from TOML text; errors name the file (`source`, or `name` before a key)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TaskvecError(f"config file {source} is not valid TOML: {exc}") from None
    try:
        _check_finite(data, "")
        return from_data(RunConfig, data)
    except TaskvecError as exc:
        raise TaskvecError(f"config {name}: {exc}") from None


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
    fine-tune, the merges' own sampling (seeded settings such as DARE's drop masks, offset by
    `seed`) and any other sampling (heads, analyses) all follow `seed`."""
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-seed{seed}",
        seeds=None,
        data=dataclasses.replace(cfg.data, seed=seed),
        train=cfg.train.replace_each(lambda t: dataclasses.replace(t, seed=seed)),
        merge=cfg.merge.seeded(seed),
    )


def with_analyses(cfg: RunConfig) -> RunConfig:
    """The config with every analysis switched on (the CLI's --analyses)."""
    return dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, disentanglement=True, ntk=True, random_init=True))


def quick(cfg: RunConfig) -> RunConfig:
    """A smoke-run version of a config: few steps, little data, a coarse α grid, small analyses
    (about 1.5 minutes for the default benchmark on 2 CPU cores; docs/results.md)."""

    def shrink(t: TrainConfig) -> TrainConfig:
        return dataclasses.replace(t, steps=12, warmup_steps=2, batch_size=min(t.batch_size, 16), checkpoint_every=6, grad_accumulation=1)

    def defaults_only(method: MergeMethod) -> dict[str, list]:
        """Each setting at one value, the config's first (its default where the config names
        none), and every fourth α of the method's grid."""
        given = cfg.merge.grids.get(method.name, {})
        alphas = cfg.merge.alphas(method, alpha_grid(cfg.eval.alpha_start, cfg.eval.alpha_stop, 0.25))
        return {**{s.name: given.get(s.name, [s.default])[:1] for s in method.settings}, ALPHAS: alphas[::4] if len(alphas) > 6 else alphas}

    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-quick",
        data=dataclasses.replace(cfg.data, max_train=128, max_val=48, max_test=64),
        train=TrainModes(modes={name: shrink(t) for name, t in cfg.train.modes.items()}),
        merge=dataclasses.replace(cfg.merge, grids={m: defaults_only(MERGE_METHODS.get(m)) for m in cfg.merge.methods}),
        eval=dataclasses.replace(cfg.eval, alpha_step=0.25),
        # analyses stay as switched on or off, only smaller: the NTK is the costly one
        analysis=dataclasses.replace(
            cfg.analysis, disentanglement_step=1.5, disentanglement_examples=48, ntk_examples=24, ntk_eigenfunctions=10
        ),
    )
