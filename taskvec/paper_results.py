"""The paper's headline numbers (Ortiz-Jimenez et al., NeurIPS 2023), and a markdown table
that puts a run's results beside them.

Numbers are test accuracies in %, as restated in shared/paper.md: Table 1 (task addition of
the eight tasks: absolute / normalized), Table 2 (task negation: target / control, mean over
the eight targets), Table 3 (from random initialization: mean single-task / multi-task).
"""
from __future__ import annotations

from typing import Any

METHODS = ("pretrained", "nonlinear", "posthoc", "linear")
LABELS = {"pretrained": "pre-trained", "nonlinear": "non-linear FT", "posthoc": "post-hoc linearization", "linear": "linearized FT"}
MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14")

# method -> model -> (absolute, normalized); None where the paper has none.
TABLE1_ADDITION: dict[str, dict[str, tuple[float, float | None]]] = {
    "pretrained": {"ViT-B-32": (48.4, None), "ViT-B-16": (55.2, None), "ViT-L-14": (64.4, None)},
    "nonlinear": {"ViT-B-32": (71.4, 76.5), "ViT-B-16": (75.5, 80.0), "ViT-L-14": (85.1, 88.8)},
    "posthoc": {"ViT-B-32": (57.1, 81.9), "ViT-B-16": (65.0, 85.2), "ViT-L-14": (75.2, 90.0)},
    "linear": {"ViT-B-32": (76.5, 85.4), "ViT-B-16": (81.3, 86.0), "ViT-L-14": (88.5, 93.5)},
}
# method -> model -> (target, control)
TABLE2_NEGATION: dict[str, dict[str, tuple[float, float]]] = {
    "pretrained": {"ViT-B-32": (48.4, 63.4), "ViT-B-16": (55.2, 68.3), "ViT-L-14": (64.4, 75.5)},
    "nonlinear": {"ViT-B-32": (24.0, 60.7), "ViT-B-16": (19.2, 64.6), "ViT-L-14": (18.0, 72.5)},
    "posthoc": {"ViT-B-32": (14.8, 60.3), "ViT-B-16": (10.8, 64.8), "ViT-L-14": (12.1, 71.8)},
    "linear": {"ViT-B-32": (10.9, 60.8), "ViT-B-16": (11.3, 64.8), "ViT-L-14": (7.9, 72.5)},
}
# method -> model -> (mean single-task, multi-task addition); random-init row: single only.
TABLE3_RANDOM_INIT: dict[str, dict[str, tuple[float, float | None]]] = {
    "pretrained": {"ViT-B-32": (5.3, None), "ViT-B-16": (4.8, None), "ViT-L-14": (5.2, None)},
    "nonlinear": {"ViT-B-32": (48.5, 5.5), "ViT-B-16": (40.6, 4.5), "ViT-L-14": (18.0, 4.8)},
    "linear": {"ViT-B-32": (27.8, 3.8), "ViT-B-16": (24.7, 4.0), "ViT-L-14": (24.8, 6.1)},
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


def comparison_tables(results: dict[str, Any]) -> str:
    """Markdown: our Table 1 and Table 2 numbers beside the paper's, for a run of a paper model
    (results.json layout of taskvec.pipeline). Empty string when the run's backbone is not one
    the paper reports, or the run did not evaluate the paper's eight tasks."""
    config = results.get("config", {})
    model = paper_model(str(config.get("backbone", "")))
    if model is None:
        return ""
    add, neg = results.get("addition", {}), results.get("negation", {})
    lines = [f"## Beside the paper ({model}, OpenAI weights)", "",
             "Test accuracy, %. Paper: Ortiz-Jimenez et al. (NeurIPS 2023), Tables 1 and 2.", "",
             "Task addition of the eight tasks: absolute / normalized accuracy.", "",
             "| method | ours | paper | Δ absolute |", "|---|---|---|---|"]
    for m in METHODS:
        if m not in add:
            continue
        ours_abs, ours_norm = add[m].get("absolute"), add[m].get("normalized")
        paper_abs, paper_norm = TABLE1_ADDITION[m][model]
        delta = "–" if ours_abs is None else f"{100 * ours_abs - paper_abs:+.1f}"
        lines.append(f"| {LABELS[m]} | {_pct(ours_abs)} / {_pct(ours_norm)} | {_num(paper_abs)} / {_num(paper_norm)} | {delta} |")
    lines += ["", "Task negation, mean over the targets: target (lower is better) / control.", "",
              "| method | ours | paper | Δ target |", "|---|---|---|---|"]
    for m in METHODS:
        if m not in neg:
            continue
        ours_t, ours_c = neg[m].get("target"), neg[m].get("control")
        paper_t, paper_c = TABLE2_NEGATION[m][model]
        delta = "–" if ours_t is None else f"{100 * ours_t - paper_t:+.1f}"
        lines.append(f"| {LABELS[m]} | {_pct(ours_t)} / {_pct(ours_c)} | {_num(paper_t)} / {_num(paper_c)} | {delta} |")
    tasks = results.get("tasks", [])
    if sorted(tasks) != sorted(("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN")):
        lines += ["", f"Note: this run's tasks ({', '.join(tasks)}) are not the paper's eight; the numbers are not comparable."]
    return "\n".join(lines) + "\n"
