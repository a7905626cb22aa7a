"""Plain task addition, θ0 + α Σ_t τ_t over an evaluator's own task vectors: the reference the
benchmark's task-arithmetic merge (`edits.select_merge` with TASK_ARITHMETIC, which merges the
vectors into one direction first) is checked against. Only the tests use it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from taskvec.edits import best_point, sweep
from taskvec.results import MergeResult, TaskScore


def task_addition(evaluator, tasks: Sequence[str], finetuned: Mapping[str, Mapping[str, float]], alphas: Sequence[float]) -> MergeResult:
    """α chosen on validation by mean normalized accuracy (`finetuned[split][task]`: the same
    method's single-task accuracy), reported on test."""
    curve = sweep(evaluator, lambda a: {t: a for t in tasks}, tasks, finetuned["val"], alphas)
    alpha = best_point(curve).alpha
    test = evaluator.accuracies(list(tasks), "test", {t: alpha for t in tasks})
    per_task = {t: TaskScore(test[t], test[t] / max(finetuned["test"][t], 1e-12)) for t in tasks}
    return MergeResult(
        alpha=alpha,
        absolute=float(np.mean(list(test.values()))),
        normalized=float(np.mean([s.normalized for s in per_task.values()])),
        per_task=per_task,
        settings={},
        seconds=0.0,
        curve=curve,
    )
