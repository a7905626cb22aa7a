"""report.md and PNG figures from a run's typed results: the paper's Tables 1 and 2 in
miniature, the merge-method table, and the analyses. Labels and colours come from the
registries of evaluation and merge methods.

The package: `figures` (the PNGs), `markdown` (report.md's text and its main tables),
`sections` (the merge-method, fine-tuning-mode, analysis and timing sections) and `cells`
(what tables and figures share: which methods to show, how a value is written).
"""

from __future__ import annotations

from pathlib import Path

from ..io import write_text
from ..merging import TASK_ARITHMETIC
from ..results import RunResults
from .cells import pct
from .figures import (
    plot_addition_curves,
    plot_merge_methods,
    plot_modes_cost,
    plot_negation_curves,
    plot_nonlinear_advantage,
    plot_single_task,
)
from .markdown import render_markdown

__all__ = [
    "pct",
    "plot_addition_curves",
    "plot_merge_methods",
    "plot_modes_cost",
    "plot_negation_curves",
    "plot_nonlinear_advantage",
    "plot_single_task",
    "render_markdown",
    "write_report",
]


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
