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
    ax.legend(fontsize=8, loc="lower right")
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


def render_markdown(results: dict) -> str:
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
    ]
    if "seconds" in results:
        lines.append(f"Run time: {results['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str | Path) -> Path:
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_single_task(results, figures / "single_task.png")
    plot_addition_curves(results, figures / "addition_alpha.png")
    plot_negation_curves(results, figures / "negation_alpha.png")
    write_text(out / "report.md", render_markdown(results))
    return out / "report.md"
