"""Commands that make, combine and export task vectors: `finetune`, `add`, `merge`, `negate`,
`vector` (from checkpoints made elsewhere), `export` and `info`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import typer

from ..errors import TaskvecError, finite
from ..kinds import NONLINEAR
from .common import BaseOpt, ConfigOpt, ForceOpt, ModeChoice, app, base_backbone, config_from


@app.command()
def finetune(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see `taskvec list`)."),
    mode: ModeChoice = typer.Option(NONLINEAR.name, "--mode", "-m", help="Fine-tuning mode (see `taskvec list`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the task vector (.safetensors)."),
    config: Path | None = ConfigOpt,
    settings: list[str] = typer.Option([], "--set", "-s", help="A setting of the mode, name=value (repeatable; see `taskvec list`)."),
    others: list[str] = typer.Option(
        [], "--other", help="Another task whose inputs (tjp) or KFAC factors at θ0 (tak) a penalized mode keeps τ away from (repeatable)."
    ),
    control: str | None = typer.Option(
        None,
        "--control",
        help="Control task a penalized mode (tjp) also penalizes, one more dataset (the official τJp code adds ImageNet); "
        "default: the config's [negation] control, if any.",
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Resumable checkpoint file."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    force: bool = ForceOpt,
) -> None:
    """Fine-tune one task and save its task vector (the mode's [train.<mode>] table of the config,
    else its defaults; --set overrides its settings)."""
    import dataclasses

    from ..config import TrainConfig
    from ..distributed import device_for, is_main
    from ..io import check_output
    from ..kinds import FINETUNE_MODES
    from ..pipeline.session import session
    from ..pipeline.setup import Setup
    from ..registry import parse_settings
    from ..train import finetune as run_finetune

    check_output(out, force)  # before the fine-tune, not after it
    cfg = config_from(config)
    kind = FINETUNE_MODES.get(mode.value)
    given = parse_settings(kind.settings, settings, f"--mode {kind.name}")
    if (kind.penalty or kind.curvature) and not others:
        raise TaskvecError(
            f"mode {kind.name} penalizes τ on other tasks' {'inputs' if kind.penalty else 'KFAC factors'}: name them with --other TASK"
        )
    if control is not None and not kind.penalty:
        raise TaskvecError(f"--control names data a penalized mode (tjp) reads; mode {kind.name} has no penalty")
    control = control or (cfg.negation.control if kind.penalty else None)
    control = None if control == task else control  # the task itself is no control of its own
    if control is not None and control in others:
        raise TaskvecError(f"the control {control} (--control or the config's [negation] control) is also an --other: name it once")
    train_modes = (
        cfg.train if kind.name in cfg.train.modes else dataclasses.replace(cfg.train, modes={kind.name: TrainConfig.for_mode(kind)})
    )
    with session(cfg):  # under torchrun: DistributedDataParallel over the ranks
        main = is_main()
        setup = Setup(cfg)
        train = setup.prepared(task).sets["train"]
        head = setup.head(task)
        loop = train_modes.for_task(kind, task, len(train))
        loop = dataclasses.replace(loop, settings=kind.resolve({**loop.settings, **given}))
        vector = run_finetune(
            setup.backbone,
            head,
            train.inputs,
            train.labels,
            mode=kind,
            cfg=loop,
            task=task,
            checkpoint=checkpoint,
            device=device_for(cfg.device),
            progress=progress and main,
            others={o: setup.prepared(o).sets["train"].inputs for o in others} if kind.penalty else {},
            control=(control, setup.prepared(control).sets["train"].inputs) if control else None,
            factors=_factors_of(setup, others, kind, loop, device_for(cfg.device)) if kind.curvature else (),
        )
    if main:
        vector.save(out)
        typer.echo(f"wrote {out} ({kind.name} task vector of {task}, norm {vector.norm():.4f})")
        if "penalty" in vector.info:
            typer.echo(f"penalty: {cast('dict[str, str]', vector.info['penalty'])['describe']}")


def _factors_of(setup, tasks: list[str], kind, loop, device) -> list:
    """The KFAC factors of `tasks` at θ0 (TAK), computed here; their time is printed."""
    from ..finetuning.kfac import compute_factors, factor_settings
    from ..task_vector import base_identity

    out = []
    given = factor_settings(loop.settings)
    for task in tasks:
        inputs = setup.prepared(task).sets["train"].inputs
        f = compute_factors(setup.backbone, inputs, **given, batch_size=loop.batch_size, seed=loop.seed, device=device)
        f.meta.update(base=base_identity(setup.backbone), task=task)
        typer.echo(f"KFAC factors of {task}: {f.count} examples, {f.meta['cost']['seconds']}s, peak {f.meta['cost']['peak_mib']} MiB")
        out.append(f)
    return out


@app.command()
def add(
    vectors: list[Path] = typer.Argument(..., help="Task vectors to add."),
    out: Path = typer.Option(..., "--out", "-o"),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Scale of the sum."),
    force: bool = ForceOpt,
) -> None:
    """Write α · Σ τ_t to a new task-vector file."""
    from ..io import check_output
    from ..task_vector import TaskVector, sum_vectors

    check_output(out, force)
    total = finite(alpha, "--alpha") * sum_vectors(TaskVector.load(p) for p in vectors)
    total.save(out)
    typer.echo(f"wrote {out}: {alpha} × ({' + '.join(total.tasks)})")


@app.command()
def merge(
    vectors: list[Path] = typer.Argument(..., help="Task vectors to merge (one base, one mode)."),
    method: str = typer.Option(..., "--method", "-m", help="Merge method (see `taskvec list`)."),
    settings: list[str] = typer.Option([], "--set", "-s", help="A setting of the method, name=value (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the merged direction (.safetensors)."),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Scale of the merged direction (θ0 + α·d)."),
    force: bool = ForceOpt,
) -> None:
    """Merge task vectors with a registered merge method; write the direction d (scaled by α)
    with the method, settings and inputs in its metadata."""
    from ..io import check_output
    from ..merging import MERGE_METHODS
    from ..registry import parse_settings
    from ..task_vector import TaskVector

    kind = MERGE_METHODS.get(method)
    given = parse_settings(kind.settings, settings, kind.name)
    finite(alpha, "--alpha")
    check_output(out, force)
    merged = kind([TaskVector.load(p) for p in vectors], **given)
    # info is open metadata (dict[str, object]); merge() records a dict under "merge"
    record = {**cast("dict[str, object]", merged.info["merge"]), "alpha": alpha, "files": [str(p) for p in vectors]}
    merged = merged * alpha
    merged.info = {"merge": record}
    merged.save(out)
    typer.echo(
        f"wrote {out}: {kind.label} of {' + '.join(merged.tasks)} ({merged.mode.name}), "
        f"settings {json.dumps(record['settings'])}, α = {alpha:g}"
    )


@app.command()
def negate(vector: Path = typer.Argument(...), out: Path = typer.Option(..., "--out", "-o"), force: bool = ForceOpt) -> None:
    """Write −τ to a new task-vector file."""
    from ..io import check_output
    from ..task_vector import TaskVector

    check_output(out, force)
    negated = -TaskVector.load(vector)
    negated.save(out)
    typer.echo(f"wrote {out}: −({' + '.join(negated.tasks)})")


@app.command()
def vector(
    finetuned: Path = typer.Option(
        ...,
        "--finetuned",
        "-f",
        help="The fine-tuned checkpoint: a transformers folder, a .safetensors "
        "state dict or a torch file of tensors (read with weights_only=True).",
    ),
    task: str = typer.Option(..., "--task", "-t", help="The task it was fine-tuned on (recorded in the vector)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the task vector (.safetensors)."),
    base: str | None = BaseOpt,
    config: Path | None = ConfigOpt,
    force: bool = ForceOpt,
) -> None:
    """Make a task vector τ = θ_ft − θ0 from a checkpoint fine-tuned elsewhere (linearized
    checkpoints give linear vectors)."""
    from ..checkpoints import vector_from_checkpoints
    from ..io import check_output

    check_output(out, force)
    tau = vector_from_checkpoints(base_backbone(base, config), finetuned, task)
    tau.save(out)
    # info is open metadata (dict[str, object]); vector_from_checkpoints records a list of names here
    unchanged = cast("list[str]", tau.info.get("unchanged from the base (absent from the checkpoint)", []))
    note = f"; kept at the base's value, absent from the checkpoint: {', '.join(unchanged)}" if unchanged else ""
    typer.echo(f"wrote {out} ({tau.mode.name} task vector of {task}, {len(tau.vector)} tensors, norm {tau.norm():.4f}{note})")


@app.command()
def export(
    vector: Path = typer.Argument(..., help="A task vector (from finetune, vector, add or merge)."),
    out: Path = typer.Option(..., "--out", "-o", help="The folder to write the edited model to."),
    base: str | None = BaseOpt,
    config: Path | None = ConfigOpt,
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="The scaling α of θ0 + α·τ."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Write θ0 + α·τ in the base's own format (a transformers folder, an open_clip state dict,
    or safetensors) with a model card, for other tools to load."""
    from ..checkpoints import export_model
    from ..io import check_output_dir
    from ..task_vector import TaskVector

    finite(alpha, "--alpha")
    check_output_dir(out, force)  # before the model is built
    tau = TaskVector.load(vector)
    export_model(tau, base_backbone(base, config), out, alpha, force)
    typer.echo(f"wrote {out}: base + {alpha:g} × ({', '.join(tau.tasks)}), with README.md")


@app.command()
def info(vector: Path = typer.Argument(...)) -> None:
    """Print a task vector's metadata."""
    from ..task_vector import summarize

    summary = summarize(vector)
    header = summary.header
    typer.echo(
        json.dumps(
            {
                "mode": header.mode.name,
                "tasks": list(header.tasks),
                "base": header.base,
                "info": header.info,
                "parameters": summary.parameters,
                "norm": summary.norm,
            },
            indent=2,
        )
    )
