"""What the report's tables and figures share: which evaluation methods to show (in registry
order), means over a mode's fine-tunes, and how one value is written in a table cell."""

from __future__ import annotations

from ..kinds import EVAL_METHODS, EvalMethod
from ..results import MergeResult, NegationTarget, RunResults


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _methods(names) -> list[EvalMethod]:
    """The evaluation methods among `names`, in registry order."""
    return [m for m in EVAL_METHODS if m.name in names]


def _editing(results: RunResults) -> list[EvalMethod]:
    return [m for m in _methods(results.single_task.test) if m.edits]


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


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _mean_cost(results: RunResults, mode, field: str) -> float | None:
    """A FinetuneCost field of `mode`, averaged over its tasks' fine-tunes (None if not recorded)."""
    return _mean([getattr(c, field) for c in results.cost.get(mode.name, {}).values()])


def _with_ratio(value: float | None, reference: float | None, fmt: str) -> str:
    if value is None:
        return "–"
    ratio = f" ({value / reference:.2f}×)" if reference else ""
    return f"{value:{fmt}}{ratio}"


def _count(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _negation_cell(entry: NegationTarget) -> str:
    return f"{pct(entry.target)} ({entry.alpha:.2f})" if entry.feasible else "no feasible α"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"
