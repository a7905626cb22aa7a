"""The report's PNG figures (matplotlib, Agg backend, written atomically): single-task
accuracy, the addition and negation sweeps, the non-linear advantage, the merge methods and
the fine-tuning modes' accuracy against cost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402
from ..kinds import FINETUNE_MODES, NONLINEAR, PRETRAINED, method_for_vector  # noqa: E402
from ..merging import MERGE_METHODS, TASK_ARITHMETIC  # noqa: E402
from ..results import RunResults  # noqa: E402
from .cells import _editing, _mean_cost, _methods  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def _legend_outside(ax) -> None:
    """Right of the axes, so that it never hides a bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _bars(ax, groups: list[str], series: list[tuple[str, str, list[float]]]) -> None:
    """Grouped bars: one group per x label, one bar per (label, colour, values) series."""
    width = 0.8 / max(1, len(series))
    for i, (label, color, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, values, width, label=label, color=color)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(axis="y", alpha=0.3)


def plot_single_task(results: RunResults, path: Path) -> None:
    tasks, single = results.tasks, results.single_task.test
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.4))
    _bars(ax, tasks, [(m.label, m.color, [100 * single[m.name][t] for t in tasks]) for m in _methods(single)])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Single-task accuracy")
    _legend_outside(ax)
    _save(fig, path)


def plot_addition_curves(results: RunResults, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for m in _editing(results):
        add = results.merge.get(TASK_ARITHMETIC.name, {}).get(m.name)
        if add is None:
            continue
        ax.plot([p.alpha for p in add.curve], [100 * p.val_normalized for p in add.curve], marker="o", ms=3, label=m.label, color=m.color)
        ax.axvline(add.alpha, color=m.color, ls=":", lw=1)
    ax.set_xlabel("α (θ0 + α Σ τ_t)")
    ax.set_ylabel("mean normalized val. accuracy (%)")
    ax.set_title("Task addition: α sweep (dotted: chosen α)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_negation_curves(results: RunResults, path: Path) -> None:
    methods = [m for m in _editing(results) if m.name in results.negation]
    targets = list(results.negation[methods[0].name].per_task)
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(methods) :]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, methods):
        for t in targets:
            entry = results.negation[m.name].per_task[t]
            alphas = [p.alpha for p in entry.curve]
            (line,) = ax.plot(alphas, [100 * p.target_val for p in entry.curve], label=f"{t} (target)")
            ax.plot(alphas, [100 * p.control_val for p in entry.curve], ls="--", color=line.get_color(), alpha=0.6)
        ax.set_title(f"{m.label}: θ0 − α τ")
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("val. accuracy (%)\nsolid: target, dashed: control")
    axes.flat[len(methods) - 1].legend(fontsize=7)
    _save(fig, path)


def plot_nonlinear_advantage(results: RunResults, path: Path) -> None:
    """Fig. 2: single-task accuracy gained over θ0, per task, for each way of fine-tuning."""
    tasks, single = results.tasks, results.single_task.test
    pre = single[PRETRAINED.name]
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(tasks), 3.4))
    _bars(ax, tasks, [(m.label, m.color, [100 * (single[m.name][t] - pre[t]) for t in tasks]) for m in _editing(results)])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("test accuracy − pre-trained (points)")
    ax.set_title("Non-linear advantage: single-task gains")
    _legend_outside(ax)
    _save(fig, path)


def plot_merge_methods(results: RunResults, path: Path) -> None:
    """Merge method × evaluation method: absolute and normalized test accuracy, grouped bars;
    the dashed line is the pre-trained model's absolute accuracy."""
    merges = [MERGE_METHODS.get(name) for name in results.merge]
    methods = _editing(results)
    fig, axes = plt.subplots(2, 1, figsize=(2.0 + 1.05 * len(merges) * max(1, len(methods)) / 3, 6.0), sharex=True)
    for ax, what in zip(axes, ("absolute", "normalized")):
        series = [
            (
                m.label,
                m.color,
                [100 * getattr(results.merge[g.name][m.name], what) if m.name in results.merge[g.name] else 0.0 for g in merges],
            )
            for m in methods
        ]
        _bars(ax, [g.label for g in merges], series)
        ax.set_ylabel(f"{what} test accuracy (%)")
    axes[0].axhline(100 * results.pretrained_addition().accuracy, color=PRETRAINED.color, ls="--", lw=1, label=PRETRAINED.label)
    axes[0].set_title(f"Merging {len(results.tasks)} task vectors: settings and α chosen on validation")
    axes[1].tick_params(axis="x", labelrotation=30)
    _legend_outside(axes[0])
    _save(fig, path)


def plot_modes_cost(results: RunResults, path: Path) -> None:
    """Each mode's task-arithmetic addition (filled) and single-task (hollow) test accuracy against
    its median step time ÷ non-linear FT's."""
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    reference = _mean_cost(results, NONLINEAR, "step_ms")
    for mode in FINETUNE_MODES:
        step = _mean_cost(results, mode, "step_ms")
        method = method_for_vector(mode)
        if step is None or method.name not in addition:
            continue
        x = step / reference if reference else step
        ax.scatter([x], [100 * addition[method.name].absolute], color=mode.color, label=mode.label, zorder=3)
        ax.scatter([x], [100 * results.mean_single(method)], facecolors="none", edgecolors=mode.color, zorder=3)
    ax.set_xlabel("median step time ÷ non-linear FT" if reference else "median step time (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fine-tuning modes: addition (filled), single-task (hollow)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)
