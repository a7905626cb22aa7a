"""What `taskvec run` and `taskvec tune` execute, and what their dry runs print: one stage graph
per command, walked by the run and by its dry run alike.

A config with `seeds` is the benchmark repeated over seeds; `taskvec tune` is its learning-rate
grid. Both include the benchmark's graph of every sub-run under a prefix (`seed-1/finetune/
mnist.linear`), each sub-run in its own directory with its own config.json, followed by a stage
that reads the sub-runs' results: the mean ± std report of the seeds, or the choice of the
tuning grid. Every directory a graph writes into is checked against its config before anything
runs, by the run and by the dry run alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import AnalysisConfig, MergeConfig, RunConfig, TrainModes, TuneConfig, seed_config
from .distributed import is_main, shard_units
from .edits import best_point
from .errors import TaskvecError
from .io import write_text
from .kinds import FINETUNE_MODES, method_for_vector
from .merging import TASK_ARITHMETIC
from .pipeline import graph as benchmark
from .pipeline.context import Contexts, Log, Roles, RunContext, SubRun
from .pipeline.keys import FINETUNE, HEADS, SINGLE_TASK, merge_key
from .pipeline.plan import PlannedStage, plan_graph
from .pipeline.rundir import RunDir
from .pipeline.session import session
from .pipeline.stages import Graph, ResultKey, Stage, execute
from .results import MergeResult, RunResults, SingleTask
from .seeds import SeedResults
from .tuning import TUNE_CRITERIA, TunePoint, TuneResult, render_markdown, tune_modes


def _include(graph: Graph, run: SubRun, keep: Callable[[Stage], bool] = lambda s: True) -> None:
    graph.include(benchmark.build_graph(run.cfg, run.dir), run.prefix, lambda parent: parent.context(run), keep)


def graph_for(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """`taskvec run`'s graph: the benchmark once, or once per seed and the seeds' report."""
    return seeds_graph(cfg, run_dir) if cfg.seeds is not None else benchmark.build_graph(cfg, run_dir)


# ----- seeds -------------------------------------------------------------------------------------

SEEDS = "seeds"


def seed_runs(cfg: RunConfig, run_dir: RunDir) -> list[SubRun]:
    assert cfg.seeds is not None
    return [SubRun(f"seed-{s}/", seed_config(cfg, s), run_dir.nested(f"seed-{s}")) for s in cfg.seeds]


def seeds_graph(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """Every seed's full run (its own report in seed-<s>/), then the mean ± std report."""
    runs = seed_runs(cfg, run_dir)
    graph = Graph(workspaces=[run_dir.made_for(cfg)])
    for run in runs:
        _include(graph, run)
    per_seed = [run.dir.results for run in runs]
    graph.add(
        Stage(
            SEEDS,
            f"report over {len(runs)} seeds ({', '.join(map(str, cfg.seeds or []))}): mean ± std, claims",
            [run_dir.results, run_dir.report],
            lambda ctx: _seeds_report(cfg, run_dir, runs),
            settings=[r.prefix for r in runs],
            after=tuple(graph.keys()),
            current=lambda: benchmark.newer_than(run_dir.results, per_seed),
            detail="results.json (per-seed values, mean ± std), report.md, figures with error bars",
        )
    )
    return graph


def _seeds_report(cfg: RunConfig, run_dir: RunDir, runs: list[SubRun]) -> list[str]:
    from .seeds import aggregate, write_seeds_report

    results = aggregate(cfg, {r.cfg.data.seed: (r.dir.root.name, RunResults.load(r.dir.results)) for r in runs})
    results.save(run_dir.results)
    write_seeds_report(results, run_dir.root)
    return [run_dir.results.name, run_dir.report.name]


# ----- the learning-rate grid ----------------------------------------------------------------------

TUNE: ResultKey[TuneResult] = ResultKey("tune", TuneResult)  # kept in tune.json
ADDITION = merge_key(TASK_ARITHMETIC)
TUNE_STAGES = (SINGLE_TASK.name, ADDITION.name)  # what scores a grid point


def tune_point_config(cfg: RunConfig, mode: str, lr: float, steps: int) -> RunConfig:
    """A grid point: one mode at one learning rate and length, scored by the single-task stage
    and task addition (no other merge method, negation or analysis)."""
    train = cfg.train[mode]
    warmup = min(train.warmup_steps, steps)
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name}-tune-{mode}-lr{lr:g}-{steps}",
        seeds=None,
        train=TrainModes(modes={mode: dataclasses.replace(train, lr=lr, steps=steps, warmup_steps=warmup)}),
        merge=MergeConfig(methods=(TASK_ARITHMETIC.name,)),
        analysis=AnalysisConfig(),
        tune=TuneConfig(),
    )


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


def without_tuned(config: dict) -> dict:
    """A config (as data) without what `taskvec tune` chooses (each mode's lr and steps): a tuning
    directory stays valid when the config takes up its choice; each grid point's own directory
    keeps the exact settings it was trained with."""
    train = dict(config["train"])
    for mode in train["modes"]:
        train[mode] = {k: v for k, v in train[mode].items() if k not in ("lr", "steps")}
    return {**config, "train": train}


def tune_graph(cfg: RunConfig, run_dir: RunDir) -> Graph:
    """Each grid point's fine-tunes, single-task accuracy and task addition; then the choice."""
    grid = tune_grid(cfg, run_dir)
    graph = Graph(workspaces=[run_dir.made_for(cfg, without_tuned)])
    for point in grid:
        _include(graph, point.run, keep=lambda s: s.key == HEADS or s.key.startswith(FINETUNE) or s.key in TUNE_STAGES)
    scored = [point.run.dir.stage(k) for point in grid for k in TUNE_STAGES]
    graph.add(
        Stage.keeping(
            TUNE,
            f"choose on validation among {len(grid)} grid points ({', '.join(TUNE_CRITERIA.names())})",
            [run_dir.root / "tune.json", run_dir.root / "tune.md"],
            lambda ctx: _choose(cfg, run_dir, grid, ctx),
            settings={"points": [p.run.prefix for p in grid], "criterion": cfg.tune.criterion},
            after=tuple(graph.keys()),
            current=lambda: benchmark.newer_than(run_dir.root / "tune.json", scored),
            detail=f"criterion for the config lines: {cfg.tune.criterion}; scores in tune.json and tune.md",
        )
    )
    return graph


def score_point(single: SingleTask, addition: dict[str, MergeResult], point: GridPoint, tasks: list[str], run_dir: RunDir) -> TunePoint:
    """A grid point's validation scores from its single-task and addition stages.

    Task addition's α is the benchmark's own (`edits.best_point`: best mean normalized validation
    accuracy), so the point is scored on the model the benchmark reports; the point's score is that
    model's absolute validation accuracy, because across grid points the normalized one divides by
    each point's own single-task accuracy and would favour the points that fine-tune worst."""
    method = method_for_vector(FINETUNE_MODES.get(point.mode))
    per_task = {t: single.val[method.name][t] for t in tasks}
    best = best_point(addition[method.name].curve)
    return TunePoint(
        lr=point.lr,
        steps=point.steps,
        single_task=sum(per_task.values()) / len(per_task),
        per_task=per_task,
        addition=best.val_absolute,
        addition_alpha=best.alpha,
        run_dir=str(point.run.dir.root.relative_to(run_dir.root)),
        test_single_task=sum(single.test[method.name][t] for t in tasks) / len(tasks),
        test_addition=addition[method.name].absolute,
    )


def _choose(cfg: RunConfig, run_dir: RunDir, grid: list[GridPoint], ctx: Contexts) -> TuneResult:
    points: dict[str, list[TunePoint]] = {m: [] for m in cfg.train.modes}
    for point in grid:
        scores = score_point(ctx.result(SINGLE_TASK, point.run), ctx.result(ADDITION, point.run), point, list(cfg.tasks), run_dir)
        points[point.mode].append(scores)
    result = TuneResult(criterion=cfg.tune.criterion, seed=cfg.data.seed, modes=tune_modes(points))
    if is_main():
        write_text(run_dir.root / "tune.md", render_markdown(result, {m.name: m.label for m in cfg.modes}))
    return result


# ----- running them, and their dry runs ------------------------------------------------------------


def run_graph(
    graph: Graph,
    run_dir: RunDir,
    ctx: Contexts,
    select: Callable[[Stage], bool] = lambda s: True,
    sharded: bool = False,
    intro: str = "",
) -> None:
    """Execute a graph in its run directory: held by this run, every directory checked against
    (then stamped with) its config, `intro` logged, then every stage that is not done."""
    with run_dir.locked(shared=sharded):
        graph.verify()
        graph.stamp()
        if intro:
            ctx.log(intro)
        execute(graph, ctx, main=is_main(), select=select)


def run_pipeline(
    cfg: RunConfig, out: str | Path, log: Log = print, progress: bool = True, shard: tuple[int, int] | None = None
) -> RunResults | SeedResults | None:
    """Every stage of the benchmark (of every seed); returns the results written to out/results.json.

    Under torchrun every rank fine-tunes together (DistributedDataParallel over the global
    batch) and evaluates together (each rank its share of every evaluation set, counts summed;
    results equal one process's), and rank 0 alone writes. `shard=(i, n)` fine-tunes only the i-th of n
    shares of the (task, mode) units and stops: several processes (one per GPU) can fill one run
    directory, and a final unsharded run then skips their vectors and evaluates. Returns None
    for a shard and on ranks other than 0.
    """
    run_dir = RunDir(out)
    graph = graph_for(cfg, run_dir)
    select: Callable[[Stage], bool] = lambda s: True  # noqa: E731
    if shard is not None:
        units = set(shard_units([s.key for s in graph if s.stored_key.startswith(FINETUNE)], *shard))
        select = lambda s: s.key in units  # noqa: E731
    with session(cfg):
        main = is_main()  # asked inside: after the session every process is alone
        if cfg.seeds is not None and main:
            log(f"{len(cfg.seeds)} seeds: {cfg.seeds}, each in {run_dir.root}/seed-<s>/")
        ctx = RunContext(cfg, run_dir, log, progress) if cfg.seeds is None else Contexts(log, progress)
        roles = Roles.of(cfg)
        intro = (
            ""
            if cfg.seeds is not None
            else f"backbone {cfg.backbone} ({cfg.init}); tasks {roles.tasks}; negation controls {roles.controls}"
        )
        run_graph(graph, run_dir, ctx, select, sharded=shard is not None, intro=intro)
        if shard is not None:
            ctx.log(f"fine-tuned shard {shard[0]}/{shard[1]}: {len(units)} (task, mode) units")
    if shard is not None or not main:
        return None
    return SeedResults.load(run_dir.results) if cfg.seeds is not None else RunResults.load(run_dir.results)


def run_tune(cfg: RunConfig, out: str | Path, log: Log = print, progress: bool = True) -> TuneResult | None:
    """`taskvec tune`: the grid's sub-runs (finished points are reused) and the choice. Under
    torchrun every rank fine-tunes and evaluates together; ranks other than 0 return None."""
    run_dir = RunDir(out)
    ctx = Contexts(log, progress)
    with session(cfg):
        run_graph(tune_graph(cfg, run_dir), run_dir, ctx)
    return ctx.result(TUNE) if ctx.has_result(TUNE) else None  # ranks other than 0 do not run it


def plan(graph: Graph, cfg: RunConfig, look: bool = True) -> list[PlannedStage]:
    """The dry run of `graph`: refused as the run would be when a directory holds a run of
    another config (`look`: there is a directory to look in), else each stage with its state."""
    if look:
        graph.verify()
    return plan_graph(cfg, graph, look=look)


def plan_run(cfg: RunConfig, out: str | Path | None = None) -> list[PlannedStage]:
    """Every stage of `taskvec run` for this config with what it needs and, given the run
    directory `out`, whether it is done there (and will be skipped)."""
    return plan(graph_for(cfg, RunDir(out if out is not None else Path("runs/default"))), cfg, look=out is not None)


def plan_tune(cfg: RunConfig, out: str | Path) -> list[PlannedStage]:
    return plan(tune_graph(cfg, RunDir(out)), cfg)
