"""The benchmark's last stage: every stage's typed result gathered into results.json, and the
report (report.md, figures) drawn from it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..io import check_tensors
from ..results import FinetuneCost, MaskStats, RunResults, Timing
from ..typed import from_data
from .context import RunContext
from .evaluations import negation_table
from .keys import DISENTANGLEMENT, FINETUNE, HEADS, LINEARITY, NEGATION, NTK, RANDOM_INIT, RANDOM_INIT_RUN, REPORT, SINGLE_TASK, merge_key


def _vector_info(path: Path) -> dict:
    """The info a fine-tune recorded in its vector's metadata."""
    info = check_tensors(path).get("info", {})
    return info if isinstance(info, dict) else {}


def _finetune_cost(path: Path, info: dict) -> FinetuneCost:
    """The fine-tune's recorded cost (vectors of older releases: seconds only), with its effective
    penalty, if any."""
    penalty = info.get("penalty")
    described = penalty.get("describe") if isinstance(penalty, dict) else None
    described = described if isinstance(described, str) else None
    if isinstance(info.get("cost"), dict):
        return dataclasses.replace(from_data(FinetuneCost, info["cost"], f"{path} info.cost"), penalty=described)
    return FinetuneCost(seconds=info.get("seconds"), penalty=described)


def _mask_stats(path: Path, info: dict) -> MaskStats | None:
    """How a sparse fine-tune chose its entries, if it recorded it (TaLoS)."""
    return from_data(MaskStats, info["mask"], f"{path} info.mask") if isinstance(info.get("mask"), dict) else None


def _total_seconds(results: RunResults) -> float:
    """What a finished run took, as recorded: its fine-tunes and its stages."""
    known = [s for s in [*results.timing.finetune.values(), *results.timing.stages.values()] if s is not None]
    return round(sum(known), 1)


def stage_timing(ctx: RunContext) -> dict[str, float | None]:
    """Seconds per evaluation and analysis stage; the random-init sub-run's stages count as one,
    `random_init`, holding the time its run recorded (fine-tunes included)."""
    timing: dict[str, float | None] = {}
    for key, seconds in ctx.stage_seconds.items():
        if key.startswith(FINETUNE) or key in (HEADS, REPORT.name):
            continue
        if key == RANDOM_INIT.name or key.startswith(f"{RANDOM_INIT_RUN}/"):
            key, seconds = RANDOM_INIT.name, None  # its place in the table; its time below
        timing[key] = seconds
    sub_run = ctx.dir.nested(RANDOM_INIT_RUN).results
    if RANDOM_INIT.name in timing and sub_run.exists():
        timing[RANDOM_INIT.name] = _total_seconds(RunResults.load(sub_run))
    return timing


def assemble_results(ctx: RunContext) -> RunResults:
    """The typed results of every stage, as results.json holds them."""
    cfg, roles = ctx.cfg, ctx.roles
    single = ctx.result(SINGLE_TASK)
    vectors = {(mode.name, task): ctx.dir.vector(task, mode) for mode in cfg.modes for task in roles.tasks}
    infos = {key: _vector_info(path) for key, path in vectors.items()}
    cost = {
        mode.name: {task: _finetune_cost(vectors[mode.name, task], infos[mode.name, task]) for task in roles.tasks} for mode in cfg.modes
    }
    masks: dict[str, dict[str, MaskStats]] = {}
    for (mode_name, task), path in vectors.items():
        stats = _mask_stats(path, infos[mode_name, task])
        if stats is not None:
            masks.setdefault(mode_name, {})[task] = stats
    return RunResults(
        config=cfg,
        tasks=list(roles.tasks),
        single_task=single,
        merge={name: ctx.result(merge_key(method)) for name, method in zip(cfg.merge.methods, cfg.merge.kinds)},
        negation=negation_table(single, ctx.result(NEGATION), roles),
        disentanglement=ctx.result(DISENTANGLEMENT) if ctx.has_result(DISENTANGLEMENT) else None,
        ntk=ctx.result(NTK) if ctx.has_result(NTK) else None,
        random_init=ctx.result(RANDOM_INIT) if ctx.has_result(RANDOM_INIT) else None,
        seconds=round(time.perf_counter() - ctx.started, 1),
        timing=Timing(
            finetune={f"{task}.{mode.name}": cost[mode.name][task].seconds for mode in cfg.modes for task in roles.tasks},
            stages=stage_timing(ctx),
        ),
        cost=cost,
        masks=masks,
        linearity=ctx.result(LINEARITY) if ctx.has_result(LINEARITY) else None,
    )


def report_stage(ctx: RunContext) -> list[str]:
    """results.json, report.md and the figures, drawn from the results of every other stage."""
    from ..report import write_report

    results = assemble_results(ctx)
    results.save(ctx.dir.results)
    write_report(results, ctx.dir.root)
    ctx.log(f"wrote {ctx.dir.results} and {ctx.dir.report}")
    return [ctx.dir.results.name, ctx.dir.report.name]
