"""The benchmark's last stage: every stage's typed result gathered into results.json, and the
report (report.md, figures) drawn from it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..io import check_tensors
from ..results import FinetuneCost, RunResults, Timing
from ..typed import from_data
from .context import RunContext
from .evaluations import negation_table
from .keys import DISENTANGLEMENT, FINETUNE, HEADS, LINEARITY, NEGATION, NTK, RANDOM_INIT, RANDOM_INIT_RUN, REPORT, SINGLE_TASK, merge_key


def _finetune_cost(path: Path) -> FinetuneCost:
    """The cost a fine-tune recorded in its vector's metadata (vectors of older releases: seconds
    only), with its effective penalty, if any."""
    info = check_tensors(path).get("info", {})
    info = info if isinstance(info, dict) else {}
    penalty = info.get("penalty")
    described = penalty.get("describe") if isinstance(penalty, dict) else None
    described = described if isinstance(described, str) else None
    if isinstance(info.get("cost"), dict):
        return dataclasses.replace(from_data(FinetuneCost, info["cost"], f"{path} info.cost"), penalty=described)
    return FinetuneCost(seconds=info.get("seconds"), penalty=described)


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
    cost = {mode.name: {task: _finetune_cost(ctx.dir.vector(task, mode)) for task in roles.tasks} for mode in cfg.modes}
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
