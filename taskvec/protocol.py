"""Runs made of runs: the same benchmark repeated over seeds, and the learning-rate grid of
`taskvec tune`.

Both are one stage graph (walked by the run and by its dry run alike) that includes the stage
graph of every sub-run under a prefix (`seed-1/finetune/mnist.linear`), each sub-run in its own
directory with its own config.json, followed by a stage that reads the sub-runs' results: the
mean ± std report of the seeds, or the choice of the tuning grid.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import AnalysisConfig, MergeConfig, RunConfig, TrainModes, TuneConfig, seed_config
from .distributed import is_main
from .errors import TaskvecError
from .io import write_text
from .kinds import FINETUNE_MODES, method_for_vector
from .merging import TASK_ARITHMETIC
from .pipeline import FINETUNE, HEADS, Log, RunContext, RunDir, build_graph, newer_than, run_modes, session
from .results import MergeResult, SingleTask
from .stages import Graph, Outcome, Stage, execute
from .tuning import TUNE_CRITERIA, TunePoint, TuneResult, render_markdown, tune_modes


@dataclass(frozen=True)
class SubRun:
    """One run inside a larger graph: its config, its directory and its stages' key prefix."""

    prefix: str
    cfg: RunConfig
    dir: RunDir


class SubRuns:
    """The context of a graph of sub-runs: one RunContext per sub-run, built when its first
    stage computes. Only the latest is kept, since stages come sub-run by sub-run and each holds
    a model, data and caches of its own."""

    def __init__(self, log: Log, progress: bool):
        self.outcome = Outcome()
        self.progress = progress
        self._log = log
        self._current: tuple[str, RunContext] | None = None

    def log(self, message: str) -> None:
        if is_main():
            self._log(message)

    def context(self, run: SubRun) -> RunContext:
        if self._current is None or self._current[0] != run.prefix:
            self._current = (run.prefix, RunContext(run.cfg, run.dir, self._log, self.progress, outcome=self.outcome, prefix=run.prefix))
        return self._current[1]


def _include(graph: Graph, run: SubRun, keep: Callable[[Stage], bool] = lambda s: True) -> None:
    graph.include(build_graph(run.cfg, run.dir), run.prefix, lambda parent, r=run: parent.context(r), keep)


# ----- seeds -------------------------------------------------------------------------------------

SEEDS = "seeds"


def seed_runs(cfg: RunConfig, run_dir: RunDir) -> list[SubRun]:
    assert cfg.seeds is not None
    return [SubRun(f"seed-{s}/", seed_config(cfg, s), run_dir.nested(f"seed-{s}")) for s in cfg.seeds]


def seeds_graph(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """Every seed's full run (its own report in seed-<s>/), then the mean ± std report."""
    runs = seed_runs(cfg, run_dir)
    graph = Graph()
    for run in runs:
        _include(graph, run)
    per_seed = [run.dir.results for run in runs]
    graph.add(Stage(SEEDS, f"report over {len(runs)} seeds ({', '.join(map(str, cfg.seeds or []))}): mean ± std, claims",
                    [run_dir.results, run_dir.report], lambda ctx: _seeds_report(cfg, run_dir, runs), settings=[r.prefix for r in runs],
                    after=tuple(graph.keys()), current=lambda: newer_than(run_dir.results, per_seed),
                    detail="results.json (per-seed values, mean ± std), report.md, figures with error bars"))
    return graph


def _seeds_report(cfg: RunConfig, run_dir: RunDir, runs: list[SubRun]) -> list[str]:
    from .results import RunResults
    from .seeds import aggregate, write_seeds_report

    results = aggregate(cfg, {r.cfg.data.seed: (r.dir.root.name, RunResults.load(r.dir.results)) for r in runs})
    results.save(run_dir.results)
    write_seeds_report(results, run_dir.root)
    return [run_dir.results.name, run_dir.report.name]


# ----- the learning-rate grid ----------------------------------------------------------------------

TUNE = "tune"
TUNE_STAGES = ("single_task", f"merge/{TASK_ARITHMETIC.name}")


def tune_point_config(cfg: RunConfig, mode: str, lr: float, steps: int) -> RunConfig:
    """A grid point: one mode at one learning rate and length, scored by the single-task stage
    and task addition (no other merge method, negation or analysis)."""
    train = cfg.train[mode]
    warmup = min(train.warmup_steps, steps)
    return dataclasses.replace(
        cfg, name=f"{cfg.name}-tune-{mode}-lr{lr:g}-{steps}", seeds=None,
        train=TrainModes(modes={mode: dataclasses.replace(train, lr=lr, steps=steps, warmup_steps=warmup)}),
        merge=MergeConfig(methods=(TASK_ARITHMETIC.name,)), analysis=AnalysisConfig(), tune=TuneConfig())


@dataclass(frozen=True)
class GridPoint:
    mode: str
    lr: float
    steps: int
    run: SubRun


def tune_grid(cfg: RunConfig, run_dir: RunDir) -> list[GridPoint]:
    """Every (mode, lr, steps) of cfg.tune, each a sub-run in <mode>/lr<lr>-<steps>/."""
    if cfg.train.steps or cfg.train.epochs:
        raise TaskvecError("taskvec tune tunes one length for all tasks: leave out train.steps and train.epochs tables")
    points = []
    for mode in cfg.train.modes:
        train = cfg.train[mode]
        for lr in cfg.tune.rates(mode, train.lr):
            for steps in sorted(cfg.tune.steps or [train.steps]):
                name = f"{mode}/lr{lr:g}-{steps}"
                points.append(GridPoint(mode, lr, steps, SubRun(f"{name}/", tune_point_config(cfg, mode, lr, steps), run_dir.nested(name))))
    return points


def tune_graph(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """Each grid point's fine-tunes, single-task accuracy and task addition; then the choice."""
    grid = tune_grid(cfg, run_dir)
    graph = Graph()
    for point in grid:
        _include(graph, point.run, keep=lambda s: s.key == HEADS or s.key.startswith(FINETUNE) or s.key in TUNE_STAGES)
    scored = [point.run.dir.stage(k) for point in grid for k in TUNE_STAGES]
    graph.add(Stage(TUNE, f"choose on validation among {len(grid)} grid points ({', '.join(TUNE_CRITERIA.names())})",
                    [run_dir.root / "tune.json", run_dir.root / "tune.md"], lambda ctx: _choose(cfg, run_dir, grid, ctx),
                    settings={"points": [p.run.prefix for p in grid], "criterion": cfg.tune.criterion}, result_type=TuneResult,
                    after=tuple(graph.keys()), current=lambda: newer_than(run_dir.root / "tune.json", scored),
                    detail=f"criterion for the config lines: {cfg.tune.criterion}; scores in tune.json and tune.md"))
    return graph


def score_point(single: SingleTask, addition: dict[str, MergeResult], point: GridPoint, tasks: list[str], run_dir: RunDir) -> TunePoint:
    """A grid point's validation scores from its single-task and addition stages."""
    method = method_for_vector(FINETUNE_MODES.get(point.mode))
    per_task = {t: single.val[method.name][t] for t in tasks}
    best = max(addition[method.name].curve, key=lambda p: (p.val_absolute, -p.alpha))
    return TunePoint(lr=point.lr, steps=point.steps, single_task=sum(per_task.values()) / len(per_task), per_task=per_task,
                     addition=best.val_absolute, addition_alpha=best.alpha,
                     run_dir=str(point.run.dir.root.relative_to(run_dir.root)),
                     test_single_task=sum(single.test[method.name][t] for t in tasks) / len(tasks),
                     test_addition=addition[method.name].absolute)


def _choose(cfg: RunConfig, run_dir: RunDir, grid: list[GridPoint], ctx: SubRuns) -> TuneResult:
    points: dict[str, list[TunePoint]] = {m: [] for m in cfg.train.modes}
    for point in grid:
        results = {k.removeprefix(point.run.prefix): v for k, v in ctx.outcome.results.items() if k.startswith(point.run.prefix)}
        points[point.mode].append(score_point(results["single_task"], results[TUNE_STAGES[1]], point, list(cfg.tasks), run_dir))
    result = TuneResult(criterion=cfg.tune.criterion, seed=cfg.data.seed, modes=tune_modes(points))
    if is_main():
        write_text(run_dir.root / "tune.md", render_markdown(result, {m.name: m.label for m in run_modes(cfg)}))
    return result


# ----- running them ------------------------------------------------------------------------------

def without_tuned(config: dict) -> dict:
    """A config (as data) without what `taskvec tune` chooses (each mode's lr and steps): a tuning
    directory stays valid when the config takes up its choice; each grid point's own directory
    keeps the exact settings it was trained with."""
    train = dict(config["train"])
    for mode in train["modes"]:
        train[mode] = {k: v for k, v in train[mode].items() if k not in ("lr", "steps")}
    return {**config, "train": train}


def run_nested(graph: Graph, cfg: RunConfig, run_dir: RunDir, runs: list[SubRun], log: Log, progress: bool,
               select: Callable[[Stage], bool] = lambda s: True, compared: Callable[[dict], dict] = lambda data: data,
               sharded: bool = False) -> SubRuns:
    """Execute a graph of sub-runs: each directory checked against (or stamped with) its config."""
    ctx = SubRuns(log, progress)
    with run_dir.locked(shared=sharded):  # the sub-runs' directories lie inside it
        run_dir.check_config(cfg, compared)
        for run in runs:
            run.dir.root.mkdir(parents=True, exist_ok=True)
            run.dir.check_config(run.cfg)
        execute(graph, ctx, main=is_main(), select=select)
    return ctx


def run_tune(cfg: RunConfig, out: str | Path, log: Log = print, progress: bool = True) -> TuneResult | None:
    """`taskvec tune`: the grid's sub-runs (finished points are reused) and the choice. Under
    torchrun every rank fine-tunes and evaluates together; ranks other than 0 return None."""
    run_dir = RunDir(out)
    with session(cfg):
        ctx = run_nested(tune_graph(cfg, run_dir), cfg, run_dir, [p.run for p in tune_grid(cfg, run_dir)], log, progress,
                         compared=without_tuned)
    return ctx.outcome.results.get(TUNE)
