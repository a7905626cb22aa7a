"""The benchmark's stage graph: `build_graph(cfg, run_dir)` declares every stage of one run
(heads, one fine-tune per task and mode, the single-task evaluation, linearity, one stage per
merge method, negation, the analyses, the report), each with its outputs in the run directory,
the settings that invalidate it, what it needs and how to compute it. `taskvec run` executes it
and `taskvec run --dry-run` prints it (taskvec.protocol), so the two cannot drift. The
random-init ablation is the same graph from a random θ0, included as a sub-run.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..distributed import main_first
from ..kinds import PRETRAINED, FinetuneMode, editing_methods
from ..merging import TASK_ARITHMETIC, MergeMethod
from ..models.registry import Init
from ..registry import format_settings
from . import analyses, evaluations, reporting
from .context import Roles, RunContext, SubRun
from .keys import (
    DISENTANGLEMENT,
    FINETUNE,
    HEADS,
    LINEARITY,
    NEGATION,
    NTK,
    RANDOM_INIT,
    RANDOM_INIT_RUN,
    REPORT,
    SINGLE_TASK,
    finetune_key,
    merge_key,
)
from .rundir import RunDir
from .stages import Graph, Stage


def build_graph(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """Every stage of one run of the benchmark for this config, in order."""
    roles = Roles.of(cfg)
    graph = Graph(workspaces=[run_dir.made_for(cfg)])
    graph.add(_heads_stage(cfg, roles, run_dir))
    for mode in cfg.modes:
        for task in roles.tasks:
            graph.add(_finetune_stage(cfg, roles, run_dir, task, mode))
    finetunes = tuple(k for k in graph.keys() if k.startswith(FINETUNE))
    _add_evaluations(graph, cfg, roles, run_dir, finetunes)
    _add_analyses(graph, cfg, run_dir, finetunes)
    upstream = [p for stage in graph for p in stage.outputs]
    # The report depends on which stages there are (settings) and on their outputs (newer than them).
    graph.add(
        Stage.keeping(
            REPORT,
            "report: results.json, report.md and figures",
            [run_dir.stage(REPORT), run_dir.results, run_dir.report],
            reporting.report_stage,
            settings=graph.keys(),
            after=tuple(graph.keys()),
            current=lambda: newer_than(run_dir.stage(REPORT), upstream),
        )
    )
    return graph


def newer_than(path: Path, inputs: list[Path]) -> bool:
    mtime = path.stat().st_mtime_ns
    return all(not p.exists() or p.stat().st_mtime_ns <= mtime for p in inputs)


# ----- heads and fine-tunes -----------------------------------------------------------------------


def _build_heads(ctx: RunContext) -> None:
    with main_first():  # rank 0 builds and saves the heads, the others read them
        for name in ctx.roles.names:
            ctx.head(name)


def _heads_stage(cfg: RunConfig, roles: Roles, run_dir: RunDir) -> Stage:
    return Stage(
        HEADS,
        f"heads ({cfg.head.kind}) for {len(roles.names)} tasks: {', '.join(roles.names)}",
        [run_dir.head(n) for n in roles.names],
        _build_heads,
        lambda n: n.model + n.head_data(roles.names),
        detail="frozen; cached per model and task" + (f" in {cfg.data.cache_dir}" if cfg.data.cache_dir else ""),
        every_rank=True,
    )


def _finetune_stage(cfg: RunConfig, roles: Roles, run_dir: RunDir, task: str, mode: FinetuneMode) -> Stage:
    """A fine-tune of (task, mode), or the vector of a checkpoint made elsewhere ([checkpoints])."""
    source = cfg.checkpoint(task, mode)
    if source is not None:
        return Stage(
            finetune_key(task, mode),
            f"task vector of {task} ({mode.name}) from checkpoint {source}",
            [run_dir.vector(task, mode)],
            lambda ctx: ctx.import_vector(task, mode, source),
            lambda n: n.model + n.checkpoint(source),
            settings={"checkpoint": source},
            detail="τ = θ_ft − θ0 against the base (taskvec.checkpoints)",
            after=(HEADS,),
        )
    return Stage(
        finetune_key(task, mode),
        f"fine-tune {task} ({mode.name})",
        [run_dir.vector(task, mode)],
        lambda ctx: ctx.finetune(task, mode),
        lambda n: n.model + n.device + n.data([task, *roles.penalty_tasks(task, mode)]),
        detail=_train_detail(cfg, roles, task, mode),
        every_rank=True,
        after=(HEADS,),
    )


def _train_detail(cfg: RunConfig, roles: Roles, task: str, mode: FinetuneMode) -> str:
    train = cfg.train[mode]
    if task in cfg.train.steps:
        length = f"{cfg.train.steps[task]} steps"
    elif task in cfg.train.epochs:
        length = f"{cfg.train.epochs[task]:g} epochs = {cfg.train.epochs[task]:g} × ceil(n_train / {train.batch_size}) steps"
    else:
        length = f"{train.steps} steps"
    return (
        f"{length}, batch {train.batch_size}, lr {train.lr:g}, warm-up {train.warmup_steps}, {train.precision}"
        + (f", {train.grad_accumulation} micro-batches" if train.grad_accumulation > 1 else "")
        + (f"; {format_settings(train.settings)}" if train.settings else "")
        + (f"; penalty on the inputs of {_penalized(roles, task, mode)}" if mode.penalty else "")
    )


def _penalized(roles: Roles, task: str, mode: FinetuneMode) -> str:
    """The datasets a penalized fine-tune reads: the other tasks, then the control, if any."""
    control = roles.penalty_control(task, mode)
    others = ", ".join(t for t in roles.penalty_tasks(task, mode) if t != control)
    return others + (f" + control {control}" if control else " (no control configured)")


# ----- evaluations --------------------------------------------------------------------------------


def _add_evaluations(graph: Graph, cfg: RunConfig, roles: Roles, run_dir: RunDir, finetunes: tuple[str, ...]) -> None:
    modes = cfg.modes
    labels = ", ".join(m.label for m in editing_methods(modes))
    graph.add(
        Stage.keeping(
            SINGLE_TASK,
            f"single-task accuracy ({PRETRAINED.label}, {labels}; val and test)",
            [run_dir.stage(SINGLE_TASK)],
            evaluations.single_task_results,
            lambda n: n.model + n.device + n.data(roles.names),
            after=finetunes,
            every_rank=True,
        )
    )
    if any(not m.linearized for m in modes):
        graph.add(
            Stage.keeping(
                LINEARITY,
                "linearity of non-linear fine-tuning: f(θ0 + τ) vs f_lin(θ0 + τ) on validation",
                [run_dir.stage(LINEARITY)],
                evaluations.linearity_stage,
                lambda n: n.model + n.device + n.data(roles.tasks),
                after=(SINGLE_TASK.name,),
                every_rank=True,
                detail=f"for {', '.join(m.label for m in modes if not m.linearized)}: both accuracies and "
                "‖f − f_lin‖ / ‖f − f(θ0)‖ of the logits",
            )
        )
    for method in cfg.merge.kinds:
        graph.add(_merge_stage(cfg, roles, run_dir, method, labels))
    graph.add(
        Stage.keeping(
            NEGATION,
            f"task negation of {len(roles.targets)} targets (controls: {', '.join(sorted(set(roles.controls.values())))}), "
            f"α ∈ [{cfg.eval.alpha_start:g}, {cfg.eval.alpha_stop:g}] step {cfg.eval.alpha_step:g}",
            [run_dir.stage(NEGATION)],
            evaluations.negation_stage,
            lambda n: n.model + n.device + n.data(roles.targets + list(roles.controls.values())),
            after=(SINGLE_TASK.name,),
            every_rank=True,
            detail=f"control validation accuracy ≥ {cfg.negation.threshold:g} × pre-trained",
        )
    )


def _merge_stage(cfg: RunConfig, roles: Roles, run_dir: RunDir, method: MergeMethod, labels: str) -> Stage:
    key = merge_key(method)
    grid, alphas = cfg.merge.settings_grid(method), cfg.merge.alphas(method, cfg.eval.alphas())
    title = ("task addition" if method is TASK_ARITHMETIC else f"merge: {method.label}") + f" of {len(roles.tasks)} tasks"
    return Stage.keeping(
        key,
        title,
        [run_dir.stage(key)],
        lambda ctx: evaluations.merge_results(ctx, method, grid, alphas),
        lambda n: n.model + n.device + n.data(roles.tasks),
        settings={"grid": grid, "alphas": alphas},
        after=(SINGLE_TASK.name,),
        every_rank=True,
        detail=f"{len(grid)} setting(s) × α ∈ [{min(alphas):g}, {max(alphas):g}] ({len(alphas)} values), "
        f"chosen on validation (mean normalized accuracy), reported on test; for {labels}",
    )


# ----- analyses -----------------------------------------------------------------------------------


def _add_analyses(graph: Graph, cfg: RunConfig, run_dir: RunDir, finetunes: tuple[str, ...]) -> None:
    a = cfg.analysis
    if a.disentanglement:
        pairs = analyses.disentanglement_pairs(cfg)
        graph.add(
            Stage.keeping(
                DISENTANGLEMENT,
                f"analysis: weight disentanglement ξ for {', '.join(f'{x}+{y}' for x, y in pairs)}",
                [run_dir.stage(DISENTANGLEMENT)],
                analyses.disentanglement_stage,
                lambda n: n.model + n.device + n.data([t for pair in pairs for t in pair]),
                settings={"pairs": [list(p) for p in pairs], **{k: getattr(a, k) for k in analyses.DISENTANGLEMENT_SETTINGS}},
                after=finetunes,
                every_rank=True,
                detail=f"α ∈ [{a.disentanglement_min:g}, {a.disentanglement_max:g}] step {a.disentanglement_step:g}, "
                f"{a.disentanglement_examples} examples per task",
            )
        )
    if a.ntk:
        train, control = analyses.ntk_tasks(cfg)
        graph.add(
            Stage.keeping(
                NTK,
                f"analysis: NTK eigenfunction localization ({train} vs {control})",
                [run_dir.stage(NTK)],
                analyses.ntk_stage,
                lambda n: n.model + n.device + n.data([train, control]),
                settings={"train_task": train, "control_task": control, "examples": a.ntk_examples, "eigenfunctions": a.ntk_eigenfunctions},
                after=(HEADS,),
                every_rank=True,
                detail=f"{a.ntk_examples} examples per task, {a.ntk_eigenfunctions} eigenfunctions, pre-trained and random init",
            )
        )
    if a.random_init and cfg.init == Init.PRETRAINED:
        _include_random_init(graph, cfg, run_dir)


def _include_random_init(graph: Graph, cfg: RunConfig, run_dir: RunDir) -> None:
    """Table 3: the whole run again from a random θ0 (task arithmetic only) in random_init/, its
    stages included under that prefix, then its summary."""
    run = SubRun(f"{RANDOM_INIT_RUN}/", analyses.random_init_config(cfg), run_dir.nested(RANDOM_INIT_RUN))
    sub = build_graph(run.cfg, run.dir)
    graph.include(sub, run.prefix, lambda parent: parent.context(run))
    nested = tuple(run.prefix + key for key in sub.keys())
    graph.add(
        Stage.keeping(
            RANDOM_INIT,
            "analysis: task arithmetic from random initialization (Table 3)",
            [run_dir.stage(RANDOM_INIT)],
            lambda ctx: analyses.random_init_summary(ctx, RANDOM_INIT_RUN),
            after=nested,
            current=lambda: newer_than(run_dir.stage(RANDOM_INIT), [run.dir.results]),
            detail=f"the run again from a random θ0 in {run.dir.root.name}/: every mode, task arithmetic",
        )
    )
