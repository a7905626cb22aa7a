"""The benchmark's evaluation stages: single-task accuracy, the linearity of non-linear
fine-tuning, each merge method, and task negation (the paper's Tables 1 and 2)."""

from __future__ import annotations

from collections.abc import Iterable

from ..edits import select_merge, task_negation
from ..kinds import PRETRAINED, editing_methods, method_for_vector
from ..merging import MergeMethod
from ..results import Linearity, MergeResult, NegationResult, NegationTarget, SingleTask
from .context import Roles, RunContext
from .keys import SINGLE_TASK


def single_task_results(ctx: RunContext) -> SingleTask:
    """Accuracy of each single-task model (α = 1), and of θ0 on the tasks and the controls."""
    tasks, names = ctx.roles.tasks, ctx.roles.names
    pre = ctx.evaluator(PRETRAINED)
    splits = {split: {PRETRAINED.name: {t: pre.accuracy(t, split, {}) for t in names}} for split in ("val", "test")}
    for method in editing_methods(ctx.cfg.modes):
        ev = ctx.evaluator(method)
        for split in ("val", "test"):
            splits[split][method.name] = {t: ev.accuracy(t, split, {t: 1.0}) for t in tasks}
    return SingleTask(val=splits["val"], test=splits["test"])


def linearity_stage(ctx: RunContext) -> dict[str, dict[str, Linearity]]:
    """f(θ0 + τ) against f_lin(θ0 + τ) on validation, for each task and non-linearly trained mode."""
    from ..analysis.linearity import linearity_gap

    return {
        mode.name: {t: linearity_gap(ctx.evaluator(method_for_vector(mode)), t) for t in ctx.roles.tasks}
        for mode in ctx.cfg.modes
        if not mode.linearized
    }


def merge_results(ctx: RunContext, method: MergeMethod, grid: list[dict], alphas: list[float]) -> dict[str, MergeResult]:
    """One merge method, chosen on validation, for every evaluation method of the run."""
    single = ctx.result(SINGLE_TASK)
    modes = ctx.cfg.modes
    return select_merge(
        {m: ctx.evaluator(m) for m in editing_methods(modes)},
        {mode: [ctx.vector(t, mode) for t in ctx.roles.tasks] for mode in modes},
        method,
        grid,
        alphas,
        ctx.roles.tasks,
        {"val": single.val, "test": single.test},
    )


def negation_stage(ctx: RunContext) -> dict[str, dict[str, NegationTarget]]:
    single = ctx.result(SINGLE_TASK)
    roles, alphas = ctx.roles, ctx.cfg.eval.alphas()
    return {
        m.name: {
            t: task_negation(
                ctx.evaluator(m), t, roles.controls[t], single.val[PRETRAINED.name][roles.controls[t]], alphas, ctx.cfg.negation.threshold
            )
            for t in roles.targets
        }
        for m in editing_methods(ctx.cfg.modes)
    }


def negation_table(single: SingleTask, per_method: dict[str, dict[str, NegationTarget]], roles: Roles) -> dict[str, NegationResult]:
    """Table 2: θ0's row and each method's mean target and control accuracy over the targets."""
    pre = single.test[PRETRAINED.name]
    rows = {
        PRETRAINED.name: {
            t: NegationTarget(alpha=0.0, control_task=roles.controls[t], target=pre[t], control=pre[roles.controls[t]])
            for t in roles.targets
        }
    }
    rows.update(per_method)
    table = {}
    for m, r in rows.items():
        feasible = [t for t in roles.targets if r[t].feasible]
        table[m] = NegationResult(
            target=_mean(r[t].target for t in feasible) if feasible else None,
            control=_mean(r[t].control for t in feasible) if feasible else None,
            per_task=r,
            infeasible=[t for t in roles.targets if not r[t].feasible],
        )
    return table


def _mean(values: Iterable[float | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known)
