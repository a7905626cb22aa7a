"""What taskvec knows (`taskvec list`) and the one command that downloads data."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import TaskvecError
from ..kinds import FINETUNE_MODES
from .common import app


@app.command()
def download(
    name: str = typer.Argument(..., help="A paper dataset torchvision can fetch (MNIST, SVHN, GTSRB, DTD, EuroSAT, SUN397)."),
    root: Path = typer.Option(..., "--root", help="The data root (the config's data.root)."),
) -> None:
    """Fetch a paper dataset into the data root (the only command that downloads data)."""
    from ..tasks.paper import DOWNLOADABLE, download_dataset

    if name not in DOWNLOADABLE:
        raise TaskvecError(
            f"{name!r} cannot be downloaded automatically; downloadable: {', '.join(DOWNLOADABLE)} (see docs/paper.md for the others)"
        )
    typer.echo(f"downloaded {name} to {download_dataset(name, root)}")


@app.command(name="list")
def list_names() -> None:
    """List the registered fine-tuning modes, evaluation and merge methods (with their settings),
    backbones and tasks."""
    from ..kinds import EVAL_METHODS
    from ..merging import MERGE_METHODS
    from ..models import backbone_kinds
    from ..tasks import available_tasks, get_task

    typer.echo("fine-tuning modes ([train] modes = [...] and [train.<mode>] in configs; --mode and --set):")
    for mode in FINETUNE_MODES:
        typer.echo(
            f"  {mode.name:<18} {mode.label}: {mode.description} [{mode.reference}]; default lr {mode.lr:g}"
            + ("; a paper mode, trained by default" if mode.paper else "")
        )
        for setting in mode.settings:
            typer.echo(f"  {'':<20}{setting.describe()}")
    typer.echo("evaluation methods:")
    for m in EVAL_METHODS:
        typer.echo(f"  {m.name:<18} {m.label}: {m.description}")
    typer.echo("merge methods ([merge] in configs, taskvec merge --method; settings: default (type, range; validation grid)):")
    for g in MERGE_METHODS:
        alphas = f"α grid {', '.join(f'{a:g}' for a in g.alphas)}" if g.alphas else "α grid: the run's (eval.alpha_*)"
        typer.echo(f"  {g.name:<18} {g.label}: {g.description} [{g.reference}]; {alphas}")
        for setting in g.settings:
            typer.echo(f"  {'':<20}{setting.describe()}")
    from ..claims import CLAIMS
    from ..tuning import TUNE_CRITERIA

    typer.echo("tuning criteria (taskvec tune; [tune] criterion):")
    for c in TUNE_CRITERIA:
        typer.echo(f"  {c.name:<18} {c.description}")
    typer.echo("claims checked in every report:")
    for claim in CLAIMS:
        typer.echo(f"  {claim.name:<18} {claim.label}: {claim.metric}")
    typer.echo('backbones (backbone = NAME in configs, options in [backbone_options]; head: what [head] kind = "auto" gives):')
    for kind in backbone_kinds():
        head = kind.default_head.name if kind.default_head else "by modality"
        about = f"{kind.label} ({kind.description})" if kind.description else kind.label
        paths = "; --base takes its folders and repo ids as they are" if kind.accepts_paths else ""
        typer.echo(
            f"  {kind.pattern:<18} {kind.modality or '?':<6} {about}; head {head}; packages {', '.join(kind.packages) or 'none'}; "
            f"options {', '.join(kind.option_names()) or 'none'}{paths}"
        )
    typer.echo("tasks:")
    for name in available_tasks():
        task = get_task(name)
        typer.echo(f"  {name:<20} {task.modality:<6} {task.num_classes:>3} classes  {task.source}")
