"""`taskvec run`: the benchmark's stage graph, and the context its stages compute with.

`build_graph(cfg, run_dir)` declares every stage (heads, one fine-tune per task and mode, the
single-task evaluation, one stage per merge method, negation, the analyses, the report);
`taskvec run` executes it and `taskvec run --dry-run` prints it (taskvec.plan), so the two can
not drift. A stage whose outputs exist (made with the same settings) is skipped, so a second
run reuses the fine-tuned vectors and everything else that is done.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from .config import CHANGEABLE_SETTINGS, RunConfig, from_dict, to_dict
from .distributed import Ranks, barrier, cleanup, device_for, init_from_env, is_main, main_first, shard_units
from .edits import negation_control, select_merge, task_negation
from .errors import TaskvecError
from .evaluate import EvalSet, Evaluator, encode
from .io import check_tensors, load_tensors, read_json, save_tensors, write_json
from .kinds import FINETUNE_MODES, PRETRAINED, EvalMethod, FinetuneMode, editing_methods, method_for_vector
from .merging import MERGE_METHODS, TASK_ARITHMETIC
from .models import Backbone, Batch
from .models.heads import ClassificationHead, describe, prototype_head, probe_head, text_head
from .results import (Disentanglement, FinetuneCost, Linearity, MergeResult, NegationResult, NegationTarget, NtkResult,
                      RandomInitResult, RunResults, SingleTask, Timing)
from .registry import format_settings
from .stages import Graph, Outcome, Stage, execute
from .typed import from_data
from .task_vector import TaskVector, base_identity
from .tasks import Task, get_task, make_splits
from .train import finetune

if TYPE_CHECKING:
    from .seeds import SeedResults

SPLITS = ("train", "val", "test")
Log = Callable[[str], None]


# ----- tasks and heads -------------------------------------------------------------------------

@dataclass
class PreparedTask:
    task: Task
    sets: dict[str, EvalSet]


def prepare_tasks(backbone: Backbone, names: list[str], cfg: RunConfig) -> dict[str, PreparedTask]:
    """Load each task, split it with the configured seed and caps, and prepare the inputs once."""
    prepared = {}
    d = cfg.data
    for name in names:
        task = get_task(name, root=cfg.data.root)
        if task.modality != backbone.modality:
            raise TaskvecError(f"task {name!r} is {task.modality} data but backbone {backbone.name!r} encodes {backbone.modality}")
        data = make_splits(task, seed=d.seed, val_fraction=d.val_fraction, val_cap=d.val_cap, max_train=d.max_train, max_val=d.max_val, max_test=d.max_test)
        sets = {}
        for split in SPLITS:
            raw = data.split(split)
            sets[split] = EvalSet(backbone.prepare(raw.inputs), torch.as_tensor(raw.labels, dtype=torch.long))
        prepared[name] = PreparedTask(task, sets)
    return prepared


def head_kind(backbone: Backbone, cfg: RunConfig) -> str:
    """The configured head kind, with "auto" resolved for this backbone."""
    if cfg.head.kind != "auto":
        return cfg.head.kind
    return "zeroshot" if hasattr(backbone, "logit_scale") else "text" if backbone.modality == "text" else "prototype"


_PRETRAINED_TEXT_ENCODERS: dict[str, Backbone] = {}


def text_encoder(backbone: Backbone, cfg: RunConfig) -> Backbone:
    """The model that embeds class descriptions for zeroshot and text heads: the pre-trained
    backbone when this one is randomly initialized and head.text_encoder = "pretrained" (built
    once per process), else the backbone itself."""
    if cfg.init != "random" or cfg.head.text_encoder != "pretrained":
        return backbone
    key = json.dumps([cfg.backbone, cfg.backbone_options], sort_keys=True, default=str)
    if key not in _PRETRAINED_TEXT_ENCODERS:
        _PRETRAINED_TEXT_ENCODERS[key] = cfg.build_backbone(init="pretrained")
    return _PRETRAINED_TEXT_ENCODERS[key]


def describe_heads(backbone: Backbone, cfg: RunConfig) -> str:
    """What the run's heads are built from, for reports (which text encoder, at random init)."""
    kind = head_kind(backbone, cfg)
    if kind not in ("zeroshot", "text"):
        return f"{kind} heads on the model's own features"
    pretrained = cfg.init == "random" and cfg.head.text_encoder == "pretrained"
    return f"{kind} heads from the {'pre-trained' if pretrained else 'model’s own'} text encoder"


def build_head(backbone: Backbone, prepared: PreparedTask, cfg: RunConfig) -> ClassificationHead:
    kind = head_kind(backbone, cfg)
    task = prepared.task
    if kind == "zeroshot":
        from .models.zeroshot import zeroshot_head

        cache = Path(cfg.data.cache_dir) / "heads" if cfg.data.cache_dir else None
        return zeroshot_head(text_encoder(backbone, cfg), task, cache_dir=cache, device=cfg.device)
    if kind == "text":
        descriptions = list(task.descriptions or describe(task.classnames))
        return text_head(text_encoder(backbone, cfg).encode_text(descriptions), cfg.head.scale)
    train = prepared.sets["train"]
    features = encode(backbone, train.inputs, cfg.eval.chunk, cfg.device)
    if kind == "prototype":
        return prototype_head(features, train.labels, task.num_classes, cfg.head.scale)
    return probe_head(features, train.labels, task.num_classes, seed=cfg.data.seed)


# ----- the run directory -----------------------------------------------------------------------

class RunDir:
    """Every path of a run directory, in one place."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def head(self, task: str) -> Path:
        return self.root / "heads" / f"{task}.safetensors"

    def vector(self, task: str, mode: FinetuneMode) -> Path:
        return self.root / "vectors" / f"{task}.{mode.name}.safetensors"

    def checkpoint(self, task: str, mode: FinetuneMode) -> Path:
        return self.root / "checkpoints" / f"{task}.{mode.name}.safetensors"

    def stage(self, key: str) -> Path:
        return self.root / "stages" / f"{key}.json"

    def nested(self, name: str) -> "RunDir":
        return RunDir(self.root / name)

    @contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Hold the directory for this run: a second `taskvec run` on it stops at once, naming
        the first. An OS lock (flock), so a killed run never leaves it held. `shared`: fine-tuning
        shards (--shard i/n), which may fill one directory together but not beside a full run.
        Holding it alone, the run removes the writes a killed run left half-done (`.*.tmp`).
        Rank 0 holds it."""
        if not is_main():
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TaskvecError(f"{self.root} is in use by another taskvec run ({holder}); wait for it to end or use another --out") from None
        try:
            if not shared:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
                handle.flush()
                for leftover in self.root.rglob(".*.tmp"):
                    leftover.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def check_config(self, cfg: RunConfig, compared: Callable[[dict], dict] = lambda data: data) -> None:
        """Refuse a run directory made with settings that change its results. Some settings may
        change (CHANGEABLE_SETTINGS): the stages they feed record them and are redone.
        `compared` drops what the directory's results do not depend on before comparing."""
        current = to_dict(cfg)
        if self.config.exists():
            try:
                saved = to_dict(from_dict(RunConfig, read_json(self.config)))
            except TaskvecError as exc:
                raise TaskvecError(f"{self.root} holds a run this taskvec cannot read ({exc}); use another --out") from None
            old, new = compared(saved), compared(current)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            # more or other seeds add or drop seed-<s>/ runs; a single run cannot become several
            changeable = CHANGEABLE_SETTINGS | ({"seeds"} if saved.get("seeds") and current.get("seeds") else set())
            if set(changed) - changeable:
                raise TaskvecError(f"{self.root} holds a run of a different config (differs in: {', '.join(changed)}); use another --out")
            if saved != current and is_main():
                write_json(self.config, current)
        elif is_main():
            write_json(self.config, current)


# ----- what stages compute with ----------------------------------------------------------------

@dataclass(frozen=True)
class Roles:
    """The tasks of a run and the part each plays."""

    tasks: list[str]
    targets: list[str]  # negation targets
    controls: dict[str, str]  # negation target -> control task

    @classmethod
    def of(cls, cfg: RunConfig) -> "Roles":
        tasks = list(cfg.tasks)
        targets = list(cfg.negation.targets or tasks)
        return cls(tasks, targets, {t: negation_control(t, tasks, cfg.negation.control) for t in targets})

    @property
    def extra(self) -> list[str]:
        """Control tasks that are not among the tasks (evaluated, never fine-tuned)."""
        return sorted(set(self.controls.values()) - set(self.tasks))

    @property
    def names(self) -> list[str]:
        return self.tasks + self.extra


class RunContext:
    """Everything stages compute with, built on first use: the backbone, the prepared tasks,
    heads, task vectors and evaluators. A run whose stages are all done builds none of it."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, log: Log = print, progress: bool = True,
                 outcome: Outcome | None = None, prefix: str = ""):
        self.cfg, self.dir = cfg, run_dir
        self.progress = progress and is_main()  # one progress bar, not one per rank
        self.ranks = Ranks.of_process_group()  # who shares the evaluations (torchrun), else this process alone
        self.roles = Roles.of(cfg)
        self.log: Log = log if is_main() else (lambda message: None)
        self.device = device_for(cfg.device)  # this rank's GPU under torchrun
        # A sub-run of a larger graph (a seed, a tuning point) shares that graph's outcome, where
        # its stages' keys carry `prefix`.
        self.outcome = outcome if outcome is not None else Outcome()
        self.prefix = prefix
        self.started = time.perf_counter()
        self._prepared: dict[str, PreparedTask] = {}
        self._heads: dict[str, ClassificationHead] = {}
        self._vectors: dict[tuple[str, FinetuneMode], TaskVector] = {}
        self._evaluators: dict[EvalMethod, Evaluator] = {}
        self._pretrained_features: dict = {}  # θ0's features per evaluation set, shared by the evaluators

    @property
    def results(self) -> dict[str, Any]:
        """This run's stage results so far, by stage key."""
        return self._scoped(self.outcome.results)

    @property
    def stage_seconds(self) -> dict[str, float | None]:
        return self._scoped(self.outcome.seconds)

    def _scoped(self, table: dict[str, Any]) -> dict[str, Any]:
        n = len(self.prefix)
        return {k[n:]: v for k, v in table.items() if k.startswith(self.prefix)} if self.prefix else table

    @cached_property
    def backbone(self) -> Backbone:
        torch.manual_seed(self.cfg.data.seed)  # random init, if asked for, is reproducible
        return self.cfg.build_backbone()

    def prepared(self, name: str) -> PreparedTask:
        if name not in self._prepared:
            self._prepared.update(prepare_tasks(self.backbone, [name], self.cfg))
        return self._prepared[name]

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
            head = build_head(self.backbone, self.prepared(name), self.cfg)
            if is_main():
                save_tensors(path, {"weight": head.weight}, {"base": identity, "task": name, "scale": head.scale, "kind": self.cfg.head.kind,
                                                             "built_from": describe_heads(self.backbone, self.cfg)})
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
        """Fine-tune one task in one mode (resumable from its checkpoint) and save the vector."""
        train = self.prepared(task).sets["train"]
        checkpoint = self.dir.checkpoint(task, mode)
        others = [self.prepared(t).sets["train"].inputs for t in penalty_tasks(self.roles, task, mode)]
        vector = finetune(self.backbone, self.head(task), train.inputs, train.labels, mode=mode,
                          cfg=self.cfg.train.for_task(mode, task, len(train)), task=task, checkpoint=checkpoint,
                          device=self.device, progress=self.progress, others=others)
        if is_main():  # under torchrun every rank holds the same vector; one writes it
            vector.save(self.dir.vector(task, mode))
            checkpoint.unlink(missing_ok=True)
        barrier()
        self._vectors[(task, mode)] = vector
        self.log(f"fine-tuned {task} ({mode.label}) in {vector.info.get('seconds')}s, last loss {vector.info.get('last_loss')}")
        return vector

    def import_vector(self, task: str, mode: FinetuneMode, source: str) -> TaskVector:
        """The task vector of a checkpoint fine-tuned elsewhere ([checkpoints] in the config)."""
        from .checkpoints import vector_from_checkpoints

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
            sets = {(n, split): self.prepared(n).sets[split] for n in names for split in ("val", "test")}
            vectors = {t: self.vector(t, method.vectors) for t in self.roles.tasks} if method.vectors else {}
            self._evaluators[method] = Evaluator(self.backbone, heads, sets, vectors, method, chunk=self.cfg.eval.chunk,
                                                 device=self.device, pretrained_cache=self._pretrained_features, ranks=self.ranks)
        return self._evaluators[method]


# ----- the stages' computations ------------------------------------------------------------------

def run_modes(cfg: RunConfig) -> list[FinetuneMode]:
    """The fine-tuning modes a run trains (train.modes), in the config's order."""
    return [FINETUNE_MODES.get(name) for name in cfg.train.modes]


def penalty_tasks(roles: Roles, task: str, mode: FinetuneMode) -> list[str]:
    """The tasks whose training inputs a fine-tune of `task` reads besides its own: the other
    tasks of the run for a mode with a penalty on them (τJp), else none."""
    return [t for t in roles.tasks if t != task] if mode.penalty else []


def linearity_stage(ctx: RunContext) -> dict[str, dict[str, Linearity]]:
    """f(θ0 + τ) against f_lin(θ0 + τ) on validation, for each task and non-linearly trained mode."""
    from .analysis.linearity import linearity_gap

    return {mode.name: {t: linearity_gap(ctx.evaluator(method_for_vector(mode)), t) for t in ctx.roles.tasks}
            for mode in run_modes(ctx.cfg) if not mode.linearized}


def single_task_results(ctx: RunContext) -> SingleTask:
    """Accuracy of each single-task model (α = 1), and of θ0 on the tasks and the controls."""
    tasks, names = ctx.roles.tasks, ctx.roles.names
    pre = ctx.evaluator(PRETRAINED)
    splits = {split: {PRETRAINED.name: {t: pre.accuracy(t, split, {}) for t in names}} for split in ("val", "test")}
    for method in editing_methods(run_modes(ctx.cfg)):
        ev = ctx.evaluator(method)
        for split in ("val", "test"):
            splits[split][method.name] = {t: ev.accuracy(t, split, {t: 1.0}) for t in tasks}
    return SingleTask(val=splits["val"], test=splits["test"])


def merge_results(ctx: RunContext, name: str, grid: list[dict], alphas: list[float]) -> dict[str, MergeResult]:
    """One merge method, chosen on validation, for every evaluation method of the run."""
    single: SingleTask = ctx.results["single_task"]
    modes = run_modes(ctx.cfg)
    methods = editing_methods(modes)
    return select_merge({m: ctx.evaluator(m) for m in methods}, {mode: [ctx.vector(t, mode) for t in ctx.roles.tasks] for mode in modes},
                        MERGE_METHODS.get(name), grid, alphas, ctx.roles.tasks, {"val": single.val, "test": single.test})


def negation_stage(ctx: RunContext) -> dict[str, dict[str, NegationTarget]]:
    single: SingleTask = ctx.results["single_task"]
    roles, alphas = ctx.roles, ctx.cfg.eval.alphas()
    return {m.name: {t: task_negation(ctx.evaluator(m), t, roles.controls[t], single.val[PRETRAINED.name][roles.controls[t]], alphas,
                                      ctx.cfg.negation.threshold) for t in roles.targets}
            for m in editing_methods(run_modes(ctx.cfg))}


def negation_table(single: SingleTask, per_method: dict[str, dict[str, NegationTarget]], roles: Roles) -> dict[str, NegationResult]:
    """Table 2: θ0's row and each method's mean target and control accuracy over the targets."""
    pre = single.test[PRETRAINED.name]
    rows = {PRETRAINED.name: {t: NegationTarget(alpha=0.0, control_task=roles.controls[t], target=pre[t], control=pre[roles.controls[t]])
                              for t in roles.targets}}
    rows.update(per_method)
    table = {}
    for m, r in rows.items():
        feasible = [t for t in roles.targets if r[t].feasible]
        table[m] = NegationResult(target=_mean(r[t].target for t in feasible) if feasible else None,
                                  control=_mean(r[t].control for t in feasible) if feasible else None, per_task=r,
                                  infeasible=[t for t in roles.targets if not r[t].feasible])
    return table


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def disentanglement_pairs(cfg: RunConfig) -> list[tuple[str, str]]:
    """Task pairs of the ξ heatmaps, in config order: (t0, t1), (t2, t3), ..."""
    tasks = list(cfg.tasks)
    return [(tasks[2 * i], tasks[2 * i + 1]) for i in range(min(cfg.analysis.disentanglement_pairs, len(tasks) // 2))]


DISENTANGLEMENT_SETTINGS = ("disentanglement_min", "disentanglement_max", "disentanglement_step", "disentanglement_examples")


def _disentanglement(ev: Evaluator, task1: str, task2: str, cfg: RunConfig, split: str, progress: bool) -> Disentanglement:
    """ξ on the grid and example count of cfg.analysis."""
    from .analysis import disentanglement_error, disentanglement_grid

    a = cfg.analysis
    grid = disentanglement_grid(a.disentanglement_min, a.disentanglement_max, a.disentanglement_step)
    return disentanglement_error(ev, task1, task2, grid, grid, split, max_examples=a.disentanglement_examples,
                                 seed=cfg.data.seed, progress=progress)


def disentanglement_stage(ctx: RunContext) -> dict[str, dict[str, Disentanglement]]:
    methods = editing_methods(run_modes(ctx.cfg))
    return {f"{t1}+{t2}": {m.name: _disentanglement(ctx.evaluator(m), t1, t2, ctx.cfg, "val", ctx.progress) for m in methods}
            for t1, t2 in disentanglement_pairs(ctx.cfg)}


def disentanglement_of_vectors(cfg: RunConfig, vectors: list[TaskVector], *, posthoc: bool = False, split: str = "val",
                               progress: bool = True, ranks: Ranks | None = None) -> dict[str, Disentanglement]:
    """ξ heatmaps for the task vectors of two tasks, on the config's backbone and data.

    Each mode's vectors are evaluated by the method of that mode (non-linear vectors on f,
    linearized ones on f_lin) and, with `posthoc`, non-linear vectors also on f_lin; each mode
    present must hold one vector for each of the same two tasks. Grid and example count come
    from cfg.analysis. `ranks` share the work (every rank calls this; all get the results).
    Returns {method name: Disentanglement}.
    """
    by_mode: dict[FinetuneMode, dict[str, TaskVector]] = {}
    for vector in vectors:
        if len(vector.tasks) != 1:
            raise TaskvecError(f"disentanglement needs single-task vectors; got one of {list(vector.tasks)}")
        (task,) = vector.tasks
        if task in by_mode.setdefault(vector.mode, {}):
            raise TaskvecError(f"two {vector.mode.name} task vectors for task {task!r}")
        by_mode[vector.mode][task] = vector
    pairs = {mode.name: sorted(group) for mode, group in by_mode.items()}
    for mode, tasks in pairs.items():
        if len(tasks) != 2:
            raise TaskvecError(f"disentanglement needs the vectors of exactly two tasks per mode; {mode} vectors are for {tasks}")
    if len(set(map(tuple, pairs.values()))) > 1:
        raise TaskvecError(f"the modes' vectors are for different tasks: {pairs}")
    methods = [m for m in editing_methods(list(by_mode)) if posthoc or not m.post_hoc]
    if posthoc and not any(m.post_hoc for m in methods):
        raise TaskvecError("--posthoc needs non-linear task vectors")
    tasks = list(dict.fromkeys(v.tasks[0] for v in vectors))  # α1 is the first vector's task
    backbone = cfg.build_backbone()
    prepared = prepare_tasks(backbone, tasks, cfg)
    heads = {t: build_head(backbone, prepared[t], cfg) for t in tasks}
    sets = {(t, split): prepared[t].sets[split] for t in tasks}
    shared: dict = {}
    results = {}
    for method in methods:
        ev = Evaluator(backbone, heads, sets, by_mode[method.vectors], method, chunk=cfg.eval.chunk, device=device_for(cfg.device),
                       pretrained_cache=shared, ranks=ranks)
        results[method.name] = _disentanglement(ev, tasks[0], tasks[1], cfg, split, progress)
    return results


def _ntk_samples(prepared: PreparedTask, n: int, seed: int) -> Batch:
    train = prepared.sets["train"]
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return {k: v[index] for k, v in train.inputs.items()}


def ntk_results(backbone: Backbone, heads: dict, prepared: dict[str, PreparedTask], train_task: str, control: str, cfg: RunConfig,
                random_init: bool = True, progress: bool = False, ranks: Ranks | None = None) -> NtkResult:
    """NTK eigenfunction localization (Fig. 6) of the given model and (if `random_init`) a randomly
    initialized one of the same architecture, each with a head of the training task built on its
    own features. `ranks` share the Gram matrices' parameter groups (every rank calls this)."""
    from .analysis.ntk import ntk_localization
    from .models.heads import Classifier

    a = cfg.analysis
    batch_t = _ntk_samples(prepared[train_task], a.ntk_examples, cfg.data.seed)
    batch_c = _ntk_samples(prepared[control], a.ntk_examples, cfg.data.seed)
    models = {"pre-trained" if cfg.init == "pretrained" else "random init": Classifier(backbone, heads[train_task])}
    if random_init and cfg.init == "pretrained":
        torch.manual_seed(cfg.data.seed)
        random_backbone = cfg.build_backbone(init="random")
        models["random init"] = Classifier(random_backbone, build_head(random_backbone, prepared[train_task], cfg))
    return NtkResult(train_task=train_task, control_task=control,
                     models={label: ntk_localization(model, batch_t, batch_c, top_k=a.ntk_eigenfunctions, chunk=cfg.eval.chunk // 8 or 1,
                                                     progress=progress, ranks=ranks)
                             for label, model in models.items()})


def ntk_tasks(cfg: RunConfig) -> tuple[str, str]:
    """The NTK's training task (the first task) and control (its negation control)."""
    roles = Roles.of(cfg)
    train = roles.tasks[0]
    return train, roles.controls.get(train) or roles.tasks[1]


def ntk_stage(ctx: RunContext) -> NtkResult:
    train, control = ntk_tasks(ctx.cfg)
    return ntk_results(ctx.backbone, {train: ctx.head(train)}, {n: ctx.prepared(n) for n in (train, control)}, train, control, ctx.cfg,
                       progress=ctx.progress, ranks=ctx.ranks)


def random_init_config(cfg: RunConfig) -> RunConfig:
    """Table 3's run: the same benchmark from a randomly initialized backbone, task arithmetic
    only, no analyses."""
    return dataclasses.replace(cfg, name=f"{cfg.name}-random-init", init="random",
                               merge=dataclasses.replace(cfg.merge, methods=(TASK_ARITHMETIC.name,), grids={}),
                               analysis=dataclasses.replace(cfg.analysis, disentanglement=False, ntk=False, random_init=False))


def random_init_stage(ctx: RunContext) -> RandomInitResult:
    results = run_graph(random_init_config(ctx.cfg), ctx.dir.nested("random_init"), ctx.log, ctx.progress)
    if results is None:  # a rank other than 0: it evaluated its share; rank 0 holds and writes the results
        return None
    addition = results.merge[TASK_ARITHMETIC.name]
    editing = [m for m in editing_methods(run_modes(ctx.cfg)) if not m.post_hoc]  # Table 3: each mode on its own model
    return RandomInitResult(
        run_dir="random_init",
        heads=describe_heads(ctx.backbone, random_init_config(ctx.cfg)),
        single_task={m.name: results.mean_single(m) for m in [PRETRAINED, *editing]},
        multi_task={m.name: addition[m.name].absolute for m in editing},
        alpha={m.name: addition[m.name].alpha for m in editing},
    )


def assemble_results(ctx: RunContext) -> RunResults:
    """The typed results of every stage, as results.json holds them."""
    r, cfg = ctx.results, ctx.cfg
    single: SingleTask = r["single_task"]
    cost = {mode.name: {task: _finetune_cost(ctx.dir.vector(task, mode)) for task in ctx.roles.tasks} for mode in run_modes(cfg)}
    return RunResults(
        config=to_dict(cfg),
        tasks=list(ctx.roles.tasks),
        single_task=single,
        merge={name: r[f"merge/{name}"] for name in cfg.merge.methods},
        negation=negation_table(single, r["negation"], ctx.roles),
        disentanglement=r.get("disentanglement"),
        ntk=r.get("ntk"),
        random_init=r.get("random_init"),
        seconds=round(time.perf_counter() - ctx.started, 1),
        timing=Timing(
            finetune={f"{task}.{mode.name}": cost[mode.name][task].seconds for mode in run_modes(cfg) for task in ctx.roles.tasks},
            stages={k: s for k, s in ctx.stage_seconds.items() if not k.startswith(FINETUNE) and k not in (HEADS, REPORT)},
        ),
        cost=cost,
        linearity=r.get(LINEARITY),
    )


def _finetune_cost(path: Path) -> FinetuneCost:
    """The cost a fine-tune recorded in its vector's metadata (vectors of older releases: seconds only)."""
    info = check_tensors(path).get("info", {})
    info = info if isinstance(info, dict) else {}
    if isinstance(info.get("cost"), dict):
        return from_data(FinetuneCost, info["cost"], f"{path} info.cost")
    return FinetuneCost(seconds=info.get("seconds"))


def report_stage(ctx: RunContext) -> list[str]:
    """results.json, report.md and the figures, drawn from the results of every other stage."""
    from .report import write_report

    results = assemble_results(ctx)
    results.save(ctx.dir.results)
    write_report(results, ctx.dir.root)
    ctx.log(f"wrote {ctx.dir.results} and {ctx.dir.report}")
    return [ctx.dir.results.name, ctx.dir.report.name]


# ----- the graph ---------------------------------------------------------------------------------

HEADS, FINETUNE, LINEARITY, REPORT = "heads", "finetune/", "linearity", "report"


def finetune_key(task: str, mode: FinetuneMode) -> str:
    return f"{FINETUNE}{task}.{mode.name}"


def _train_detail(cfg: RunConfig, roles: Roles, task: str, mode: FinetuneMode) -> str:
    train = cfg.train[mode]
    if task in cfg.train.steps:
        length = f"{cfg.train.steps[task]} steps"
    elif task in cfg.train.epochs:
        length = f"{cfg.train.epochs[task]:g} epochs = {cfg.train.epochs[task]:g} × ceil(n_train / {train.batch_size}) steps"
    else:
        length = f"{train.steps} steps"
    return (f"{length}, batch {train.batch_size}, lr {train.lr:g}, warm-up {train.warmup_steps}, {train.precision}"
            + (f", {train.grad_accumulation} micro-batches" if train.grad_accumulation > 1 else "")
            + (f"; {format_settings(train.settings)}" if train.settings else "")
            + (f"; penalty on the inputs of {', '.join(penalty_tasks(roles, task, mode))}" if mode.penalty else ""))


def _build_heads(ctx: RunContext) -> None:
    with main_first():  # rank 0 builds and saves the heads, the others read them
        for name in ctx.roles.names:
            ctx.head(name)


def build_graph(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """Every stage of `taskvec run` for this config, in order, each with its outputs in
    `run_dir`, the settings that invalidate it, what it needs and how to compute it."""
    if cfg.seeds is not None:
        from .protocol import seeds_graph

        return seeds_graph(cfg, run_dir)
    roles, modes = Roles.of(cfg), run_modes(cfg)
    methods = editing_methods(modes)
    labels = ", ".join(m.label for m in methods)
    alphas = cfg.eval.alphas()
    grid_text = f"α ∈ [{cfg.eval.alpha_start:g}, {cfg.eval.alpha_stop:g}] step {cfg.eval.alpha_step:g}"
    graph = Graph()
    graph.add(Stage(HEADS, f"heads ({cfg.head.kind}) for {len(roles.names)} tasks: {', '.join(roles.names)}",
                    [run_dir.head(n) for n in roles.names], _build_heads, lambda n: n.model + n.head_data(roles.names),
                    detail="frozen; cached per model and task" + (f" in {cfg.data.cache_dir}" if cfg.data.cache_dir else ""),
                    every_rank=True))
    for mode in modes:
        for task in roles.tasks:
            source = cfg.checkpoint(task, mode)
            if source is not None:
                graph.add(Stage(finetune_key(task, mode), f"task vector of {task} ({mode.name}) from checkpoint {source}",
                                [run_dir.vector(task, mode)], lambda ctx, t=task, m=mode, s=source: ctx.import_vector(t, m, s),
                                lambda n, s=source: n.model + n.checkpoint(s), settings={"checkpoint": source},
                                detail="τ = θ_ft − θ0 against the base (taskvec.checkpoints)", after=(HEADS,)))
                continue
            graph.add(Stage(finetune_key(task, mode), f"fine-tune {task} ({mode.name})", [run_dir.vector(task, mode)],
                            lambda ctx, t=task, m=mode: ctx.finetune(t, m),
                            lambda n, t=task, m=mode: n.model + n.device + n.data([t, *penalty_tasks(roles, t, m)]),
                            detail=_train_detail(cfg, roles, task, mode), every_rank=True, after=(HEADS,)))
    finetunes = tuple(k for k in graph.keys() if k.startswith(FINETUNE))
    every = lambda n: n.model + n.device + n.data(roles.names)  # noqa: E731
    graph.add(Stage("single_task", f"single-task accuracy ({PRETRAINED.label}, {labels}; val and test)", [run_dir.stage("single_task")],
                    single_task_results, every, result_type=SingleTask, after=finetunes, every_rank=True))
    if any(not m.linearized for m in modes):
        graph.add(Stage(LINEARITY, "linearity of non-linear fine-tuning: f(θ0 + τ) vs f_lin(θ0 + τ) on validation",
                        [run_dir.stage(LINEARITY)], linearity_stage, lambda n: n.model + n.device + n.data(roles.tasks),
                        result_type=dict[str, dict[str, Linearity]], after=("single_task",), every_rank=True,
                        detail=f"for {', '.join(m.label for m in modes if not m.linearized)}: both accuracies and ‖f − f_lin‖ / ‖f − f(θ0)‖ of the logits"))
    for name in cfg.merge.methods:
        method = MERGE_METHODS.get(name)
        grid, merge_alphas = cfg.merge.settings_grid(method), cfg.merge.alphas(method, alphas)
        title = ("task addition" if method is TASK_ARITHMETIC else f"merge: {method.label}") + f" of {len(roles.tasks)} tasks"
        graph.add(Stage(f"merge/{name}", title, [run_dir.stage(f"merge/{name}")],
                        lambda ctx, n=name, g=grid, a=merge_alphas: merge_results(ctx, n, g, a), lambda n: n.model + n.device + n.data(roles.tasks),
                        settings={"grid": grid, "alphas": merge_alphas}, result_type=dict[str, MergeResult], after=("single_task",), every_rank=True,
                        detail=f"{len(grid)} setting(s) × α ∈ [{min(merge_alphas):g}, {max(merge_alphas):g}] ({len(merge_alphas)} values), "
                               f"chosen on validation (mean normalized accuracy), reported on test; for {labels}"))
    graph.add(Stage("negation", f"task negation of {len(roles.targets)} targets (controls: {', '.join(sorted(set(roles.controls.values())))}), {grid_text}",
                    [run_dir.stage("negation")], negation_stage, lambda n: n.model + n.device + n.data(roles.targets + list(roles.controls.values())),
                    result_type=dict[str, dict[str, NegationTarget]], after=("single_task",), every_rank=True,
                    detail=f"control validation accuracy ≥ {cfg.negation.threshold:g} × pre-trained"))
    a = cfg.analysis
    if a.disentanglement:
        pairs = disentanglement_pairs(cfg)
        graph.add(Stage("disentanglement", f"analysis: weight disentanglement ξ for {', '.join(f'{x}+{y}' for x, y in pairs)}",
                        [run_dir.stage("disentanglement")], disentanglement_stage,
                        lambda n: n.model + n.device + n.data([t for pair in pairs for t in pair]),
                        settings={"pairs": [list(p) for p in pairs], **{k: getattr(a, k) for k in DISENTANGLEMENT_SETTINGS}},
                        result_type=dict[str, dict[str, Disentanglement]], after=finetunes, every_rank=True,
                        detail=f"α ∈ [{a.disentanglement_min:g}, {a.disentanglement_max:g}] step {a.disentanglement_step:g}, "
                               f"{a.disentanglement_examples} examples per task"))
    if a.ntk:
        train, control = ntk_tasks(cfg)
        graph.add(Stage("ntk", f"analysis: NTK eigenfunction localization ({train} vs {control})", [run_dir.stage("ntk")], ntk_stage,
                        lambda n: n.model + n.device + n.data([train, control]),
                        settings={"train_task": train, "control_task": control, "examples": a.ntk_examples, "eigenfunctions": a.ntk_eigenfunctions},
                        result_type=NtkResult, after=(HEADS,), every_rank=True,
                        detail=f"{a.ntk_examples} examples per task, {a.ntk_eigenfunctions} eigenfunctions, pre-trained and random init"))
    if a.random_init and cfg.init == "pretrained":
        graph.add(Stage("random_init", "analysis: task arithmetic from random initialization (Table 3)", [run_dir.stage("random_init")],
                        random_init_stage, lambda n: n.device + n.data(roles.tasks), result_type=RandomInitResult, every_rank=True,
                        detail=f"the run again from a random θ0 in {run_dir.nested('random_init').root.name}/: every mode, task arithmetic"))
    upstream = [p for stage in graph for p in stage.outputs]
    # The report depends on which stages there are (settings) and on their outputs (newer than them).
    graph.add(Stage(REPORT, "report: results.json, report.md and figures", [run_dir.stage(REPORT), run_dir.results, run_dir.report],
                    report_stage, settings=graph.keys(), result_type=list[str], after=tuple(graph.keys()),
                    current=lambda: newer_than(run_dir.stage(REPORT), upstream)))
    return graph


def newer_than(path: Path, inputs: list[Path]) -> bool:
    mtime = path.stat().st_mtime_ns
    return all(not p.exists() or p.stat().st_mtime_ns <= mtime for p in inputs)


# ----- running it --------------------------------------------------------------------------------

def run_pipeline(cfg: RunConfig, out: str | Path, log: Log = print, progress: bool = True,
                 shard: tuple[int, int] | None = None) -> "RunResults | SeedResults | None":
    """Every stage of the benchmark; returns the results written to out/results.json.

    Under torchrun every rank fine-tunes together (DistributedDataParallel over the global
    batch) and evaluates together (each rank its share of every evaluation set, counts summed;
    results equal one process's), and rank 0 alone writes. `shard=(i, n)` fine-tunes only the i-th of n
    shares of the (task, mode) units and stops: several processes (one per GPU) can fill one run
    directory, and a final unsharded run then skips their vectors and evaluates. Returns None
    for a shard and on ranks other than 0.
    """
    with session(cfg):
        return run_graph(cfg, RunDir(out), log, progress, shard)


@contextmanager
def session(cfg: RunConfig) -> Iterator[None]:
    """A command's work in this process: joined to torchrun's process group when launched by it
    (fine-tunes and evaluations then use every rank), with the config's thread count."""
    init_from_env()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        yield
    finally:
        cleanup()


def run_graph(cfg: RunConfig, run_dir: RunDir, log: Log, progress: bool, shard: tuple[int, int] | None = None) -> "RunResults | SeedResults | None":
    """Execute the run's stage graph (of every seed, for a multi-seed config) in `run_dir`."""
    graph = build_graph(cfg, run_dir)
    select = lambda s: True  # noqa: E731
    if shard is not None:
        units = set(shard_units([s.key for s in graph if s.stored_key.startswith(FINETUNE)], *shard))
        select = lambda s: s.key in units  # noqa: E731
    if cfg.seeds is not None:
        from .protocol import run_nested, seed_runs
        from .seeds import SeedResults

        log(f"{len(cfg.seeds)} seeds: {cfg.seeds}, each in {run_dir.root}/seed-<s>/")
        run_nested(graph, cfg, run_dir, seed_runs(cfg, run_dir), log, progress, select, sharded=shard is not None)
        return SeedResults.load(run_dir.results) if is_main() and shard is None else None
    ctx = RunContext(cfg, run_dir, log, progress)
    with run_dir.locked(shared=shard is not None):
        run_dir.check_config(cfg)
        ctx.log(f"backbone {cfg.backbone} ({cfg.init}); tasks {ctx.roles.tasks}; negation controls {ctx.roles.controls}")
        execute(graph, ctx, main=is_main(), select=select)
    if shard is not None:
        ctx.log(f"fine-tuned shard {shard[0]}/{shard[1]}: {len(units)} (task, mode) units")
        return None
    return RunResults.load(run_dir.results) if is_main() else None
