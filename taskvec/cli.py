"""The `taskvec` command: thin wrappers over the Python API."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import TaskvecError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Task arithmetic in weight space and in the tangent space.")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config (default: the built-in image benchmark).")


def _config(path: Optional[Path], quick: bool = False, analyses: bool = False):
    from .config import load_config, quick as make_quick, with_analyses

    cfg = load_config(path)
    cfg = with_analyses(cfg) if analyses else cfg
    return make_quick(cfg) if quick else cfg


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Run directory; finished stages in it are reused."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: few steps, little data, coarse α grid (≤ 2 minutes)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every stage and the data it needs; exit 1 naming what is missing."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: fine-tune only the i-th of n shares of the (task, mode) units, then stop."),
    analyses: bool = typer.Option(False, "--analyses", help="Also run the paper's analyses: disentanglement heatmaps, NTK localization, random-init ablation."),
) -> None:
    """Fine-tune every task in both modes, evaluate addition and negation, write the report.

    Multi-GPU: `torchrun --nproc-per-node N -m taskvec run --config FILE` fine-tunes each task
    with DistributedDataParallel at the config's global batch size."""
    from .distributed import parse_shard
    from .pipeline import run_pipeline

    cfg = _config(config, quick, analyses)
    if quick and out == Path("runs/default"):
        out = Path("runs/quick")
    if dry_run:
        from .plan import check_plan, format_plan, plan_run

        stages = plan_run(cfg, out)
        typer.echo(format_plan(cfg, stages))
        missing = check_plan(stages)
        if missing:
            typer.echo(f"taskvec: cannot run yet, {len(missing)} missing: " + "; ".join(missing), err=True)
            raise typer.Exit(1)
        return
    results = run_pipeline(cfg, out, log=lambda msg: typer.echo(msg, err=True), progress=progress,
                           shard=parse_shard(shard) if shard else None)
    if not results:  # a shard, or a non-main rank under torchrun
        return
    for method in ("pretrained", "nonlinear", "posthoc", "linear"):
        a, n = results["addition"][method], results["negation"][method]
        norm = "–" if a["normalized"] is None else f"{100 * a['normalized']:.1f}"
        typer.echo(f"{method:>10}: addition {100 * a['absolute']:.1f} / {norm} (α={a['alpha']:.2f})   negation target {100 * n['target']:.1f} / control {100 * n['control']:.1f}")


@app.command()
def finetune(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see `taskvec list`)."),
    mode: str = typer.Option("nonlinear", "--mode", "-m", help="nonlinear or linear."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the task vector (.safetensors)."),
    config: Optional[Path] = ConfigOpt,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Resumable checkpoint file."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune one task and save its task vector."""
    from .models import build_backbone
    from .pipeline import build_head, prepare_tasks
    from .train import finetune as run_finetune

    cfg = _config(config)
    if mode not in ("nonlinear", "linear"):
        raise TaskvecError(f"unknown mode {mode!r}; expected 'nonlinear' or 'linear'")
    backbone = build_backbone(cfg.backbone, init=cfg.init, **cfg.backbone_options)
    prepared = prepare_tasks(backbone, [task], cfg)[task]
    head = build_head(backbone, prepared, cfg)
    train = prepared.sets["train"]
    vector = run_finetune(backbone, head, train.inputs, train.labels, mode=mode, cfg=cfg.train.for_task(mode, task, len(train)), task=task,
                          checkpoint=checkpoint, device=cfg.device, progress=progress)
    vector.save(out)
    typer.echo(f"wrote {out} ({mode} task vector of {task}, norm {vector.norm():.4f})")


@app.command()
def add(
    vectors: List[Path] = typer.Argument(..., help="Task vectors to add."),
    out: Path = typer.Option(..., "--out", "-o"),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Scale of the sum."),
) -> None:
    """Write α · Σ τ_t to a new task-vector file."""
    from .task_vector import TaskVector, sum_vectors

    total = alpha * sum_vectors(TaskVector.load(p) for p in vectors)
    total.save(out)
    typer.echo(f"wrote {out}: {alpha} × ({' + '.join(total.tasks)})")


@app.command()
def negate(vector: Path = typer.Argument(...), out: Path = typer.Option(..., "--out", "-o")) -> None:
    """Write −τ to a new task-vector file."""
    from .task_vector import TaskVector

    negated = -TaskVector.load(vector)
    negated.save(out)
    typer.echo(f"wrote {out}: −({' + '.join(negated.tasks)})")


@app.command()
def evaluate(
    vector: Optional[Path] = typer.Argument(None, help="Task vector to apply (none: the pre-trained model)."),
    tasks: List[str] = typer.Option([], "--task", "-t", help="Tasks to evaluate (default: the config's)."),
    alpha: float = typer.Option(1.0, "--alpha", "-a"),
    posthoc: bool = typer.Option(False, "--posthoc", help="Apply a non-linear vector to the linearized model."),
    split: str = typer.Option("test", "--split"),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Accuracy of θ0 + α τ on each task (JSON on stdout)."""
    from .evaluate import EvalSet, Evaluator
    from .models import build_backbone
    from .pipeline import build_head, prepare_tasks
    from .task_vector import TaskVector

    cfg = _config(config)
    if split not in ("val", "test"):
        raise TaskvecError(f"unknown split {split!r}; expected 'val' or 'test'")
    names = list(tasks) or list(cfg.tasks)
    backbone = build_backbone(cfg.backbone, init=cfg.init, **cfg.backbone_options)
    prepared = prepare_tasks(backbone, names, cfg)
    heads = {n: build_head(backbone, prepared[n], cfg) for n in names}
    sets: dict[tuple[str, str], EvalSet] = {(n, split): prepared[n].sets[split] for n in names}
    if vector is None:
        vectors, coeffs, method = {}, {}, "nonlinear"
    else:
        tv = TaskVector.load(vector)
        method = "linear" if tv.mode == "linear" else ("posthoc" if posthoc else "nonlinear")
        vectors, coeffs = {"edit": tv}, {"edit": alpha}
    ev = Evaluator(backbone, heads, sets, vectors, method, chunk=cfg.eval.chunk, device=cfg.device)
    result = {n: ev.accuracy(n, split, coeffs) for n in names}
    typer.echo(json.dumps({"method": method, "alpha": alpha if vector else 0.0, "split": split, "accuracy": result}, indent=2))


@app.command()
def info(vector: Path = typer.Argument(...)) -> None:
    """Print a task vector's metadata."""
    from .task_vector import TaskVector

    tv = TaskVector.load(vector)
    typer.echo(json.dumps({"mode": tv.mode, "tasks": list(tv.tasks), "base": tv.base, "info": tv.info,
                           "parameters": len(tv.vector), "norm": tv.norm()}, indent=2))


@app.command()
def download(
    name: str = typer.Argument(..., help="A paper dataset torchvision can fetch (MNIST, SVHN, GTSRB, DTD, EuroSAT, SUN397)."),
    root: Path = typer.Option(..., "--root", help="The data root (the config's data.root)."),
) -> None:
    """Fetch a paper dataset into the data root (the only command that downloads data)."""
    from .tasks.paper import DOWNLOADABLE, download_dataset

    if name not in DOWNLOADABLE:
        raise TaskvecError(f"{name!r} cannot be downloaded automatically; downloadable: {', '.join(DOWNLOADABLE)} (see docs/paper.md for the others)")
    typer.echo(f"downloaded {name} to {download_dataset(name, root)}")


@app.command(name="list")
def list_names() -> None:
    """List registered backbones and tasks."""
    from .models import available_backbones
    from .tasks import available_tasks, get_task

    typer.echo("backbones: " + ", ".join(available_backbones()))
    for name in available_tasks():
        task = get_task(name)
        typer.echo(f"  {name:<20} {task.modality:<6} {task.num_classes:>3} classes  {task.source}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input ends with a one-line error and exit status 2, never a traceback."""
    try:
        code = app(args=argv, prog_name="taskvec", standalone_mode=False)
    except TaskvecError as exc:
        typer.echo(f"taskvec: error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
    if isinstance(code, int) and code:  # typer.Exit(code) returns it in non-standalone mode
        sys.exit(code)


if __name__ == "__main__":
    main()
