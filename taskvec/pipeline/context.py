"""What a run's stages compute with: the tasks and their roles, the setup (backbone, prepared
tasks, heads), task vectors and evaluators, built on first use, so a finished run reads its
stage files and builds nothing. A run inside a larger graph (a seed, a tuning point, the
random-init ablation) has a context of its own, made by its parent's (`Contexts.context`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from ..config import RunConfig
from ..distributed import Ranks, barrier, device_for, is_main
from ..edits import negation_control
from ..errors import TaskvecError
from ..evaluate import Evaluator
from ..finetuning.kfac import TaskFactors
from ..io import load_tensors, save_tensors
from ..kinds import EvalMethod, FinetuneMode
from ..models import Backbone
from ..models.heads import ClassificationHead
from ..task_vector import TaskVector, base_identity
from ..train import finetune
from .rundir import RunDir
from .setup import PreparedTask, Setup, describe_heads
from .stages import Outcome, ResultKey

Log = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class Roles:
    """The tasks of a run and the part each plays."""

    tasks: list[str]
    targets: list[str]  # negation targets
    controls: dict[str, str]  # negation target -> control task
    control: str | None = None  # the configured [negation] control, if any

    @classmethod
    def of(cls, cfg: RunConfig) -> Roles:
        tasks = list(cfg.tasks)
        targets = list(cfg.negation.targets or tasks)
        return cls(tasks, targets, {t: negation_control(t, tasks, cfg.negation.control) for t in targets}, cfg.negation.control)

    @property
    def extra(self) -> list[str]:
        """Control tasks that are not among the tasks (evaluated, never fine-tuned)."""
        return sorted(set(self.controls.values()) - set(self.tasks))

    @property
    def names(self) -> list[str]:
        return self.tasks + self.extra

    def penalty_tasks(self, task: str, mode: FinetuneMode) -> list[str]:
        """The tasks whose training inputs a fine-tune of `task` reads besides its own, for a mode
        with a penalty on them (τJp), else none: the other tasks of the run, then the configured
        control (`penalty_control`) as one more dataset, as the official code appends ImageNet
        (katoro8989/tau-Jp_Task_Arithmetic, finetune_reg_strict.py line 301). A mode with a
        curvature penalty (TAK) reads the other tasks' KFAC factors, computed from their inputs
        unless the run directory has them."""
        if mode.curvature:
            return [t for t in self.tasks if t != task]
        if not mode.penalty:
            return []
        control = self.penalty_control(task, mode)
        return [t for t in self.tasks if t not in (task, control)] + ([control] if control else [])

    def penalty_control(self, task: str, mode: FinetuneMode) -> str | None:
        """The control a fine-tune of `task` penalizes: the configured [negation] control unless
        it is `task` itself; None without one (the penalty reads the other tasks only)."""
        return self.control if mode.penalty and self.control not in (None, task) else None


@dataclass(frozen=True)
class SubRun:
    """A run inside a larger graph: its config, its directory and its stages' key prefix."""

    prefix: str
    cfg: RunConfig
    dir: RunDir


class Contexts:
    """Makes the contexts of the sub-runs a graph includes, one at a time: stages come sub-run by
    sub-run and each context holds a model, data and caches of its own. All share one
    `Outcome`, where a sub-run's stage keys carry its prefix."""

    outcome: Outcome
    prefix: str
    progress: bool

    def __init__(self, log: Log, progress: bool, outcome: Outcome | None = None, prefix: str = ""):
        self._log, self.progress = log, progress
        self.outcome = outcome if outcome is not None else Outcome()
        self.prefix = prefix
        self._current: tuple[str, RunContext] | None = None

    def log(self, message: str) -> None:
        if is_main():
            self._log(message)

    def context(self, run: SubRun) -> RunContext:
        prefix = self.prefix + run.prefix
        if self._current is None or self._current[0] != prefix:
            self._current = (prefix, RunContext(run.cfg, run.dir, self._log, self.progress, outcome=self.outcome, prefix=prefix))
        return self._current[1]

    def result(self, key: ResultKey[T], run: SubRun | None = None) -> T:
        """A stage's result, typed: of this run, or of one of its sub-runs."""
        return self.outcome.get(key, self.prefix + (run.prefix if run else ""))

    def has_result(self, key: ResultKey) -> bool:
        return self.outcome.has(key, self.prefix)

    def _scoped(self, table: dict[str, Any]) -> dict[str, Any]:
        n = len(self.prefix)
        return {k[n:]: v for k, v in table.items() if k.startswith(self.prefix)}

    @property
    def stage_seconds(self) -> dict[str, float | None]:
        """The seconds of this run's stages (and its sub-runs', under their prefix) by key."""
        return self._scoped(self.outcome.seconds)


class RunContext(Contexts):
    """Everything one run's stages compute with, built on first use."""

    def __init__(
        self, cfg: RunConfig, run_dir: RunDir, log: Log = print, progress: bool = True, outcome: Outcome | None = None, prefix: str = ""
    ):
        super().__init__(log, progress and is_main(), outcome, prefix)  # one progress bar, not one per rank
        self.cfg, self.dir = cfg, run_dir
        self.setup = Setup(cfg)
        self.ranks = Ranks.of_process_group()  # who shares the evaluations (torchrun), else this process alone
        self.roles = Roles.of(cfg)
        self.device = device_for(cfg.device)  # this rank's GPU under torchrun
        self.started = time.perf_counter()
        self._heads: dict[str, ClassificationHead] = {}
        self._vectors: dict[tuple[str, FinetuneMode], TaskVector] = {}
        self._evaluators: dict[EvalMethod, Evaluator] = {}
        self._pretrained_features: dict = {}  # θ0's features per evaluation set, shared by the evaluators

    @cached_property
    def backbone(self) -> Backbone:
        return self.setup.backbone

    def prepared(self, name: str) -> PreparedTask:
        return self.setup.prepared(name)

    def head(self, name: str) -> ClassificationHead:
        """The task's frozen head: read from the run directory, else built on θ0 and saved."""
        if name in self._heads:
            return self._heads[name]
        path, identity = self.dir.head(name), base_identity(self.backbone)
        if path.exists():
            tensors, meta = load_tensors(path)
            if meta.get("base") != identity:
                raise TaskvecError(f"head {path} was built for another base model; use another --out")
            head = ClassificationHead(tensors["weight"], meta["scale"])
        else:
            head = self.setup.head(name)
            if is_main():
                save_tensors(
                    path,
                    {"weight": head.weight},
                    {
                        "base": identity,
                        "task": name,
                        "scale": head.scale,
                        "kind": self.cfg.head.kind,
                        "built_from": describe_heads(self.backbone, self.cfg),
                    },
                )
        self._heads[name] = head
        return head

    def vector(self, task: str, mode: FinetuneMode) -> TaskVector:
        """The task vector of a finished fine-tune (its stage must have run)."""
        key = (task, mode)
        if key not in self._vectors:
            path = self.dir.vector(task, mode)
            vector = TaskVector.load(path)
            if vector.base != base_identity(self.backbone):
                raise TaskvecError(f"task vector {path} was made from another base model; use another --out")
            self._vectors[key] = vector
        return self._vectors[key]

    def finetune(self, task: str, mode: FinetuneMode) -> TaskVector:
        """Fine-tune one task in one mode (resumable from its checkpoint) and save the vector. A
        penalized mode reads the training split of the other tasks and of the control, as the
        official τJp code draws its penalty batches from each "…Val" dataset's training part,
        ImageNet's included (finetune_reg_strict.py line 100, `is_train=True`)."""
        train = self.prepared(task).sets["train"]
        checkpoint = self.dir.checkpoint(task, mode)
        control = self.roles.penalty_control(task, mode)
        penalized = {t: self.prepared(t).sets["train"].inputs for t in self.roles.penalty_tasks(task, mode)} if mode.penalty else {}
        control_data = (control, penalized.pop(control)) if control else None
        vector = finetune(
            self.backbone,
            self.head(task),
            train.inputs,
            train.labels,
            mode=mode,
            cfg=self.cfg.train.for_task(mode, task, len(train)),
            task=task,
            checkpoint=checkpoint,
            device=self.device,
            progress=self.progress,
            others=penalized,
            control=control_data,
            factors=[self.factors(t, mode) for t in self.roles.penalty_tasks(task, mode)] if mode.curvature else (),
        )
        if mode.curvature:  # the cost of the factors this task ships, beside its fine-tune's
            shipped = self.factors(task, mode).meta.get("cost", {})
            vector.info["cost"].update(  # type: ignore[attr-defined]
                factor_seconds=shipped.get("seconds"), factor_peak_mib=shipped.get("peak_mib")
            )
        if is_main():  # under torchrun every rank holds the same vector; one writes it
            vector.save(self.dir.vector(task, mode))
            checkpoint.unlink(missing_ok=True)
        barrier()
        self._vectors[(task, mode)] = vector
        self.log(f"fine-tuned {task} ({mode.label}) in {vector.info.get('seconds')}s, last loss {vector.info.get('last_loss')}")
        return vector

    def factors(self, task: str, mode: FinetuneMode) -> TaskFactors:
        """The task's KFAC factors at θ0 under `mode`'s settings (TAK): from the run directory, else
        computed on its training inputs and saved (every rank computes the same; rank 0 writes)."""
        from ..finetuning.kfac import task_factors

        train = self.prepared(task).sets["train"]
        loop = self.cfg.train.for_task(mode, task, len(train))
        return task_factors(
            self.dir.factors(task),
            self.backbone,
            train.inputs,
            mode.resolve(loop.settings),
            task=task,
            identity=base_identity(self.backbone),
            batch_size=loop.batch_size,
            seed=loop.seed,
            device=self.device,
            save=is_main(),
        )

    def import_vector(self, task: str, mode: FinetuneMode, source: str) -> TaskVector:
        """The task vector of a checkpoint fine-tuned elsewhere ([checkpoints] in the config)."""
        from ..checkpoints import vector_from_checkpoints

        vector = vector_from_checkpoints(self.backbone, source, task)
        if vector.mode != mode:
            raise TaskvecError(f"checkpoint {source} gives a {vector.mode.name} task vector, but [checkpoints.{mode.name}] lists it")
        vector.save(self.dir.vector(task, mode))
        self._vectors[(task, mode)] = vector
        self.log(f"task vector of {task} ({mode.label}) from {source}")
        return vector

    def evaluator(self, method: EvalMethod) -> Evaluator:
        """One evaluator per method over every task's val and test sets (θ0 features shared)."""
        if method not in self._evaluators:
            names = self.roles.names
            heads = {n: self.head(n) for n in names}
            sets = self.setup.sets(names, "val", "test")
            vectors = {t: self.vector(t, method.vectors) for t in self.roles.tasks} if method.vectors else {}
            self._evaluators[method] = Evaluator(
                self.backbone,
                heads,
                sets,
                vectors,
                method,
                chunk=self.cfg.eval.chunk,
                device=self.device,
                pretrained_cache=self._pretrained_features,
                ranks=self.ranks,
            )
        return self._evaluators[method]
