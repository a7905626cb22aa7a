"""Task addition and task negation with α chosen on validation data, as in the paper.

Addition: one α for all tasks, chosen to maximize mean normalized validation accuracy, then
reported on test. Negation: for each target, the α that minimizes the target's validation
accuracy while the control keeps ≥ threshold × its pre-trained validation accuracy.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import TaskvecError
from .evaluate import Evaluator


def alpha_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.05) -> list[float]:
    """The paper's grid {0, 0.05, …, 1.0} by default, rounded so keys compare exactly."""
    if step <= 0 or stop < start:
        raise TaskvecError(f"bad α grid: start={start}, stop={stop}, step={step}")
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count)]


def _mean(values) -> float:
    return float(np.mean(list(values)))


def task_addition(
    evaluator: Evaluator,
    tasks: Sequence[str],
    finetuned: Mapping[str, Mapping[str, float]],
    alphas: Sequence[float],
) -> dict:
    """Sweep θ0 + α Σ_t τ_t; choose α on validation by mean normalized accuracy.

    `finetuned[split][task]` is the single-task accuracy of the same method (the normalizer).
    Returns the chosen α, absolute and normalized test accuracy, per-task numbers and the curve.
    """
    curve = []
    for alpha in alphas:
        coeffs = {t: alpha for t in tasks}
        val = evaluator.accuracies(list(tasks), "val", coeffs)
        curve.append({
            "alpha": alpha,
            "val_per_task": val,
            "val_absolute": _mean(val.values()),
            "val_normalized": _mean(val[t] / max(finetuned["val"][t], 1e-12) for t in tasks),
        })
    best = max(curve, key=lambda point: (point["val_normalized"], -point["alpha"]))
    alpha = best["alpha"]
    test = evaluator.accuracies(list(tasks), "test", {s: alpha for s in tasks})
    normalized = {t: test[t] / max(finetuned["test"][t], 1e-12) for t in tasks}
    return {
        "alpha": alpha,
        "absolute": _mean(test.values()),
        "normalized": _mean(normalized.values()),
        "per_task": {t: {"accuracy": test[t], "normalized": normalized[t]} for t in tasks},
        "curve": curve,
    }


def task_negation(
    evaluator: Evaluator,
    target: str,
    control: str,
    control_pretrained_val: float,
    alphas: Sequence[float],
    threshold: float = 0.95,
) -> dict:
    """Sweep θ0 − α τ_target; pick the α minimizing target validation accuracy subject to
    control validation accuracy ≥ threshold × pre-trained control validation accuracy.

    The control is evaluated with its own (pre-trained) head; α = 0 always satisfies the
    constraint, so a choice always exists. Reported on test.
    """
    if target == control:
        raise TaskvecError(f"negation control must differ from the target ({target!r})")
    curve = []
    for alpha in alphas:
        val = evaluator.accuracies([target, control], "val", {target: -alpha})
        curve.append({"alpha": alpha, "target_val": val[target], "control_val": val[control]})
    allowed = [p for p in curve if p["control_val"] >= threshold * control_pretrained_val - 1e-12] or [curve[0]]
    best = min(allowed, key=lambda p: (p["target_val"], p["alpha"]))
    alpha = best["alpha"]
    test = evaluator.accuracies([target, control], "test", {target: -alpha})
    return {"alpha": alpha, "control_task": control, "target": test[target], "control": test[control], "curve": curve}


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
