"""The paper's headline numbers (Ortiz-Jimenez et al., NeurIPS 2023), and a markdown table
that puts a run's results beside them.

Numbers are test accuracies in %, as restated in shared/paper.md: Table 1 (task addition of
the eight tasks: absolute / normalized) and Table 2 (task negation: target / control, mean
over the eight targets), keyed by the registered evaluation methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kinds import LINEARIZED_FT, NONLINEAR_FT, POSTHOC, PRETRAINED, EvalMethod
from .merging import BREADCRUMBS, CONSENSUS, DARE, ISO_C, ISO_CTS, LINES, TASK_ARITHMETIC, TIES, TSV_M, MergeMethod

if TYPE_CHECKING:
    from .results import RunResults

MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
PAPER_TASKS = ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN")

# method -> model -> (absolute, normalized); None where the paper has none.
TABLE1_ADDITION: dict[EvalMethod, dict[str, tuple[float, float | None]]] = {
    PRETRAINED: {"ViT-B-32": (48.4, None), "ViT-B-16": (55.2, None), "ViT-L-14": (64.4, None)},
    NONLINEAR_FT: {"ViT-B-32": (71.4, 76.5), "ViT-B-16": (75.5, 80.0), "ViT-L-14": (85.1, 88.8)},
    POSTHOC: {"ViT-B-32": (57.1, 81.9), "ViT-B-16": (65.0, 85.2), "ViT-L-14": (75.2, 90.0)},
    LINEARIZED_FT: {"ViT-B-32": (76.5, 85.4), "ViT-B-16": (81.3, 86.0), "ViT-L-14": (88.5, 93.5)},
}
# method -> model -> (target, control)
TABLE2_NEGATION: dict[EvalMethod, dict[str, tuple[float, float]]] = {
    PRETRAINED: {"ViT-B-32": (48.4, 63.4), "ViT-B-16": (55.2, 68.3), "ViT-L-14": (64.4, 75.5)},
    NONLINEAR_FT: {"ViT-B-32": (24.0, 60.7), "ViT-B-16": (19.2, 64.6), "ViT-L-14": (18.0, 72.5)},
    POSTHOC: {"ViT-B-32": (14.8, 60.3), "ViT-B-16": (10.8, 64.8), "ViT-L-14": (12.1, 71.8)},
    LINEARIZED_FT: {"ViT-B-32": (10.9, 60.8), "ViT-B-16": (11.3, 64.8), "ViT-L-14": (7.9, 72.5)},
}
# Table 3, from random initialization: method -> model -> (single-task, multi-task); None where none.
TABLE3_RANDOM_INIT: dict[EvalMethod, dict[str, tuple[float, float | None]]] = {
    PRETRAINED: {"ViT-B-32": (5.3, None), "ViT-B-16": (4.8, None), "ViT-L-14": (5.2, None)},
    NONLINEAR_FT: {"ViT-B-32": (48.5, 5.5), "ViT-B-16": (40.6, 4.5), "ViT-L-14": (18.0, 4.8)},
    LINEARIZED_FT: {"ViT-B-32": (27.8, 3.8), "ViT-B-16": (24.7, 4.0), "ViT-L-14": (24.8, 6.1)},
}

# Published CLIP ViT-B/32 8-task merges (absolute test accuracy, %), as restated in shared/paper.md
# ("Beyond the paper"), each from its own paper and its own fine-tuned checkpoints: context for a
# run of the paper's protocol, not a like-for-like comparison. "≈" where only an approximate value
# was restated; "–" where the method's paper reports no CLIP ViT-B/32 number we could check.
PUBLISHED_MERGES_VIT_B32: dict[MergeMethod, str] = {
    TASK_ARITHMETIC: "71.4",  # this paper's Table 1, non-linear FT (Ortiz-Jimenez et al., 2305.12827)
    TIES: "≈72",  # Yadav et al., NeurIPS 2023, 2306.01708
    DARE: "–",  # Yu et al., ICML 2024, 2311.03099: language models only
    BREADCRUMBS: "–",  # Davari & Belilovsky, ECCV 2024, 2312.06795
    TSV_M: "85.9",  # Gargiulo et al., CVPR 2025, 2412.00081
    ISO_C: "≈86",  # Marczak et al., ICML 2025, 2502.04959
    ISO_CTS: "≈86",  # Marczak et al., ICML 2025, 2502.04959
    CONSENSUS: "≈75",  # Wang et al., ICML 2024, 2405.07813
    LINES: "TA + a few points",  # Wang et al., ICLR 2025, 2410.17146
}


def paper_model(backbone: str) -> str | None:
    """'openclip:ViT-B-32/openai' -> 'ViT-B-32' when the paper reports that model (OpenAI weights)."""
    if not backbone.startswith("openclip:"):
        return None
    arch, _, tag = backbone.partition(":")[2].partition("/")
    arch = arch.removesuffix("-quickgelu")
    return arch if arch in MODELS and tag == "openai" else None


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def comparison_tables(results: RunResults) -> str:
    """Markdown: our Table 1 and Table 2 numbers beside the paper's, for a run of a paper model.
    Empty string when the run's backbone is not one the paper reports."""
    model = paper_model(results.config.backbone)
    if model is None:
        return ""
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    lines = [
        f"## Beside the paper ({model}, OpenAI weights)",
        "",
        "Test accuracy, %. Paper: Ortiz-Jimenez et al. (NeurIPS 2023), Tables 1 and 2.",
        "",
        "Task addition of the eight tasks: absolute / normalized accuracy.",
        "",
        "| method | ours | paper | Δ absolute |",
        "|---|---|---|---|",
    ]
    ours: dict[EvalMethod, tuple[float, float | None]] = {PRETRAINED: (results.pretrained_addition().accuracy, None)}
    ours.update({m: (addition[m.name].absolute, addition[m.name].normalized) for m in TABLE1_ADDITION if m.name in addition})
    for m, (ours_abs, ours_norm) in ours.items():
        paper_abs, paper_norm = TABLE1_ADDITION[m][model]
        lines.append(
            f"| {m.label} | {_pct(ours_abs)} / {_pct(ours_norm)} | {_num(paper_abs)} / {_num(paper_norm)} | "
            f"{100 * ours_abs - paper_abs:+.1f} |"
        )
    lines += [
        "",
        "Task negation, mean over the targets: target (lower is better) / control.",
        "",
        "| method | ours | paper | Δ target |",
        "|---|---|---|---|",
    ]
    for m in TABLE2_NEGATION:
        if m.name not in results.negation:
            continue
        row = results.negation[m.name]
        paper_t, paper_c = TABLE2_NEGATION[m][model]
        delta = f"{100 * row.target - paper_t:+.1f}" if row.target is not None else "–"
        over = f" ({len(row.per_task) - len(row.infeasible)} of {len(row.per_task)} targets)" if row.infeasible else ""
        lines.append(f"| {m.label} | {_pct(row.target)} / {_pct(row.control)}{over} | {_num(paper_t)} / {_num(paper_c)} | {delta} |")
    if results.merge:
        lines += [
            "",
            f"Merge methods (absolute test accuracy, our non-linear FT vectors, {model}) beside the numbers their "
            "papers publish for CLIP ViT-B/32 on the eight tasks, each on its own checkpoints (context, not a "
            "like-for-like comparison; sources in taskvec/paper_results.py).",
            "",
            f"| merge method | ours ({model}) | published (ViT-B/32) |",
            "|---|---|---|",
        ]
        for method, published in PUBLISHED_MERGES_VIT_B32.items():
            merged = results.merge.get(method.name, {}).get(NONLINEAR_FT.name)
            if merged is not None:
                lines.append(f"| {method.label} | {_pct(merged.absolute)} | {published} |")
    if sorted(results.tasks) != sorted(PAPER_TASKS):
        lines += ["", f"Note: this run's tasks ({', '.join(results.tasks)}) are not the paper's eight; the numbers are not comparable."]
    return "\n".join(lines) + "\n"
