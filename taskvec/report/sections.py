"""The report's optional sections, each present when the run computed its part: the merge
methods, the fine-tuning modes' accuracy and cost, the analyses (whose figures are drawn here)
and where the time went; and the fine-tuning line of the header."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..kinds import FINETUNE_MODES, NONLINEAR, PRETRAINED, method_for_vector
from ..merging import MERGE_METHODS, TASK_ARITHMETIC
from ..registry import format_settings
from ..results import RunResults
from .cells import _alpha, _count, _editing, _mean, _mean_cost, _methods, _seconds, _with_ratio, pct


def _merge_sections(results: RunResults) -> list[str]:
    """The merge-method table (accuracies) and its details (choices and cost)."""
    methods = _editing(results)
    lines = [
        "## Merge methods (absolute / normalized)",
        "",
        "Each merge method combines the task vectors of one kind into a direction d; the model is θ0 + α·d. "
        "Its settings (from a small grid) and α are chosen on validation by mean normalized accuracy, "
        "separately for each evaluation method; test accuracy in %. Non-linear FT and post-hoc linearization "
        "merge the same non-linear vectors (applied to f and f_lin); every other column merges its own mode's "
        "vectors and applies them to the model that mode trains (linearized modes: in the tangent space, on f_lin).",
        "",
        "| merge method | " + " | ".join(m.label for m in methods) + " |",
        "|---|" + "---|" * len(methods),
        f"| {PRETRAINED.label} | " + " | ".join(pct(results.pretrained_addition().accuracy) + " / –" for _ in methods) + " |",
    ]
    for name, by_method in results.merge.items():
        cells = [f"{pct(r.absolute)} / {pct(r.normalized)}" if (r := by_method.get(m.name)) else "–" for m in methods]
        lines.append(f"| {MERGE_METHODS.get(name).label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![merge methods](figures/merge_methods.png)",
        "",
        "Chosen settings and cost (seconds: merging and the validation sweeps of every setting tried, and the test "
        "evaluation, for that evaluation method; a merge of non-linear vectors counts for both methods that use it). "
        "↑ / ↓ mark an α at the top / bottom (above 0) of its grid: an α outside the grid might have scored higher on validation.",
        "",
        "| merge method | evaluation | α | settings | tried | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_method in results.merge.items():
        for m in methods:
            r = by_method.get(m.name)  # MergeResult | None, as `r` above
            if r is not None:
                lines.append(
                    f"| {MERGE_METHODS.get(name).label} | {m.label} | {_alpha(r)} | {format_settings(r.settings) or '–'} | "
                    f"{max(1, len(r.search))} | {r.seconds:.1f} |"
                )
    return lines + [""]


def _analysis_sections(results: RunResults, figures: Path) -> list[str]:
    """Markdown (and figures) for the analyses present in results."""
    lines: list[str] = []
    if results.disentanglement:
        lines += _disentanglement_section(results, figures)
    if results.ntk is not None:
        lines += _ntk_section(results, figures)
    if results.random_init is not None:
        lines += _random_init_section(results)
    return lines


def _disentanglement_section(results: RunResults, figures: Path) -> list[str]:
    """Fig. 3: mean ξ per pair and method, and each pair's heatmaps (drawn into `figures`)."""
    from ..analysis import plot_disentanglement

    lines = [
        "## Weight disentanglement (Fig. 3)",
        "",
        "ξ(α1, α2): fraction of each task's validation inputs whose prediction changes when the other "
        "task's vector is added (summed over the two tasks; 0 = disentangled). The box is the α range "
        "searched by task addition.",
        "",
        "| pair | method | mean ξ over the grid | mean ξ inside the box [0, 1]² |",
        "|---|---|---|---|",
    ]
    assert results.disentanglement is not None, "drawn only when the run computed it"
    for pair, by_method in results.disentanglement.items():
        name = pair.replace("+", "_")
        plot_disentanglement(by_method, figures / f"disentanglement_{name}.png")
        for m in _methods(by_method):
            r = by_method[m.name]
            lines.append(f"| {pair} | {m.label} | {r.mean():.3f} | {r.mean(box=(0.0, 1.0)):.3f} |")
        lines += [
            "",
            f"![disentanglement {pair}](figures/disentanglement_{name}.png)",
            "",
            "*Darker is more disentangled; the paper finds linearized FT darker than non-linear FT over a wider region.*",
            "",
        ]
    return lines


def _ntk_section(results: RunResults, figures: Path) -> list[str]:
    """Fig. 6: each model's NTK localization, and the figure (drawn into `figures`)."""
    from ..analysis.ntk import plot_ntk_localization

    ntk = results.ntk
    assert ntk is not None, "drawn only when the run computed it"
    plot_ntk_localization(ntk.models, figures / "ntk_localization.png", ntk.train_task, ntk.control_task)
    return [
        "## NTK eigenfunction localization (Fig. 6)",
        "",
        f"Empirical NTK of the model with the `{ntk.train_task}` head on samples of `{ntk.train_task}` "
        f"(training task) and `{ntk.control_task}` (control); local energy of the top eigenfunctions on each. "
        "Localization = mean over eigenfunctions of the larger of the two energies (1 = each lives on one task).",
        "",
        "| model | localization | energy on training task (top 5) | training task's share of trace K |",
        "|---|---|---|---|",
        *(
            f"| {label} | {r.localization:.3f} | {', '.join(f'{e:.2f}' for e in r.energy_train[:5])} | {r.trace_share_train:.2f} |"
            for label, r in ntk.models.items()
        ),
        "",
        "![NTK localization](figures/ntk_localization.png)",
        "",
        "*Pre-trained: eigenfunctions should sit on one task each (bars all one colour); random init: mixed. "
        "A trace share far from the tasks' share of the samples means the kernel is simply larger on one task, "
        "which tilts the top eigenfunctions towards it whatever their localization.*",
        "",
    ]


def _random_init_section(results: RunResults) -> list[str]:
    """Table 3: the same pipeline from a randomly initialized backbone."""
    r = results.random_init
    assert r is not None, "written only when the run computed it"
    lines = [
        "## From random initialization (Table 3)",
        "",
        f"The same pipeline from a randomly initialized backbone (run in `{r.run_dir}/`): mean single-task and "
        "multi-task (task addition) test accuracy." + (f" Heads: {r.heads}." if r.heads else ""),
        "",
        "| method | single-task | multi-task (α) |",
        "|---|---|---|",
        f"| Random init | {pct(r.single_task[PRETRAINED.name])} | – |",
    ]
    for m in _methods(r.multi_task):
        lines.append(f"| {m.label} | {pct(r.single_task[m.name])} | {pct(r.multi_task[m.name])} ({r.alpha[m.name]:.2f}) |")
    lines.append("")
    return lines


def _training_line(config: RunConfig) -> str:
    parts = []
    for mode in FINETUNE_MODES:
        if mode.name not in config.train.modes:
            continue
        t = config.train.modes[mode.name]
        own = {s.name: t.settings[s.name] for s in mode.settings if s.name in t.settings}
        parts.append(f"{mode.label} {t.steps} steps at lr {t.lr}, batch {t.batch_size}" + (f" ({format_settings(own)})" if own else ""))
    return "Fine-tuning: " + "; ".join(parts) + "."


def _modes_section(results: RunResults) -> list[str]:
    """Each fine-tuning mode's accuracy beside its cost (means over the tasks' fine-tunes)."""
    if not results.cost:
        return []
    modes = [m for m in FINETUNE_MODES if m.name in results.cost]
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    linearity = results.linearity or {}

    ref = NONLINEAR if NONLINEAR.name in results.cost else None
    lines = [
        "## Fine-tuning modes: accuracy and cost",
        "",
        "Each mode's vectors on the model they were trained through. Cost: mean over the tasks' fine-tunes of wall time, "
        "median step time and the peak memory a fine-tune added"
        + (f" (in parentheses: ÷ {ref.label})" if ref else "")
        + "; entries: weight entries trained (φ) / that can change in θ. "
        "Linearity gap (non-linearly trained modes): ‖f(θ0+τ) − f_lin(θ0+τ)‖ / ‖f(θ0+τ) − f(θ0)‖ of the validation logits, "
        "mean over tasks (0: the fine-tune stayed in the tangent space).",
        "",
        "| mode | single-task | addition abs / norm | negation target / control | time per task (s) | step (ms) | peak (MiB) | entries | linearity gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
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
            + " | ".join(
                _with_ratio(_mean_cost(results, mode, f), _mean_cost(results, ref, f) if ref else None, fmt)
                for f, fmt in (("seconds", ".0f"), ("step_ms", ".0f"), ("peak_mib", ".0f"))
            )
            + f" | {_count(trained)} / {_count(changed)} | "
            + (f"{_mean([g.relative_gap for g in gaps.values()]):.2f}" if gaps else "–")
            + " |"
        )
    factored = [(m, _mean_cost(results, m, "factor_seconds"), _mean_cost(results, m, "factor_peak_mib")) for m in modes]
    lines += [
        "",
        *(
            f"{m.label}: each task's KFAC factors at θ0 (shipped for the others' fine-tunes) took {sec:.1f} s and "
            f"{'–' if mib is None else f'{mib:.0f}'} MiB peak on average, on top of its fine-tune."
            for m, sec, mib in factored
            if sec is not None
        ),
    ]
    return lines + _penalty_lines(results, modes) + ["", "![accuracy and cost of the modes](figures/modes_cost.png)", ""]


def _penalty_lines(results: RunResults, modes: list) -> list[str]:
    """The effective penalty strength of each penalized mode's fine-tunes (form, λ, the datasets
    penalized, the control among them or not, examples of each per step), as their vectors recorded."""
    lines: list[str] = []
    for mode in modes:
        described = {task: c.penalty for task, c in results.cost.get(mode.name, {}).items() if c.penalty}
        if described:
            lines += ["", f"Effective penalty of {mode.label}, per fine-tuned task:", ""]
            lines += [f"- {task}: {text}" for task, text in described.items()]
    return lines


def _mask_section(results: RunResults) -> list[str]:
    """How each sparse fine-tune chose its entries: the fraction requested against the fraction
    really trained (every entry tied at the threshold is), and how many candidates score 0."""
    if not results.masks:
        return []
    lines = [
        "## Sparse masks",
        "",
        "Per fine-tune, in % of the candidate entries: requested, really trained (entries tied at the threshold are all "
        "trained) and scoring exactly 0 at θ0; the candidate tensors holding a trained entry; the mean fraction trained "
        "per tensor in the first, middle and last third of the candidate tensors (network order); the score, its rounds "
        "and the seconds scoring took (before the fine-tune, not in its cost).",
        "",
        "| mode | task | requested | trained | score 0 | tensors trained | by depth (thirds) | score, rounds, s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in FINETUNE_MODES:
        for task, m in results.masks.get(mode.name, {}).items():
            touched = sum(f > 0 for f in m.per_tensor.values())
            seconds = "–" if m.seconds is None else f"{m.seconds:.0f}"
            lines.append(
                f"| {mode.label} | {task} | {pct(m.requested)} | {pct(m.trained)} | {pct(m.zero_score)} | "
                f"{touched} / {len(m.per_tensor)} | {_by_thirds(list(m.per_tensor.values()))} | {m.score or '–'}, {m.rounds or '–'}, {seconds} |"
            )
    return lines + [""]


def _by_thirds(fractions: list[float]) -> str:
    """Mean of the per-tensor fractions over the first, middle and last third of the tensors."""
    if len(fractions) < 3:
        return "–"
    cut = [0, len(fractions) // 3, 2 * len(fractions) // 3, len(fractions)]
    return " / ".join(pct(sum(part) / len(part)) for part in (fractions[a:b] for a, b in zip(cut, cut[1:])))


def _timing_section(results: RunResults) -> list[str]:
    """Where the time went: each stage as it was computed (possibly by an earlier, resumed run)."""
    timing = results.timing
    seconds = "–" if results.seconds is None else f"{results.seconds:.0f}"
    lines = [
        "## Time",
        "",
        f"This invocation: {seconds} s. Seconds each part took when it was computed "
        "(a resumed run reuses earlier parts; – = not recorded):",
        "",
        "| part | seconds |",
        "|---|---|",
    ]
    lines += [f"| fine-tune {unit} | {_seconds(s)} |" for unit, s in timing.finetune.items()]
    lines += [f"| {stage} | {_seconds(s)} |" for stage, s in timing.stages.items()]
    return lines + [""]
