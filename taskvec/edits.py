"""Task addition, merges and task negation with α chosen on validation data, as in the paper.

Addition: one α for all tasks, chosen to maximize mean normalized validation accuracy, then
reported on test. A merge method is chosen the same way, over its settings grid and its α
grid (plain addition is the task-arithmetic merge). Negation: for each target, the α that minimizes the target's validation
accuracy while the control keeps ≥ threshold × its pre-trained validation accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import TaskvecError
from .evaluate import Evaluator
from .kinds import EvalMethod, FinetuneMode
from .registry import format_settings
from .results import AlphaPoint, MergeResult, NegationPoint, NegationTarget, SearchPoint, TaskScore
from .task_vector import TaskVector

if TYPE_CHECKING:
    from .merging import MergeMethod


def _mean(values) -> float:
    return float(np.mean(list(values)))


Edit = Callable[[float], Mapping[str, float]]  # α -> coefficients of the evaluator's vectors


def _alone(key: str) -> Edit:
    """The edit α -> {key: α}: the evaluator's vector `key` alone, scaled."""
    return lambda a: {key: a}


def sweep(
    evaluator: Evaluator, edit: Edit, tasks: Sequence[str], finetuned_val: Mapping[str, float], alphas: Sequence[float]
) -> list[AlphaPoint]:
    """Validation accuracy of each task under `edit(α)` for every α, normalized by `finetuned_val`
    (each task's single-task accuracy of the same method)."""
    curve = []
    for alpha in alphas:
        val = evaluator.accuracies(list(tasks), "val", edit(alpha))
        curve.append(
            AlphaPoint(
                alpha=alpha,
                val_per_task=val,
                val_absolute=_mean(val.values()),
                val_normalized=_mean(val[t] / max(finetuned_val[t], 1e-12) for t in tasks),
            )
        )
    return curve


def best_point(curve: Sequence[AlphaPoint]) -> AlphaPoint:
    """The highest mean normalized validation accuracy; on a tie, the smaller α."""
    return max(curve, key=lambda point: (point.val_normalized, -point.alpha))


def _on_test(
    evaluator: Evaluator, coeffs: Mapping[str, float], tasks: Sequence[str], finetuned_test: Mapping[str, float]
) -> tuple[float, float, dict[str, TaskScore]]:
    test = evaluator.accuracies(list(tasks), "test", coeffs)
    per_task = {t: TaskScore(test[t], test[t] / max(finetuned_test[t], 1e-12)) for t in tasks}
    return _mean(test.values()), _mean(s.normalized for s in per_task.values()), per_task


@dataclass
class _Candidate:
    """The best merged direction so far for one evaluation method."""

    key: str
    settings: dict[str, Any]
    curve: list[AlphaPoint]
    best: AlphaPoint


def select_merge(
    evaluators: Mapping[EvalMethod, Evaluator],
    vectors: Mapping[FinetuneMode, Sequence[TaskVector]],
    method: MergeMethod,
    grid: Sequence[Mapping[str, Any]],
    alphas: Sequence[float],
    tasks: Sequence[str],
    finetuned: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> dict[str, MergeResult]:
    """Merge the task vectors of each mode with `method` at every setting combination in `grid`,
    sweep θ0 + α·d on validation with every evaluation method that takes that mode's vectors,
    and report each method's best (settings, α) on test.

    One merge per (mode, settings) serves all the methods of that mode (non-linear FT and
    post-hoc linearization share the merged non-linear vector). On f_lin a whole α sweep costs
    one Jacobian-vector product per evaluation set. `finetuned[split][method][task]` holds the
    normalizers. Returns {evaluation method name: MergeResult}.
    """
    seconds = {m: 0.0 for m in evaluators}
    search: dict[EvalMethod, list[SearchPoint]] = {m: [] for m in evaluators}
    best: dict[EvalMethod, _Candidate] = {}
    for settings in grid:
        key = f"{method.name}({format_settings(settings)})"
        for mode, group in vectors.items():
            users = [m for m in evaluators if m.vectors == mode]
            if not users:
                continue
            started = time.perf_counter()
            merged = method(list(group), **settings)
            merge_seconds = time.perf_counter() - started
            for m in users:
                started = time.perf_counter()
                ev = evaluators[m]
                ev.add_vector(key, merged)
                curve = sweep(ev, _alone(key), tasks, finetuned["val"][m.name], alphas)
                point = best_point(curve)
                search[m].append(
                    SearchPoint(
                        settings=dict(settings),
                        alpha=point.alpha,
                        val_normalized=point.val_normalized,
                        merge_seconds=round(merge_seconds, 3),
                    )
                )
                if m not in best or point.val_normalized > best[m].best.val_normalized:
                    if m in best:
                        ev.drop_vector(best[m].key)
                    best[m] = _Candidate(key, dict(settings), curve, point)
                else:
                    ev.drop_vector(key)
                seconds[m] += merge_seconds + time.perf_counter() - started
    results = {}
    for m, chosen in best.items():
        started = time.perf_counter()
        ev = evaluators[m]
        absolute, normalized, per_task = _on_test(ev, {chosen.key: chosen.best.alpha}, tasks, finetuned["test"][m.name])
        ev.drop_vector(chosen.key)
        seconds[m] += time.perf_counter() - started
        results[m.name] = MergeResult(
            alpha=chosen.best.alpha,
            absolute=absolute,
            normalized=normalized,
            per_task=per_task,
            settings=chosen.settings,
            seconds=round(seconds[m], 2),
            curve=chosen.curve,
            search=search[m],
        )
    return results


def task_negation(
    evaluator: Evaluator,
    target: str,
    control: str,
    control_pretrained_val: float,
    alphas: Sequence[float],
    threshold: float = 0.95,
) -> NegationTarget:
    """Sweep θ0 − α τ_target; pick the α minimizing target validation accuracy subject to
    control validation accuracy ≥ threshold × pre-trained control validation accuracy.

    The control is evaluated with its own (pre-trained) head. When no α of the grid meets the
    constraint (possible when the grid does not start at 0) the result says so (α, target and
    control are None) rather than report an α that breaks it. Reported on test.
    """
    if target == control:
        raise TaskvecError(f"negation control must differ from the target ({target!r})")
    curve = []
    for alpha in alphas:
        val = evaluator.accuracies([target, control], "val", {target: -alpha})
        curve.append(NegationPoint(alpha=alpha, target_val=val[target], control_val=val[control]))
    allowed = [p for p in curve if p.control_val >= threshold * control_pretrained_val - 1e-12]
    if not allowed:
        return NegationTarget(alpha=None, control_task=control, target=None, control=None, curve=curve)
    alpha = min(allowed, key=lambda p: (p.target_val, p.alpha)).alpha
    test = evaluator.accuracies([target, control], "test", {target: -alpha})
    return NegationTarget(alpha=alpha, control_task=control, target=test[target], control=test[control], curve=curve)


def negation_control(target: str, tasks: Sequence[str], control: str | None) -> str:
    """The configured control, or when it is the target itself (or unset) the next task in the list."""
    if control is not None and control != target:
        return control
    others = [t for t in tasks if t != target]
    if not others:
        raise TaskvecError("negation needs a control task different from the target")
    if control is None:
        return tasks[(list(tasks).index(target) + 1) % len(tasks)] if target in tasks else others[0]
    return others[0]
