"""The paper's analyses on a run's setup: weight disentanglement ξ (Fig. 3) and NTK
eigenfunction localization (Fig. 6), as benchmark stages and for the stand-alone commands
(`taskvec disentanglement`, `taskvec ntk`), and the random-init ablation's config and summary
(Table 3)."""

from __future__ import annotations

import dataclasses

import torch

from ..config import RunConfig
from ..distributed import Ranks, device_for
from ..errors import TaskvecError
from ..evaluate import Evaluator
from ..kinds import PRETRAINED, FinetuneMode, editing_methods
from ..merging import TASK_ARITHMETIC
from ..models import Backbone, Batch
from ..models.heads import ClassificationHead
from ..models.registry import Init
from ..results import Disentanglement, NtkResult, RandomInitResult, RunResults
from ..task_vector import TaskVector
from .context import Roles, RunContext
from .setup import PreparedTask, Setup, build_head, describe_heads

# The analysis settings a ξ stage records: a change redoes it (and nothing else).
DISENTANGLEMENT_SETTINGS = ("disentanglement_min", "disentanglement_max", "disentanglement_step", "disentanglement_examples")


# ----- weight disentanglement ---------------------------------------------------------------------


def disentanglement_pairs(cfg: RunConfig) -> list[tuple[str, str]]:
    """Task pairs of the ξ heatmaps, in config order: (t0, t1), (t2, t3), ..."""
    tasks = list(cfg.tasks)
    return [(tasks[2 * i], tasks[2 * i + 1]) for i in range(min(cfg.analysis.disentanglement_pairs, len(tasks) // 2))]


def _disentanglement(ev: Evaluator, task1: str, task2: str, cfg: RunConfig, split: str, progress: bool) -> Disentanglement:
    """ξ on the grid and example count of cfg.analysis."""
    from ..analysis import disentanglement_error

    grid = cfg.analysis.disentanglement_alphas()
    return disentanglement_error(
        ev, task1, task2, grid, grid, split, max_examples=cfg.analysis.disentanglement_examples, seed=cfg.data.seed, progress=progress
    )


def disentanglement_stage(ctx: RunContext) -> dict[str, dict[str, Disentanglement]]:
    methods = editing_methods(ctx.cfg.modes)
    return {
        f"{t1}+{t2}": {m.name: _disentanglement(ctx.evaluator(m), t1, t2, ctx.cfg, "val", ctx.progress) for m in methods}
        for t1, t2 in disentanglement_pairs(ctx.cfg)
    }


def _vectors_by_mode(vectors: list[TaskVector]) -> dict[FinetuneMode, dict[str, TaskVector]]:
    """Single-task vectors grouped by mode, each mode holding the vectors of the same two tasks."""
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
    return by_mode


def disentanglement_of_vectors(
    cfg: RunConfig,
    vectors: list[TaskVector],
    *,
    posthoc: bool = False,
    split: str = "val",
    progress: bool = True,
    ranks: Ranks | None = None,
) -> dict[str, Disentanglement]:
    """ξ heatmaps for the task vectors of two tasks, on the config's backbone and data.

    Each mode's vectors are evaluated by the method of that mode (non-linear vectors on f,
    linearized ones on f_lin) and, with `posthoc`, non-linear vectors also on f_lin; each mode
    present must hold one vector for each of the same two tasks. Grid and example count come
    from cfg.analysis. `ranks` share the work (every rank calls this; all get the results).
    Returns {method name: Disentanglement}.
    """
    by_mode = _vectors_by_mode(vectors)
    methods = [m for m in editing_methods(list(by_mode)) if posthoc or not m.post_hoc]
    if posthoc and not any(m.post_hoc for m in methods):
        raise TaskvecError("--posthoc needs non-linear task vectors")
    tasks = list(dict.fromkeys(v.tasks[0] for v in vectors))  # α1 is the first vector's task
    setup = Setup(cfg)
    heads, sets = setup.heads(tasks), setup.sets(tasks, split)
    shared: dict = {}
    results = {}
    for method in methods:
        assert method.vectors is not None, "editing methods apply vectors"
        ev = Evaluator(
            setup.backbone,
            heads,
            sets,
            by_mode[method.vectors],
            method,
            chunk=cfg.eval.chunk,
            device=device_for(cfg.device),
            pretrained_cache=shared,
            ranks=ranks,
        )
        results[method.name] = _disentanglement(ev, tasks[0], tasks[1], cfg, split, progress)
    return results


# ----- NTK eigenfunction localization -------------------------------------------------------------


def _ntk_samples(prepared: PreparedTask, n: int, seed: int) -> Batch:
    train = prepared.sets["train"]
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return {k: v[index] for k, v in train.inputs.items()}


def ntk_results(
    backbone: Backbone,
    heads: dict[str, ClassificationHead],
    prepared: dict[str, PreparedTask],
    train_task: str,
    control: str,
    cfg: RunConfig,
    random_init: bool = True,
    progress: bool = False,
    ranks: Ranks | None = None,
) -> NtkResult:
    """NTK eigenfunction localization (Fig. 6) of the given model and (if `random_init`) a randomly
    initialized one of the same architecture, each with a head of the training task built on its
    own features. `ranks` share the Gram matrices' parameter groups (every rank calls this)."""
    from ..analysis.ntk import ntk_localization
    from ..models.heads import Classifier

    a = cfg.analysis
    batch_t = _ntk_samples(prepared[train_task], a.ntk_examples, cfg.data.seed)
    batch_c = _ntk_samples(prepared[control], a.ntk_examples, cfg.data.seed)
    models = {"pre-trained" if cfg.init == Init.PRETRAINED else "random init": Classifier(backbone, heads[train_task])}
    if random_init and cfg.init == Init.PRETRAINED:
        torch.manual_seed(cfg.data.seed)
        random_backbone = cfg.build_backbone(init=Init.RANDOM)
        models["random init"] = Classifier(random_backbone, build_head(random_backbone, prepared[train_task], cfg))
    return NtkResult(
        train_task=train_task,
        control_task=control,
        models={
            label: ntk_localization(
                model, batch_t, batch_c, top_k=a.ntk_eigenfunctions, chunk=cfg.eval.chunk // 8 or 1, progress=progress, ranks=ranks
            )
            for label, model in models.items()
        },
    )


def ntk_tasks(cfg: RunConfig) -> tuple[str, str]:
    """The NTK's training task (the first task) and control (its negation control)."""
    roles = Roles.of(cfg)
    train = roles.tasks[0]
    return train, roles.controls.get(train) or roles.tasks[1]


def ntk_stage(ctx: RunContext) -> NtkResult:
    train, control = ntk_tasks(ctx.cfg)
    return ntk_results(
        ctx.backbone,
        {train: ctx.head(train)},
        {n: ctx.prepared(n) for n in (train, control)},
        train,
        control,
        ctx.cfg,
        progress=ctx.progress,
        ranks=ctx.ranks,
    )


# ----- the random-init ablation (Table 3) ---------------------------------------------------------


def random_init_config(cfg: RunConfig) -> RunConfig:
    """Table 3's run: the same benchmark from a randomly initialized backbone, task arithmetic
    only, no analyses."""
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-random-init",
        init=Init.RANDOM,
        merge=dataclasses.replace(cfg.merge, methods=(TASK_ARITHMETIC.name,), grids={}),
        analysis=dataclasses.replace(cfg.analysis, disentanglement=False, ntk=False, random_init=False),
    )


def random_init_summary(ctx: RunContext, run_name: str) -> RandomInitResult:
    """Table 3's row from the random-init sub-run's results (its own run directory `run_name`)."""
    results = RunResults.load(ctx.dir.nested(run_name).results)
    addition = results.merge[TASK_ARITHMETIC.name]
    editing = [m for m in editing_methods(ctx.cfg.modes) if not m.post_hoc]  # Table 3: each mode on its own model
    return RandomInitResult(
        run_dir=run_name,
        heads=describe_heads(ctx.backbone, random_init_config(ctx.cfg)),
        single_task={m.name: results.mean_single(m) for m in [PRETRAINED, *editing]},
        multi_task={m.name: addition[m.name].absolute for m in editing},
        alpha={m.name: addition[m.name].alpha for m in editing},
    )
