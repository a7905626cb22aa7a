"""`taskvec run`, `taskvec tune` and `taskvec report`: the benchmark, its tuning grid, and the
report redrawn from results.json."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import TaskvecError
from .common import ConfigOpt, app, config_from


@app.command()
def run(
    config: Path | None = ConfigOpt,
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Run directory; finished stages in it are reused."),
    quick: bool = typer.Option(
        False, "--quick", help="Smoke run: few steps, little data, coarse α grid (about 1.5 minutes for the default benchmark)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every stage and the data it needs; exit 1 naming what is missing."),
    shard: str | None = typer.Option(
        None, "--shard", help="i/n: fine-tune only the i-th of n shares of the (task, mode) units, then stop."
    ),
    analyses: bool = typer.Option(
        False, "--analyses", help="Also run the paper's analyses: disentanglement heatmaps, NTK localization, random-init ablation."
    ),
    init: str | None = typer.Option(
        None, "--init", help="pretrained or random: override the config's init (random: Table 3's ablation alone)."
    ),
    seeds: int | None = typer.Option(
        None,
        "--seeds",
        help="Repeat the run over N seeds (data.seed, +1, ...) and report mean ± std (the config's `seeds` list otherwise).",
    ),
) -> None:
    """Fine-tune every task in both modes, evaluate addition and negation, write the report.

    Multi-GPU: `torchrun --nproc-per-node N -m taskvec run --config FILE` fine-tunes each task
    with DistributedDataParallel at the config's global batch size and shares every evaluation's
    examples among the GPUs (the same results as one GPU)."""
    from ..distributed import parse_shard
    from ..protocol import plan_run, run_pipeline

    parsed_shard = parse_shard(shard) if shard else None  # a bad value is refused before any work
    cfg = config_from(config, quick, analyses, seeds)
    if init is not None:
        import dataclasses

        from ..models.registry import Init

        cfg = dataclasses.replace(cfg, init=Init(init))  # a bad value: a one-line TaskvecError
    if quick and out == Path("runs/default"):
        out = Path("runs/quick")
    if dry_run:
        _dry_run(cfg, plan_run(cfg, out))
        return
    results = run_pipeline(cfg, out, log=lambda msg: typer.echo(msg, err=True), progress=progress, shard=parsed_shard)
    if results is None:  # a shard, or a non-main rank under torchrun
        return
    from ..seeds import SeedResults

    if isinstance(results, SeedResults):
        _echo_seeds_summary(results)
    else:
        _echo_summary(results)


@app.command()
def tune(
    config: Path | None = ConfigOpt,
    out: Path = typer.Option(Path("runs/tune"), "--out", "-o", help="Tuning directory; finished grid points in it are reused."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: few steps and little data at every grid point."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every stage of the grid; exit 1 naming what is missing."),
) -> None:
    """Choose each mode's learning rate (and steps) on validation: the config's [tune] grid,
    scored by single-task accuracy and by multi-task accuracy after addition (tune.md, tune.json)."""
    from ..protocol import plan_tune, run_tune
    from ..tuning import at_edge, config_lines

    cfg = config_from(config, quick)
    if dry_run:
        _dry_run(cfg, plan_tune(cfg, out))
        return
    result = run_tune(cfg, out, log=lambda msg: typer.echo(msg, err=True), progress=progress)
    if result is None:
        return
    for mode, tuning in result.modes.items():
        for criterion, index in tuning.chosen.items():
            p = tuning.points[index]
            edge = at_edge(tuning, index)
            typer.echo(
                f"{mode:>12} by {criterion:<12}: {p.label} (single-task val. {100 * p.single_task:.1f}, addition val. {100 * p.addition:.1f})"
                + (f"; the {'largest' if edge == ' ↑' else 'smallest'} rate of the grid: a better one may lie beyond it" if edge else "")
            )
    typer.echo("\n".join(config_lines(result, cfg.tune.chosen_by())))
    typer.echo(f"wrote {out / 'tune.md'} and {out / 'tune.json'}")


def _dry_run(cfg, stages) -> None:
    """Print the planned stages with their state; exit 1 naming what is missing."""
    from ..pipeline.plan import check_plan, format_plan

    typer.echo(format_plan(cfg, stages))
    missing = check_plan(stages)
    if missing:
        typer.echo(f"taskvec: cannot run yet, {len(missing)} missing: " + "; ".join(missing), err=True)
        raise typer.Exit(1)


def _echo_seeds_summary(results) -> None:
    """Each claim's verdict and the task-addition row, over the seeds."""
    from ..claims import CLAIMS, format_spread
    from ..kinds import EVAL_METHODS
    from ..merging import TASK_ARITHMETIC

    for m, a in results.merge.get(TASK_ARITHMETIC.name, {}).items():
        typer.echo(
            f"{EVAL_METHODS.get(m).label:>24}: addition {format_spread(a.absolute, True)} / {format_spread(a.normalized, True)}, "
            f"negation target {format_spread(results.negation[m].target, True)}"
        )
    for check in results.claims:
        claim = CLAIMS.get(check.claim)
        typer.echo(
            f"  {claim.label}: {check.verdict} ({claim.sides[0]} {format_spread(check.better, claim.points)}, "
            f"{claim.sides[1]} {format_spread(check.other, claim.points)})"
        )


def _echo_summary(results) -> None:
    """The numbers to look at first: per evaluation method its task addition and negation, per
    merge method its best result, and one line per analysis that ran."""
    from ..kinds import EVAL_METHODS
    from ..merging import MERGE_METHODS, TASK_ARITHMETIC
    from ..report import pct

    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    for m in EVAL_METHODS:
        if m.name not in results.negation:
            continue
        a = results.pretrained_addition() if not m.edits else addition.get(m.name)
        add = (
            ""
            if a is None
            else (
                f"addition {pct(a.accuracy)} / –" if not m.edits else f"addition {pct(a.absolute)} / {pct(a.normalized)} (α={a.alpha:.2f})"
            )
        )
        n = results.negation[m.name]
        typer.echo(f"{m.label:>24}: {add:<34} negation target {pct(n.target)} / control {pct(n.control)}")
    for name, by_method in results.merge.items():
        cells = ", ".join(f"{EVAL_METHODS.get(k).label} {pct(r.absolute)} / {pct(r.normalized)}" for k, r in by_method.items())
        typer.echo(f"  merge {MERGE_METHODS.get(name).label}: {cells}")
    for pair, by_method in (results.disentanglement or {}).items():
        typer.echo(
            f"  ξ {pair} (mean over the grid): " + ", ".join(f"{EVAL_METHODS.get(k).label} {r.mean():.3f}" for k, r in by_method.items())
        )
    if results.ntk is not None:
        typer.echo("  NTK localization: " + ", ".join(f"{label} {r.localization:.3f}" for label, r in results.ntk.models.items()))
    if results.random_init is not None:
        r = results.random_init
        single = ", ".join(f"{EVAL_METHODS.get(k).label} {pct(v)}" for k, v in r.single_task.items())
        multi = ", ".join(f"{EVAL_METHODS.get(k).label} {pct(v)}" for k, v in r.multi_task.items())
        typer.echo(f"  from random init: single-task {single}; multi-task {multi}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory holding results.json.")) -> None:
    """Redraw report.md and every figure (Fig. 2 and the analyses included) from results.json."""
    from ..io import read_json
    from ..report import write_report
    from ..results import RunResults
    from ..seeds import FORMAT as SEEDS_FORMAT
    from ..seeds import SeedResults, write_seeds_report

    path = run_dir / "results.json"
    if not path.exists():
        raise TaskvecError(f"no results.json in {run_dir}: run `taskvec run --out {run_dir}` first")
    data = read_json(path)
    if isinstance(data, dict) and data.get("format") == SEEDS_FORMAT:
        typer.echo(f"wrote {write_seeds_report(SeedResults.load(path), run_dir)}")
        return
    typer.echo(f"wrote {write_report(RunResults.load(path), run_dir)}")
