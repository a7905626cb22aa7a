"""report.md's text: the header, the paper's Tables 1 and 2 in miniature, the single-task
table and the figure captions, then the optional sections (`sections.py`) in a fixed order."""

from __future__ import annotations

from pathlib import Path

from ..claims import check_claims, claims_table
from ..kinds import PRETRAINED
from ..merging import TASK_ARITHMETIC
from ..results import RunResults
from .cells import _alpha, _methods, _negation_cell, pct
from .sections import _analysis_sections, _mask_section, _merge_sections, _modes_section, _timing_section, _training_line


def render_markdown(results: RunResults, figures: Path | None = None) -> str:
    """The whole report.md; with `figures`, the analyses' sections and figures (drawn there) too."""
    cfg = results.config
    lines = _header(results, cfg)
    lines += claims_table(check_claims([results]), 1)
    lines += _addition_table(results)
    lines += _negation_table(results, cfg)
    lines += _single_task_table(results)
    lines += _modes_section(results)
    lines += _mask_section(results)
    lines += _merge_sections(results)
    lines += _figures_section(results)
    if figures is not None:
        lines += _analysis_sections(results, figures)
    from ..paper_results import comparison_tables

    beside_paper = comparison_tables(results)
    if beside_paper:
        lines += [beside_paper, ""]
    lines += _timing_section(results)
    return "\n".join(lines) + "\n"


def _header(results: RunResults, cfg) -> list[str]:
    """Title, backbone, tasks, heads, seed and how each mode was fine-tuned."""
    tasks = results.tasks
    return [
        f"# taskvec report: {cfg.name}",
        "",
        f"Backbone `{cfg.backbone}` ({cfg.init}), tasks: {', '.join(tasks)}. "
        f"Heads: {cfg.head.kind} (scale {cfg.head.scale}). Test accuracy in %, one seed ({cfg.data.seed}).",
        _training_line(cfg),
        "",
    ]


def _addition_table(results: RunResults) -> list[str]:
    """Table 1: task addition per evaluation method (none when the run merged nothing)."""
    tasks, single = results.tasks, results.single_task.test
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    if not addition:
        return []
    lines = [
        "## Table 1: task addition (absolute / normalized)",
        "",
        "One α for all tasks from the grid, chosen on validation by mean normalized accuracy; "
        "normalized = edited accuracy / single-task accuracy of the same method; ↑: α at the top of the grid.",
        "",
        "| method | absolute | normalized | α | " + " | ".join(tasks) + " |",
        "|---|---|---|---|" + "---|" * len(tasks),
        f"| {PRETRAINED.label} | {pct(results.pretrained_addition().accuracy)} | – | 0.00 | "
        + " | ".join(pct(single[PRETRAINED.name][t]) for t in tasks)
        + " |",
    ]
    for m in _methods(addition):
        a = addition[m.name]
        lines.append(
            f"| {m.label} | {pct(a.absolute)} | {pct(a.normalized)} | {_alpha(a)} | "
            + " | ".join(pct(a.per_task[t].accuracy) for t in tasks)
            + " |"
        )
    lines.append("")
    return lines


def _negation_table(results: RunResults, cfg) -> list[str]:
    """Table 2: task negation per evaluation method, each target's α beside its accuracy."""
    neg = results.negation
    targets = list(neg[PRETRAINED.name].per_task)
    controls = sorted({neg[PRETRAINED.name].per_task[t].control_task for t in targets})
    lines = [
        "## Table 2: task negation (target ↓ / control)",
        "",
        f"Per target, the α minimizing target validation accuracy while the control keeps ≥ "
        f"{100 * cfg.negation.threshold:.0f}% of its pre-trained validation accuracy; mean over targets (a target for which no α of the grid keeps the control "
        f'shows "no feasible α" and is left out of the mean). '
        f"Control task(s): {', '.join(controls)}.",
        "",
        "| method | target | control | " + " | ".join(f"{t} (α)" for t in targets) + " |",
        "|---|---|---|" + "---|" * len(targets),
    ]
    for m in _methods(neg):
        n = neg[m.name]
        over = f" ({len(targets) - len(n.infeasible)} of {len(targets)} targets)" if n.infeasible else ""
        lines.append(
            f"| {m.label} | {pct(n.target)}{over} | {pct(n.control)} | " + " | ".join(_negation_cell(n.per_task[t]) for t in targets) + " |"
        )
    return lines


def _single_task_table(results: RunResults) -> list[str]:
    """Each method's single-task test accuracy, per task and mean."""
    tasks, single = results.tasks, results.single_task.test
    lines = [
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
    return lines


def _figures_section(results: RunResults) -> list[str]:
    """The figures `write_report` draws, each with a caption saying what to look for."""
    lines = [
        "## Figures",
        "",
        "![single-task accuracy](figures/single_task.png)",
        "",
        "*Single-task test accuracy per method: fine-tuning should beat the pre-trained model on every task; "
        'the gap between non-linear and linearized FT is the paper\'s "non-linear advantage".*',
        "",
    ]
    if results.merge.get(TASK_ARITHMETIC.name, {}):
        lines += [
            "![addition sweep](figures/addition_alpha.png)",
            "",
            "*Mean normalized validation accuracy of θ0 + α Σ τ_t against α; the dotted line marks the chosen α.*",
            "",
        ]
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
    return lines
