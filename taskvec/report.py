"""report.md and PNG figures from results.json: the paper's Tables 1 and 2 in miniature."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path, write_text  # noqa: E402

LABELS = {"pretrained": "Pre-trained", "nonlinear": "Non-linear FT", "posthoc": "Post-hoc linearization", "linear": "Linearized FT"}
COLORS = {"pretrained": "#7f7f7f", "nonlinear": "#1f77b4", "posthoc": "#ff7f0e", "linear": "#2ca02c"}
METHOD_ORDER = ("pretrained", "nonlinear", "posthoc", "linear")


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def _legend_outside(ax) -> None:
    """Right of the axes, so that it never hides a bar."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def plot_single_task(results: dict, path: Path) -> None:
    tasks = results["tasks"]
    methods = [m for m in METHOD_ORDER if m in results["single_task"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, [100 * results["single_task"][m][t] for t in tasks], width, label=LABELS[m], color=COLORS[m])
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Single-task accuracy")
    _legend_outside(ax)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_addition_curves(results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for m in ("nonlinear", "posthoc", "linear"):
        add = results["addition"].get(m)
        if not add:
            continue
        curve = add["curve"]
        ax.plot([p["alpha"] for p in curve], [100 * p["val_normalized"] for p in curve], marker="o", ms=3, label=LABELS[m], color=COLORS[m])
        ax.axvline(add["alpha"], color=COLORS[m], ls=":", lw=1)
    ax.set_xlabel("α (θ0 + α Σ τ_t)")
    ax.set_ylabel("mean normalized val. accuracy (%)")
    ax.set_title("Task addition: α sweep (dotted: chosen α)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_negation_curves(results: dict, path: Path) -> None:
    methods = [m for m in ("nonlinear", "posthoc", "linear") if m in results["negation"]]
    targets = list(results["negation"][methods[0]]["per_task"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.3), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        for t in targets:
            entry = results["negation"][m]["per_task"][t]
            alphas = [p["alpha"] for p in entry["curve"]]
            line, = ax.plot(alphas, [100 * p["target_val"] for p in entry["curve"]], label=f"{t} (target)")
            ax.plot(alphas, [100 * p["control_val"] for p in entry["curve"]], ls="--", color=line.get_color(), alpha=0.6)
        ax.set_title(f"{LABELS[m]}: θ0 − α τ")
        ax.set_xlabel("α")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val. accuracy (%) — solid: target, dashed: control")
    axes[0][-1].legend(fontsize=7)
    _save(fig, path)


def plot_nonlinear_advantage(results: dict, path: Path) -> None:
    """Fig. 2: single-task accuracy gained over θ0, per task, for the three ways of fine-tuning."""
    tasks = results["tasks"]
    single = results["single_task"]
    methods = ("nonlinear", "posthoc", "linear")
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(tasks), 3.4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + (i - 1) * width for j in range(len(tasks))]
        ax.bar(xs, [100 * (single[m][t] - single["pretrained"][t]) for t in tasks], width, label=LABELS[m], color=COLORS[m])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy − pre-trained (points)")
    ax.set_title("Non-linear advantage: single-task gains")
    _legend_outside(ax)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _analysis_sections(results: dict, figures: Path) -> list[str]:
    """Markdown (and figures) for the analyses present in results."""
    lines: list[str] = []
    if "disentanglement" in results:
        from .analysis import mean_xi, plot_disentanglement

        lines += ["## Weight disentanglement (Fig. 3)", "",
                  "ξ(α1, α2): fraction of each task's validation inputs whose prediction changes when the other "
                  "task's vector is added (summed over the two tasks; 0 = disentangled). The box is the α range "
                  "searched by task addition.", "",
                  "| pair | method | mean ξ over the grid | mean ξ inside the box [0, 1]² |", "|---|---|---|---|"]
        for pair, by_method in results["disentanglement"].items():
            name = pair.replace("+", "_")
            plot_disentanglement(by_method, figures / f"disentanglement_{name}.png")
            for m, r in by_method.items():
                lines.append(f"| {pair} | {LABELS[m]} | {mean_xi(r):.3f} | {mean_xi(r, box=(0.0, 1.0)):.3f} |")
            lines += ["", f"![disentanglement {pair}](figures/disentanglement_{name}.png)", "",
                      "*Darker is more disentangled; the paper finds linearized FT darker than non-linear FT over a wider region.*", ""]
    if "ntk" in results:
        from .analysis.ntk import plot_ntk_localization

        ntk = results["ntk"]
        plot_ntk_localization(ntk["models"], figures / "ntk_localization.png", ntk["train_task"], ntk["control_task"])
        lines += ["## NTK eigenfunction localization (Fig. 6)", "",
                  f"Empirical NTK of the model with the `{ntk['train_task']}` head on samples of `{ntk['train_task']}` "
                  f"(training task) and `{ntk['control_task']}` (control); local energy of the top eigenfunctions on each. "
                  "Localization = mean over eigenfunctions of the larger of the two energies (1 = each lives on one task).", "",
                  "| model | localization | energy on training task (top 5) | training task's share of trace K |", "|---|---|---|---|"]
        for label, r in ntk["models"].items():
            share = f"{r['trace_share_train']:.2f}" if "trace_share_train" in r else "–"
            lines.append(f"| {label} | {r['localization']:.3f} | {', '.join(f'{e:.2f}' for e in r['energy_train'][:5])} | {share} |")
        lines += ["", "![NTK localization](figures/ntk_localization.png)", "",
                  "*Pre-trained: eigenfunctions should sit on one task each (bars all one colour); random init: mixed. "
                  "A trace share far from the tasks' share of the samples means the kernel is simply larger on one task, "
                  "which tilts the top eigenfunctions towards it whatever their localization.*", ""]
    if "random_init" in results:
        r = results["random_init"]
        lines += ["## From random initialization (Table 3)", "",
                  "The same pipeline from a randomly initialized backbone (run in `random_init/`): mean single-task and "
                  "multi-task (addition) test accuracy.", "",
                  "| method | single-task | multi-task (α) |", "|---|---|---|",
                  f"| Random init | {pct(r['single_task']['pretrained'])} | – |"]
        for m in ("nonlinear", "linear"):
            lines.append(f"| {LABELS[m]} | {pct(r['single_task'][m])} | {pct(r['multi_task'][m])} ({r['alpha'][m]:.2f}) |")
        lines.append("")
    return lines


def render_markdown(results: dict, figures: Path | None = None) -> str:
    tasks = results["tasks"]
    cfg = results["config"]
    add, neg, single = results["addition"], results["negation"], results["single_task"]
    lines = [
        f"# taskvec report: {cfg['name']}",
        "",
        f"Backbone `{cfg['backbone']}` ({cfg['init']}), tasks: {', '.join(tasks)}. "
        f"Heads: {cfg['head']['kind']} (scale {cfg['head']['scale']}). Test accuracy in %, one seed ({cfg['data']['seed']}).",
        f"Fine-tuning: non-linear {cfg['train']['nonlinear']['steps']} steps at lr {cfg['train']['nonlinear']['lr']}, "
        f"linearized {cfg['train']['linear']['steps']} steps at lr {cfg['train']['linear']['lr']}, batch {cfg['train']['nonlinear']['batch_size']}.",
        "",
        "## Table 1: task addition (absolute / normalized)",
        "",
        "One α for all tasks from the grid, chosen on validation by mean normalized accuracy; "
        "normalized = edited accuracy / single-task accuracy of the same method.",
        "",
        "| method | absolute | normalized | α | " + " | ".join(tasks) + " |",
        "|---|---|---|---|" + "---|" * len(tasks),
    ]
    for m in METHOD_ORDER:
        if m in add:
            a = add[m]
            lines.append(f"| {LABELS[m]} | {pct(a['absolute'])} | {pct(a['normalized'])} | {a['alpha']:.2f} | "
                         + " | ".join(pct(a["per_task"][t]["accuracy"]) for t in tasks) + " |")
    targets = list(neg["pretrained"]["per_task"])
    controls = sorted({neg["pretrained"]["per_task"][t]["control_task"] for t in targets})
    lines += [
        "",
        "## Table 2: task negation (target ↓ / control)",
        "",
        f"Per target, the α minimizing target validation accuracy while the control keeps ≥ "
        f"{100 * cfg['negation']['threshold']:.0f}% of its pre-trained validation accuracy; mean over targets. "
        f"Control task(s): {', '.join(controls)}.",
        "",
        "| method | target | control | " + " | ".join(f"{t} (α)" for t in targets) + " |",
        "|---|---|---|" + "---|" * len(targets),
    ]
    for m in METHOD_ORDER:
        if m in neg:
            n = neg[m]
            lines.append(f"| {LABELS[m]} | {pct(n['target'])} | {pct(n['control'])} | "
                         + " | ".join(f"{pct(n['per_task'][t]['target'])} ({n['per_task'][t]['alpha']:.2f})" for t in targets) + " |")
    lines += [
        "",
        "## Single-task accuracy",
        "",
        "Each task's own fine-tuned model (α = 1). Post-hoc = the non-linear vector applied to the linearized model.",
        "",
        "| method | mean | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for m in METHOD_ORDER:
        if m in single:
            vals = [single[m][t] for t in tasks]
            lines.append(f"| {LABELS[m]} | {pct(sum(vals) / len(vals))} | " + " | ".join(pct(v) for v in vals) + " |")
    lines += [
        "",
        "## Figures",
        "",
        "![single-task accuracy](figures/single_task.png)",
        "",
        "*Single-task test accuracy per method: fine-tuning should beat the pre-trained model on every task; "
        "the gap between non-linear and linearized FT is the paper's \"non-linear advantage\".*",
        "",
        "![addition sweep](figures/addition_alpha.png)",
        "",
        "*Mean normalized validation accuracy of θ0 + α Σ τ_t against α; the dotted line marks the chosen α.*",
        "",
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
        lines += ["## Beside the paper", "", beside_paper, ""]
    lines += _timing_section(results)
    return "\n".join(lines) + "\n"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _timing_section(results: dict) -> list[str]:
    """Where the time went: each stage as it was computed (possibly by an earlier, resumed run)."""
    timing = results.get("timing")
    if not timing:
        return [f"Run time: {results['seconds']:.0f} s.", ""] if "seconds" in results else []
    lines = ["## Time", "",
             f"This invocation: {results['seconds']:.0f} s. Seconds each part took when it was computed "
             "(a resumed run reuses earlier parts; – = not recorded):", "",
             "| part | seconds |", "|---|---|"]
    lines += [f"| fine-tune {unit} | {_seconds(s)} |" for unit, s in timing["finetune"].items()]
    lines += [f"| {stage} | {_seconds(s)} |" for stage, s in timing["stages"].items()]
    return lines + [""]


def write_report(results: dict, out: str | Path) -> Path:
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_single_task(results, figures / "single_task.png")
    plot_addition_curves(results, figures / "addition_alpha.png")
    plot_negation_curves(results, figures / "negation_alpha.png")
    plot_nonlinear_advantage(results, figures / "nonlinear_advantage.png")
    write_text(out / "report.md", render_markdown(results, figures))
    return out / "report.md"
