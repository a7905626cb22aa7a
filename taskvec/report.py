"""report.md and PNG figures from a run's typed results: the paper's Tables 1 and 2 in
miniature, the merge-method table, and the analyses. Labels and colours come from the
registries of evaluation and merge methods."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .claims import check_claims, claims_table  # noqa: E402
from .io import atomic_path, write_text  # noqa: E402
from .kinds import EVAL_METHODS, FINETUNE_MODES, NONLINEAR, PRETRAINED, EvalMethod, method_for_vector  # noqa: E402
from .merging import MERGE_METHODS  # noqa: E402
from .merging import TASK_ARITHMETIC  # noqa: E402
from .registry import format_settings  # noqa: E402
from .results import MergeResult, NegationTarget, RunResults  # noqa: E402


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def _legend_outside(ax) -> None:
    """Right of the axes, so that it never hides a bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _methods(names) -> list[EvalMethod]:
    """The evaluation methods among `names`, in registry order."""
    return [m for m in EVAL_METHODS if m.name in names]


def _editing(results: RunResults) -> list[EvalMethod]:
    return [m for m in _methods(results.single_task.test) if m.edits]


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
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, methods):
        for t in targets:
            entry = results.negation[m.name].per_task[t]
            alphas = [p.alpha for p in entry.curve]
            line, = ax.plot(alphas, [100 * p.target_val for p in entry.curve], label=f"{t} (target)")
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
        series = [(m.label, m.color, [100 * getattr(results.merge[g.name][m.name], what) if m.name in results.merge[g.name] else 0.0
                                      for g in merges]) for m in methods]
        _bars(ax, [g.label for g in merges], series)
        ax.set_ylabel(f"{what} test accuracy (%)")
    axes[0].axhline(100 * results.pretrained_addition().accuracy, color=PRETRAINED.color, ls="--", lw=1, label=PRETRAINED.label)
    axes[0].set_title(f"Merging {len(results.tasks)} task vectors: settings and α chosen on validation")
    axes[1].tick_params(axis="x", labelrotation=30)
    _legend_outside(axes[0])
    _save(fig, path)


def _alpha(r: MergeResult) -> str:
    """The chosen α, marked ↑ at the top of its grid and ↓ at a bottom above 0: the best α may lie
    outside the grid."""
    grid = [p.alpha for p in r.curve]
    mark = ""
    if len(grid) > 1 and r.alpha == max(grid):
        mark = " ↑"
    elif len(grid) > 1 and r.alpha == min(grid) > 0:
        mark = " ↓"
    return f"{r.alpha:.2f}{mark}"


def _merge_sections(results: RunResults) -> list[str]:
    """The merge-method table (accuracies) and its details (choices and cost)."""
    methods = _editing(results)
    lines = ["## Merge methods (absolute / normalized)", "",
             "Each merge method combines the task vectors of one kind into a direction d; the model is θ0 + α·d. "
             "Its settings (from a small grid) and α are chosen on validation by mean normalized accuracy, "
             "separately for each evaluation method; test accuracy in %. Non-linear FT and post-hoc linearization "
             "merge the same non-linear vectors (applied to f and f_lin); every other column merges its own mode's "
             "vectors and applies them to the model that mode trains (linearized modes: in the tangent space, on f_lin).", "",
             "| merge method | " + " | ".join(m.label for m in methods) + " |",
             "|---|" + "---|" * len(methods),
             f"| {PRETRAINED.label} | " + " | ".join(pct(results.pretrained_addition().accuracy) + " / –" for _ in methods) + " |"]
    for name, by_method in results.merge.items():
        cells = [f"{pct(r.absolute)} / {pct(r.normalized)}" if (r := by_method.get(m.name)) else "–" for m in methods]
        lines.append(f"| {MERGE_METHODS.get(name).label} | " + " | ".join(cells) + " |")
    lines += ["", "![merge methods](figures/merge_methods.png)", "",
              "Chosen settings and cost (seconds: merging and the validation sweeps of every setting tried, and the test "
              "evaluation, for that evaluation method; a merge of non-linear vectors counts for both methods that use it). "
              "↑ / ↓ mark an α at the top / bottom (above 0) of its grid: an α outside the grid might have scored higher on validation.", "",
              "| merge method | evaluation | α | settings | tried | seconds |", "|---|---|---|---|---|---|"]
    for name, by_method in results.merge.items():
        for m in methods:
            r: MergeResult | None = by_method.get(m.name)
            if r is not None:
                lines.append(f"| {MERGE_METHODS.get(name).label} | {m.label} | {_alpha(r)} | {format_settings(r.settings) or '–'} | "
                             f"{max(1, len(r.search))} | {r.seconds:.1f} |")
    return lines + [""]


def _analysis_sections(results: RunResults, figures: Path) -> list[str]:
    """Markdown (and figures) for the analyses present in results."""
    lines: list[str] = []
    if results.disentanglement:
        from .analysis import plot_disentanglement

        lines += ["## Weight disentanglement (Fig. 3)", "",
                  "ξ(α1, α2): fraction of each task's validation inputs whose prediction changes when the other "
                  "task's vector is added (summed over the two tasks; 0 = disentangled). The box is the α range "
                  "searched by task addition.", "",
                  "| pair | method | mean ξ over the grid | mean ξ inside the box [0, 1]² |", "|---|---|---|---|"]
        for pair, by_method in results.disentanglement.items():
            name = pair.replace("+", "_")
            plot_disentanglement(by_method, figures / f"disentanglement_{name}.png")
            for m in _methods(by_method):
                r = by_method[m.name]
                lines.append(f"| {pair} | {m.label} | {r.mean():.3f} | {r.mean(box=(0.0, 1.0)):.3f} |")
            lines += ["", f"![disentanglement {pair}](figures/disentanglement_{name}.png)", "",
                      "*Darker is more disentangled; the paper finds linearized FT darker than non-linear FT over a wider region.*", ""]
    if results.ntk is not None:
        from .analysis.ntk import plot_ntk_localization

        ntk = results.ntk
        plot_ntk_localization(ntk.models, figures / "ntk_localization.png", ntk.train_task, ntk.control_task)
        lines += ["## NTK eigenfunction localization (Fig. 6)", "",
                  f"Empirical NTK of the model with the `{ntk.train_task}` head on samples of `{ntk.train_task}` "
                  f"(training task) and `{ntk.control_task}` (control); local energy of the top eigenfunctions on each. "
                  "Localization = mean over eigenfunctions of the larger of the two energies (1 = each lives on one task).", "",
                  "| model | localization | energy on training task (top 5) | training task's share of trace K |", "|---|---|---|---|"]
        for label, r in ntk.models.items():
            lines.append(f"| {label} | {r.localization:.3f} | {', '.join(f'{e:.2f}' for e in r.energy_train[:5])} | {r.trace_share_train:.2f} |")
        lines += ["", "![NTK localization](figures/ntk_localization.png)", "",
                  "*Pre-trained: eigenfunctions should sit on one task each (bars all one colour); random init: mixed. "
                  "A trace share far from the tasks' share of the samples means the kernel is simply larger on one task, "
                  "which tilts the top eigenfunctions towards it whatever their localization.*", ""]
    if results.random_init is not None:
        r = results.random_init
        lines += ["## From random initialization (Table 3)", "",
                  f"The same pipeline from a randomly initialized backbone (run in `{r.run_dir}/`): mean single-task and "
                  "multi-task (task addition) test accuracy." + (f" Heads: {r.heads}." if r.heads else ""), "",
                  "| method | single-task | multi-task (α) |", "|---|---|---|",
                  f"| Random init | {pct(r.single_task[PRETRAINED.name])} | – |"]
        for m in _methods(r.multi_task):
            lines.append(f"| {m.label} | {pct(r.single_task[m.name])} | {pct(r.multi_task[m.name])} ({r.alpha[m.name]:.2f}) |")
        lines.append("")
    return lines


def _training_line(config: dict) -> str:
    train = config["train"]
    parts = []
    for mode in FINETUNE_MODES:
        if mode.name not in train:
            continue
        t = train[mode.name]
        own = {s.name: t[s.name] for s in mode.settings if s.name in t}
        parts.append(f"{mode.label} {t['steps']} steps at lr {t['lr']}, batch {t['batch_size']}"
                     + (f" ({format_settings(own)})" if own else ""))
    return "Fine-tuning: " + "; ".join(parts) + "."


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _mean_cost(results: RunResults, mode, field: str) -> float | None:
    """A FinetuneCost field of `mode`, averaged over its tasks' fine-tunes (None if not recorded)."""
    return _mean([getattr(c, field) for c in results.cost.get(mode.name, {}).values()])


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


def _with_ratio(value: float | None, reference: float | None, fmt: str) -> str:
    if value is None:
        return "–"
    ratio = f" ({value / reference:.2f}×)" if reference else ""
    return f"{value:{fmt}}{ratio}"


def _modes_section(results: RunResults) -> list[str]:
    """Each fine-tuning mode's accuracy beside its cost (means over the tasks' fine-tunes)."""
    if not results.cost:
        return []
    modes = [m for m in FINETUNE_MODES if m.name in results.cost]
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    linearity = results.linearity or {}

    ref = NONLINEAR if NONLINEAR.name in results.cost else None
    lines = ["## Fine-tuning modes: accuracy and cost", "",
             "Each mode's vectors on the model they were trained through. Cost: mean over the tasks' fine-tunes of wall time, "
             "median step time and the peak memory a fine-tune added"
             + (f" (in parentheses: ÷ {ref.label})" if ref else "") + "; entries: weight entries trained (φ) / that can change in θ. "
             "Linearity gap (non-linearly trained modes): ‖f(θ0+τ) − f_lin(θ0+τ)‖ / ‖f(θ0+τ) − f(θ0)‖ of the validation logits, "
             "mean over tasks (0: the fine-tune stayed in the tangent space).", "",
             "| mode | single-task | addition abs / norm | negation target / control | time per task (s) | step (ms) | peak (MiB) | entries | linearity gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mode in modes:
        method = method_for_vector(mode)
        single = results.mean_single(method) if method.name in results.single_task.test else None
        add = addition.get(method.name)
        neg = results.negation.get(method.name)
        gaps = linearity.get(mode.name)
        trained, changed = _mean_cost(results, mode, "trained_entries"), _mean_cost(results, mode, "changed_entries")
        lines.append(
            f"| {mode.label} | {pct(single)} | {pct(add.absolute) + ' / ' + pct(add.normalized) if add else '–'} | "
            f"{pct(neg.target) + ' / ' + pct(neg.control) if neg else '–'} | "
            + " | ".join(_with_ratio(_mean_cost(results, mode, f), _mean_cost(results, ref, f) if ref else None, fmt)
                         for f, fmt in (("seconds", ".0f"), ("step_ms", ".0f"), ("peak_mib", ".0f")))
            + f" | {_count(trained)} / {_count(changed)} | "
            + (f"{_mean([g.relative_gap for g in gaps.values()]):.2f}" if gaps else "–") + " |")
    return lines + ["", "![accuracy and cost of the modes](figures/modes_cost.png)", ""]


def _count(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _negation_cell(entry: NegationTarget) -> str:
    return f"{pct(entry.target)} ({entry.alpha:.2f})" if entry.feasible else "no feasible α"


def render_markdown(results: RunResults, figures: Path | None = None) -> str:
    tasks, cfg = results.tasks, results.config
    neg, single = results.negation, results.single_task.test
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    lines = [
        f"# taskvec report: {cfg['name']}",
        "",
        f"Backbone `{cfg['backbone']}` ({cfg['init']}), tasks: {', '.join(tasks)}. "
        f"Heads: {cfg['head']['kind']} (scale {cfg['head']['scale']}). Test accuracy in %, one seed ({cfg['data']['seed']}).",
        _training_line(cfg),
        "",
    ]
    lines += claims_table(check_claims([results]), 1)
    if addition:
        lines += [
            "## Table 1: task addition (absolute / normalized)",
            "",
            "One α for all tasks from the grid, chosen on validation by mean normalized accuracy; "
            "normalized = edited accuracy / single-task accuracy of the same method; ↑: α at the top of the grid.",
            "",
            "| method | absolute | normalized | α | " + " | ".join(tasks) + " |",
            "|---|---|---|---|" + "---|" * len(tasks),
            f"| {PRETRAINED.label} | {pct(results.pretrained_addition().accuracy)} | – | 0.00 | "
            + " | ".join(pct(single[PRETRAINED.name][t]) for t in tasks) + " |",
        ]
        for m in _methods(addition):
            a = addition[m.name]
            lines.append(f"| {m.label} | {pct(a.absolute)} | {pct(a.normalized)} | {_alpha(a)} | "
                         + " | ".join(pct(a.per_task[t].accuracy) for t in tasks) + " |")
        lines.append("")
    targets = list(neg[PRETRAINED.name].per_task)
    controls = sorted({neg[PRETRAINED.name].per_task[t].control_task for t in targets})
    lines += [
        "## Table 2: task negation (target ↓ / control)",
        "",
        f"Per target, the α minimizing target validation accuracy while the control keeps ≥ "
        f"{100 * cfg['negation']['threshold']:.0f}% of its pre-trained validation accuracy; mean over targets (a target for which no α of the grid keeps the control "
        f"shows \"no feasible α\" and is left out of the mean). "
        f"Control task(s): {', '.join(controls)}.",
        "",
        "| method | target | control | " + " | ".join(f"{t} (α)" for t in targets) + " |",
        "|---|---|---|" + "---|" * len(targets),
    ]
    for m in _methods(neg):
        n = neg[m.name]
        over = f" ({len(targets) - len(n.infeasible)} of {len(targets)} targets)" if n.infeasible else ""
        lines.append(f"| {m.label} | {pct(n.target)}{over} | {pct(n.control)} | "
                     + " | ".join(_negation_cell(n.per_task[t]) for t in targets) + " |")
    lines += [
        "",
        "## Single-task accuracy",
        "",
        "Each task's own fine-tuned model (α = 1). Post-hoc = the non-linear vector applied to the linearized model.",
        "",
        "| method | mean | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for m in _methods(single):
        vals = [single[m.name][t] for t in tasks]
        lines.append(f"| {m.label} | {pct(sum(vals) / len(vals))} | " + " | ".join(pct(v) for v in vals) + " |")
    lines.append("")
    lines += _modes_section(results)
    lines += _merge_sections(results)
    lines += [
        "## Figures",
        "",
        "![single-task accuracy](figures/single_task.png)",
        "",
        "*Single-task test accuracy per method: fine-tuning should beat the pre-trained model on every task; "
        "the gap between non-linear and linearized FT is the paper's \"non-linear advantage\".*",
        "",
    ]
    if addition:
        lines += ["![addition sweep](figures/addition_alpha.png)", "",
                  "*Mean normalized validation accuracy of θ0 + α Σ τ_t against α; the dotted line marks the chosen α.*", ""]
    lines += [
        "![negation sweep](figures/negation_alpha.png)",
        "",
        "*Target (solid) and control (dashed) validation accuracy of θ0 − α τ_target against α.*",
        "",
        "![non-linear advantage](figures/nonlinear_advantage.png)",
        "",
        "*Fig. 2 analogue: accuracy gained over the pre-trained model by each way of fine-tuning.*",
        "",
    ]
    if figures is not None:
        lines += _analysis_sections(results, figures)
    from .paper_results import comparison_tables

    beside_paper = comparison_tables(results)
    if beside_paper:
        lines += [beside_paper, ""]
    lines += _timing_section(results)
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _timing_section(results: RunResults) -> list[str]:
    """Where the time went: each stage as it was computed (possibly by an earlier, resumed run)."""
    timing = results.timing
    seconds = "–" if results.seconds is None else f"{results.seconds:.0f}"
    lines = ["## Time", "",
             f"This invocation: {seconds} s. Seconds each part took when it was computed "
             "(a resumed run reuses earlier parts; – = not recorded):", "",
             "| part | seconds |", "|---|---|"]
    lines += [f"| fine-tune {unit} | {_seconds(s)} |" for unit, s in timing.finetune.items()]
    lines += [f"| {stage} | {_seconds(s)} |" for stage, s in timing.stages.items()]
    return lines + [""]


def write_report(results: RunResults, out: str | Path) -> Path:
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_single_task(results, figures / "single_task.png")
    if TASK_ARITHMETIC.name in results.merge:
        plot_addition_curves(results, figures / "addition_alpha.png")
    plot_negation_curves(results, figures / "negation_alpha.png")
    plot_nonlinear_advantage(results, figures / "nonlinear_advantage.png")
    plot_merge_methods(results, figures / "merge_methods.png")
    if results.cost:
        plot_modes_cost(results, figures / "modes_cost.png")
    write_text(out / "report.md", render_markdown(results, figures))
    return out / "report.md"
