"""Choosing fine-tuning hyperparameters on validation (`taskvec tune`).

Each point of the grid (a mode, a learning rate, a number of steps) fine-tunes every task and
is scored on the validation splits by every registered criterion: the usual practice
(single-task accuracy) and the one task arithmetic cares about (multi-task accuracy after
addition). The choice per criterion, every point's scores, and the rows where all modes share a
learning rate (the paper's protocol) are saved and shown. Test accuracy is never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import TaskvecError
from .registry import Kind, Registry


@dataclass
class TunePoint:
    """One grid point of one mode, scored on validation: the mean over tasks of each task's own
    fine-tuned model (α = 1), and task addition's mean accuracy at the α the benchmark picks (its
    best mean normalized validation accuracy; `protocol.score_point` says why the score itself is
    absolute)."""

    lr: float
    steps: int
    single_task: float
    per_task: dict[str, float]
    addition: float
    addition_alpha: float
    run_dir: str
    # Test accuracy of the same models (single-task mean; task addition at the α the benchmark's
    # protocol picks), reported beside the shared-rate rows and never used to choose.
    test_single_task: float | None = None
    test_addition: float | None = None

    @property
    def label(self) -> str:
        return f"lr {self.lr:g}, {self.steps} steps"


@dataclass(frozen=True)
class TuneCriterion(Kind):
    """A validation score of a grid point; higher is better."""

    score: Callable[[TunePoint], float] = lambda point: math.nan


TUNE_CRITERIA: Registry[TuneCriterion] = Registry("tuning criterion")
SINGLE_TASK = TUNE_CRITERIA.register(
    TuneCriterion(
        name="single-task",
        label="single-task val.",
        color="#1f77b4",
        description="mean validation accuracy of each task's own fine-tuned model (α = 1): the usual practice",
        score=lambda p: p.single_task,
    )
)
ADDITION = TUNE_CRITERIA.register(
    TuneCriterion(
        name="addition",
        label="addition val.",
        color="#d62728",
        description="mean validation accuracy of task addition at the α the benchmark picks (best mean normalized validation accuracy): what task arithmetic needs",
        score=lambda p: p.addition,
    )
)


@dataclass
class ModeTuning:
    """Every grid point of one mode and, per criterion, the index of the point it chooses."""

    points: list[TunePoint]
    chosen: dict[str, int] = field(default_factory=dict)


@dataclass
class TuneResult:
    """`taskvec tune`'s outcome (tune.json): per mode its grid scored and chosen; `criterion` is
    the config's, whose choice the config lines print."""

    criterion: str
    seed: int
    modes: dict[str, ModeTuning]


def choose(points: list[TunePoint], criterion: TuneCriterion) -> int:
    """The index of the best point; ties go to the smaller learning rate, then fewer steps (the
    cheaper and more conservative setting)."""
    if not points:
        raise TaskvecError("cannot choose from an empty tuning grid")
    order = sorted(range(len(points)), key=lambda i: (-criterion.score(points[i]), points[i].lr, points[i].steps))
    return order[0]


def tune_modes(points: dict[str, list[TunePoint]]) -> dict[str, ModeTuning]:
    """Each mode's points with every criterion's choice."""
    return {mode: ModeTuning(ps, {c.name: choose(ps, c) for c in TUNE_CRITERIA}) for mode, ps in points.items()}


def shared_rates(result: TuneResult) -> list[float]:
    """Learning rates every mode was tried at (with equal steps): where the modes compare under
    the paper's protocol, one rate for all."""
    if not result.modes:
        return []
    sets = [{(p.lr, p.steps) for p in m.points} for m in result.modes.values()]
    common = set.intersection(*sets)
    return sorted({lr for lr, _ in common})


def at_edge(tuning: ModeTuning, index: int) -> str:
    """' ↑' / ' ↓' when the point has the largest / smallest rate of a grid of several: the
    best rate may lie outside the grid."""
    rates = sorted({p.lr for p in tuning.points})
    lr = tuning.points[index].lr
    if len(rates) < 2:
        return ""
    return " ↑" if lr == rates[-1] else " ↓" if lr == rates[0] else ""


def config_lines(result: TuneResult, criterion: TuneCriterion) -> list[str]:
    """The chosen settings as TOML to paste into a config."""
    lines = []
    for mode, tuning in result.modes.items():
        point = tuning.points[tuning.chosen[criterion.name]]
        lines += [f"[train.{mode}]", f"lr = {point.lr:g}", f"steps = {point.steps}"]
    return lines


def render_markdown(result: TuneResult, labels: dict[str, str]) -> str:
    """tune.md: every point's validation scores, the choice of each criterion, the shared-rate
    rows and the config lines. `labels`: mode name -> label."""

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = [
        "# Learning rates chosen on validation",
        "",
        f"Seed {result.seed}. Every task fine-tuned at each grid point; scores on the validation splits only "
        "(test is never read). Criteria: "
        + "; ".join(f"**{c.name}**: {c.description}" for c in TUNE_CRITERIA)
        + ". Ties go to the smaller learning rate. ↑ / ↓: the choice is the largest / smallest rate of its grid, "
        "so a better one may lie outside it.",
        "",
    ]
    for mode, tuning in result.modes.items():
        tasks = list(tuning.points[0].per_task) if tuning.points else []
        lines += [
            f"## {labels.get(mode, mode)}",
            "",
            "| lr | steps | single-task val. | addition val. (α) | " + " | ".join(tasks) + " | chosen by |",
            "|---|---|---|---|" + "---|" * len(tasks) + "---|",
        ]
        for i, p in enumerate(tuning.points):
            by = ", ".join(c + at_edge(tuning, i) for c, j in tuning.chosen.items() if j == i)
            lines.append(
                f"| {p.lr:g} | {p.steps} | {pct(p.single_task)} | {pct(p.addition)} ({p.addition_alpha:.2f}) | "
                + " | ".join(pct(p.per_task[t]) for t in tasks)
                + f" | {by} |"
            )
        lines.append("")
    rates = shared_rates(result)
    if len(result.modes) > 1:
        lines += ["## One learning rate for every mode (the paper's protocol)", ""]
        if rates:
            modes = list(result.modes)
            lines += [
                "Validation scores, and the test accuracy of the same models (single-task mean; task addition at "
                "the α the benchmark picks on validation), which no choice above reads.",
                "",
                "| lr | " + " | ".join(f"{labels.get(m, m)}: single-task / addition val. | test" for m in modes) + " |",
                "|---|" + "---|---|" * len(modes),
            ]
            for lr in rates:
                cells = []
                for m in modes:
                    p = next(p for p in result.modes[m].points if p.lr == lr)
                    test = (
                        f"{pct(p.test_single_task)} / {pct(p.test_addition)}"
                        if p.test_single_task is not None and p.test_addition is not None
                        else "–"
                    )
                    cells.append(f"{pct(p.single_task)} / {pct(p.addition)} | {test}")
                lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
        else:
            lines.append("No learning rate was tried for every mode: add a shared rate to each mode's grid to see this comparison.")
        lines.append("")
    lines += ["## Config lines", ""]
    for c in TUNE_CRITERIA:
        mark = " (this config's criterion)" if c.name == result.criterion else ""
        lines += [f"Chosen by {c.name}{mark}:", "", "```toml", *config_lines(result, c), "```", ""]
    return "\n".join(lines)
