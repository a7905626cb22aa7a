"""A benchmark repeated over seeds: every table as mean ± std with each seed's value, the
claims checked against the spreads, figures with error bars.

`aggregate` reads the runs of each seed (their RunResults) into a `SeedResults`, which is what
the run directory's results.json holds; `write_seeds_report` draws report.md and its figures
from it alone. Each seed's own full report stays in seed-<s>/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .claims import ClaimCheck, Spread, check_claims, claims_table, format_spread  # noqa: E402
from .config import RunConfig  # noqa: E402
from .errors import TaskvecError  # noqa: E402
from .io import write_json, write_text  # noqa: E402
from .kinds import EVAL_METHODS, PRETRAINED, EvalMethod  # noqa: E402
from .merging import MERGE_METHODS, TASK_ARITHMETIC  # noqa: E402
from .report.figures import _legend_outside, _save  # noqa: E402
from .results import RunResults, load_results  # noqa: E402
from .typed import to_data  # noqa: E402

FORMAT = "taskvec.seeds/1"


@dataclass
class MergeSpread:
    absolute: Spread
    normalized: Spread
    alpha: Spread


@dataclass
class NegationSpread:
    """Mean target and control test accuracy over the feasible targets, per seed; and each
    seed's targets without a feasible α."""

    target: Spread
    control: Spread
    infeasible: list[list[str]] = field(default_factory=list)


@dataclass
class CurveSpread:
    """Task addition's validation sweep (mean normalized accuracy) at each α, over seeds."""

    alphas: list[float]
    val_normalized: list[Spread]


@dataclass
class RandomInitSpread:
    single_task: dict[str, Spread]
    multi_task: dict[str, Spread]


@dataclass
class SeedResults:
    """results.json of a multi-seed run. Keys name registered kinds, as in RunResults."""

    config: RunConfig
    seeds: list[int]
    runs: dict[str, str]  # seed -> its run directory (relative)
    tasks: list[str]
    single_task: dict[str, dict[str, Spread]]  # evaluation method -> task -> test accuracy
    single_task_mean: dict[str, Spread]  # evaluation method -> mean over the tasks
    merge: dict[str, dict[str, MergeSpread]]  # merge method -> evaluation method
    negation: dict[str, NegationSpread]
    addition_curve: dict[str, CurveSpread]
    claims: list[ClaimCheck]
    disentanglement: dict[str, dict[str, Spread]] | None = None  # pair -> method -> mean ξ over the grid
    ntk: dict[str, Spread] | None = None  # model -> localization
    random_init: RandomInitSpread | None = None
    format: str = FORMAT

    def save(self, path: str | Path) -> None:
        write_json(path, to_data(self))

    @classmethod
    def load(cls, path: str | Path) -> SeedResults:
        return load_results(cls, path, FORMAT, "no multi-seed results")


class _Reading(Protocol):
    """Reads one figure of a run (a Protocol, not a Callable: mypy then accepts lambdas binding loop variables as defaults)."""

    def __call__(self, run: RunResults, /) -> float | None: ...


def _over(runs: Sequence[RunResults], get: _Reading) -> Spread:
    def safe(r: RunResults) -> float | None:
        try:
            return get(r)
        except (KeyError, AttributeError, TypeError):
            return None

    return Spread.of([safe(r) for r in runs])


def aggregate(cfg: RunConfig, runs: dict[int, tuple[str, RunResults]]) -> SeedResults:
    """The seeds' runs as mean ± std tables (the runs must share tasks and methods)."""
    seeds = list(runs)
    results = [r for _, r in runs.values()]
    first = results[0]
    for seed, (_, r) in runs.items():
        if r.tasks != first.tasks or set(r.single_task.test) != set(first.single_task.test):
            raise TaskvecError(f"seed {seed}'s run has other tasks or methods than seed {seeds[0]}'s")
    tasks, methods = first.tasks, list(first.single_task.test)
    single = {m: {t: _over(results, lambda r, m=m, t=t: r.single_task.test[m][t]) for t in tasks} for m in methods}
    single_mean = {m: _over(results, lambda r, m=m: r.mean_single(EVAL_METHODS.get(m))) for m in methods}
    merge = {
        g: {
            m: MergeSpread(
                *(_over(results, lambda r, g=g, m=m, f=f: getattr(r.merge[g][m], f)) for f in ("absolute", "normalized", "alpha"))
            )
            for m in by_method
        }
        for g, by_method in first.merge.items()
    }
    negation = {
        m: NegationSpread(
            _over(results, lambda r, m=m: r.negation[m].target),
            _over(results, lambda r, m=m: r.negation[m].control),
            [list(r.negation[m].infeasible) if m in r.negation else [] for r in results],
        )
        for m in first.negation
    }
    curves = {}
    for m, add in first.merge.get(TASK_ARITHMETIC.name, {}).items():
        alphas = [p.alpha for p in add.curve]
        curves[m] = CurveSpread(
            alphas,
            [_over(results, lambda r, m=m, i=i: r.merge[TASK_ARITHMETIC.name][m].curve[i].val_normalized) for i in range(len(alphas))],
        )
    xi = (
        {
            pair: {m: _over(results, lambda r, p=pair, m=m: r.disentanglement[p][m].mean()) for m in by_method}
            for pair, by_method in first.disentanglement.items()
        }
        if first.disentanglement
        else None
    )
    ntk = {label: _over(results, lambda r, k=label: r.ntk.models[k].localization) for label in first.ntk.models} if first.ntk else None
    ri = first.random_init
    random_init = (
        RandomInitSpread(
            {m: _over(results, lambda r, m=m: r.random_init.single_task[m]) for m in ri.single_task},
            {m: _over(results, lambda r, m=m: r.random_init.multi_task[m]) for m in ri.multi_task},
        )
        if ri is not None
        else None
    )
    return SeedResults(
        config=cfg,
        seeds=seeds,
        runs={str(s): d for s, (d, _) in runs.items()},
        tasks=tasks,
        single_task=single,
        single_task_mean=single_mean,
        merge=merge,
        negation=negation,
        addition_curve=curves,
        claims=check_claims(results),
        disentanglement=xi,
        ntk=ntk,
        random_init=random_init,
    )


# ----- report ------------------------------------------------------------------------------------


def _p(s: Spread) -> str:
    return format_spread(s, points=True)


def _methods(names) -> list[EvalMethod]:
    return [m for m in EVAL_METHODS if m.name in names]


def _values(s: Spread, points: bool = True) -> str:
    return ", ".join("–" if v is None else (f"{100 * v:.1f}" if points else f"{v:.2f}") for v in s.values)


def _bars(ax, groups: list[str], series: list[tuple[str, str, list[Spread]]]) -> None:
    """Grouped bars of means with ±std error bars."""
    width = 0.8 / max(1, len(series))
    for i, (label, color, spreads) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        means = [100 * (s.mean or 0.0) for s in spreads]
        errors = [100 * (s.std or 0.0) for s in spreads]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=label, color=color, error_kw={"lw": 0.8})
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(axis="y", alpha=0.3)


def plot_single_task(results: SeedResults, path: Path) -> None:
    tasks = results.tasks
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(tasks), 3.4))
    _bars(ax, tasks, [(m.label, m.color, [results.single_task[m.name][t] for t in tasks]) for m in _methods(results.single_task)])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Single-task accuracy, mean ± std over {len(results.seeds)} seeds")
    _legend_outside(ax)
    _save(fig, path)


def plot_merge_methods(results: SeedResults, path: Path) -> None:
    merges = [MERGE_METHODS.get(g) for g in results.merge]
    methods = _methods({m for by in results.merge.values() for m in by})
    fig, axes = plt.subplots(2, 1, figsize=(2.0 + 1.05 * len(merges) * max(1, len(methods)) / 3, 6.0), sharex=True)
    missing = Spread(None, None, [])
    for ax, what in zip(axes, ("absolute", "normalized")):
        _bars(
            ax,
            [g.label for g in merges],
            [
                (
                    m.label,
                    m.color,
                    [getattr(results.merge[g.name][m.name], what) if m.name in results.merge[g.name] else missing for g in merges],
                )
                for m in methods
            ],
        )
        ax.set_ylabel(f"{what} test accuracy (%)")
    pre = results.single_task_mean.get(PRETRAINED.name)
    if pre is not None and pre.mean is not None:
        axes[0].axhline(100 * pre.mean, color=PRETRAINED.color, ls="--", lw=1, label=PRETRAINED.label)
    axes[0].set_title(f"Merging {len(results.tasks)} task vectors, mean ± std over {len(results.seeds)} seeds")
    axes[1].tick_params(axis="x", labelrotation=30)
    _legend_outside(axes[0])
    _save(fig, path)


def plot_addition_curves(results: SeedResults, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for m in _methods(results.addition_curve):
        curve = results.addition_curve[m.name]
        mean = [100 * (s.mean or 0.0) for s in curve.val_normalized]
        std = [100 * (s.std or 0.0) for s in curve.val_normalized]
        ax.plot(curve.alphas, mean, marker="o", ms=3, label=m.label, color=m.color)
        ax.fill_between(curve.alphas, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], color=m.color, alpha=0.2)
    ax.set_xlabel("α (θ0 + α Σ τ_t)")
    ax.set_ylabel("mean normalized val. accuracy (%)")
    ax.set_title(f"Task addition: α sweep, mean ± std over {len(results.seeds)} seeds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def render_markdown(results: SeedResults) -> str:
    """The seeds' report.md: the same tables as one run's report, each value a spread over the seeds."""
    cfg, tasks, n = results.config, results.tasks, len(results.seeds)
    lines = _header(results, cfg, tasks, n)
    lines += claims_table(results.claims, n)
    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    lines += _addition_table(results, addition)
    lines += _negation_table(results)
    lines += _single_task_table(results, tasks)
    lines += _merge_table(results)
    lines += _analysis_tables(results)
    lines += ["## Figures", "", "![single-task accuracy](figures/single_task.png)", ""]
    if addition:
        lines += ["![addition sweep](figures/addition_alpha.png)", "", "*Band: ± one std over the seeds.*", ""]
    return "\n".join(lines) + "\n"


def _header(results: SeedResults, cfg, tasks: list[str], n: int) -> list[str]:
    """Title, backbone, tasks, the seeds and where each seed's own report is."""
    seeds = ", ".join(map(str, results.seeds))
    return [
        f"# taskvec report: {cfg.name}, {n} seeds",
        "",
        f"Backbone `{cfg.backbone}` ({cfg.init}), tasks: {', '.join(tasks)}. Seeds {seeds}: each seed sets the split, "
        "the fine-tunes' data order and any sampling. Every number is mean ± sample std over the seeds, test accuracy in %; "
        "the per-seed values are in results.json, each seed's full report in its directory: "
        + ", ".join(f"[{d}]({d}/report.md)" for d in results.runs.values())
        + ".",
        "",
    ]


def _addition_table(results: SeedResults, addition: dict) -> list[str]:
    """Table 1 (none when the runs merged nothing), with each seed's α."""
    if not addition:
        return []
    lines = [
        "## Table 1: task addition (absolute / normalized)",
        "",
        "α chosen on validation per seed (values listed).",
        "",
        "| method | absolute | normalized | α per seed |",
        "|---|---|---|---|",
        f"| {PRETRAINED.label} | {_p(results.single_task_mean[PRETRAINED.name])} | – | – |",
    ]
    for m in _methods(addition):
        a = addition[m.name]
        lines.append(f"| {m.label} | {_p(a.absolute)} | {_p(a.normalized)} | {_values(a.alpha, points=False)} |")
    lines.append("")
    return lines


def _negation_table(results: SeedResults) -> list[str]:
    """Table 2, with the targets that had no feasible α, per seed."""
    lines = [
        "## Table 2: task negation (target ↓ / control)",
        "",
        "Mean over the targets with a feasible α, per seed; then mean ± std over the seeds.",
        "",
        "| method | target | control | targets without a feasible α |",
        "|---|---|---|---|",
    ]
    for m in _methods(results.negation):
        neg = results.negation[m.name]
        infeasible = "; ".join(f"seed {s}: {', '.join(t)}" for s, t in zip(results.seeds, neg.infeasible) if t) or "none"
        lines.append(f"| {m.label} | {_p(neg.target)} | {_p(neg.control)} | {infeasible} |")
    return lines


def _single_task_table(results: SeedResults, tasks: list[str]) -> list[str]:
    lines = ["", "## Single-task accuracy", "", "| method | mean | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for m in _methods(results.single_task):
        lines.append(
            f"| {m.label} | {_p(results.single_task_mean[m.name])} | "
            + " | ".join(_p(results.single_task[m.name][t]) for t in tasks)
            + " |"
        )
    return lines


def _merge_table(results: SeedResults) -> list[str]:
    methods = _methods({m for by in results.merge.values() for m in by})
    lines = [
        "",
        "## Merge methods (absolute / normalized)",
        "",
        "Settings and α chosen on validation per seed, as in each seed's report.",
        "",
        "| merge method | " + " | ".join(m.label for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for g, by in results.merge.items():
        lines.append(
            f"| {MERGE_METHODS.get(g).label} | "
            + " | ".join(f"{_p(by[m.name].absolute)} / {_p(by[m.name].normalized)}" if m.name in by else "–" for m in methods)
            + " |"
        )
    return lines + ["", "![merge methods](figures/merge_methods.png)", ""]


def _analysis_tables(results: SeedResults) -> list[str]:
    """Disentanglement, NTK localization and random init, each when the runs computed it."""
    lines: list[str] = []
    if results.disentanglement:
        lines += ["## Weight disentanglement: mean ξ over the grid", "", "| pair | method | mean ξ | per seed |", "|---|---|---|---|"]
        for pair, by in results.disentanglement.items():
            lines += [f"| {pair} | {m.label} | {format_spread(by[m.name], False)} | {_values(by[m.name], False)} |" for m in _methods(by)]
        lines.append("")
    if results.ntk:
        lines += ["## NTK eigenfunction localization", "", "| model | localization | per seed |", "|---|---|---|"]
        lines += [f"| {label} | {format_spread(s, False)} | {_values(s, False)} |" for label, s in results.ntk.items()]
        lines.append("")
    if results.random_init is not None:
        ri = results.random_init
        lines += ["## From random initialization (Table 3)", "", "| method | single-task | multi-task |", "|---|---|---|"]
        lines += [
            f"| {'Random init' if m is PRETRAINED else m.label} | {_p(ri.single_task[m.name])} | "
            f"{_p(ri.multi_task[m.name]) if m.name in ri.multi_task else '–'} |"
            for m in _methods(ri.single_task)
        ]
        lines.append("")
    return lines


def write_seeds_report(results: SeedResults, out: str | Path) -> Path:
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_single_task(results, figures / "single_task.png")
    plot_merge_methods(results, figures / "merge_methods.png")
    if results.addition_curve:
        plot_addition_curves(results, figures / "addition_alpha.png")
    write_text(out / "report.md", render_markdown(results))
    return out / "report.md"
