"""Commands that measure task vectors on a config's tasks: `evaluate`, `disentanglement` (ξ,
the paper's Fig. 3) and `ntk` (Fig. 6); under torchrun the ranks share the work."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import TaskvecError, finite
from .common import ConfigOpt, app, config_from


@app.command()
def evaluate(
    vector: Path | None = typer.Argument(None, help="Task vector to apply (none: the pre-trained model)."),
    tasks: list[str] = typer.Option([], "--task", "-t", help="Tasks to evaluate (default: the config's)."),
    alpha: float = typer.Option(1.0, "--alpha", "-a"),
    posthoc: bool = typer.Option(False, "--posthoc", help="Apply a non-linear vector to the linearized model."),
    split: str = typer.Option("test", "--split"),
    config: Path | None = ConfigOpt,
) -> None:
    """Accuracy of θ0 + α τ on each task (JSON on stdout)."""
    from ..distributed import Ranks, device_for, is_main
    from ..evaluate import Evaluator
    from ..kinds import PRETRAINED, method_for_vector
    from ..pipeline.session import session
    from ..pipeline.setup import Setup
    from ..task_vector import TaskVector

    finite(alpha, "--alpha")
    cfg = config_from(config)
    if split not in ("val", "test"):
        raise TaskvecError(f"unknown split {split!r}; expected 'val' or 'test'")
    names = list(tasks) or list(cfg.tasks)
    with session(cfg):  # under torchrun the ranks share the examples
        setup = Setup(cfg)
        heads, sets = setup.heads(names), setup.sets(names, split)
        if vector is None:
            vectors, coeffs, method = {}, {}, PRETRAINED
        else:
            tv = TaskVector.load(vector)
            method = method_for_vector(tv.mode, linearized=posthoc)
            vectors, coeffs = {"edit": tv}, {"edit": alpha}
        ev = Evaluator(
            setup.backbone,
            heads,
            sets,
            vectors,
            method,
            chunk=cfg.eval.chunk,
            device=device_for(cfg.device),
            ranks=Ranks.of_process_group(),
        )
        result = ev.accuracies(names, split, coeffs)
        if is_main():
            typer.echo(json.dumps({"method": method.name, "alpha": alpha if vector else 0.0, "split": split, "accuracy": result}, indent=2))


@app.command()
def disentanglement(
    vectors: list[Path] = typer.Argument(..., help="Task vectors of two tasks: non-linear ones, linearized ones, or both."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for disentanglement.json and the heatmap."),
    posthoc: bool = typer.Option(False, "--posthoc", help="Also apply the non-linear vectors to the linearized model."),
    alpha_min: float = typer.Option(-3.0, "--alpha-min"),
    alpha_max: float = typer.Option(3.0, "--alpha-max"),
    alpha_step: float = typer.Option(0.5, "--alpha-step"),
    examples: int = typer.Option(200, "--examples", help="Evaluation inputs per task (a seeded random subset)."),
    split: str = typer.Option("val", "--split"),
    config: Path | None = ConfigOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Weight disentanglement error ξ(α1, α2) of two tasks (the paper's Fig. 3), per fine-tuning method."""
    import dataclasses

    from ..analysis import plot_disentanglement
    from ..distributed import Ranks, is_main
    from ..io import write_json
    from ..pipeline.analyses import disentanglement_of_vectors
    from ..pipeline.session import session
    from ..task_vector import TaskVector
    from ..typed import to_data

    if split not in ("val", "test"):
        raise TaskvecError(f"unknown split {split!r}; expected 'val' or 'test'")
    cfg = config_from(config)
    cfg = dataclasses.replace(
        cfg,
        analysis=dataclasses.replace(
            cfg.analysis,
            disentanglement_min=alpha_min,
            disentanglement_max=alpha_max,
            disentanglement_step=alpha_step,
            disentanglement_examples=examples,
        ),
    )
    with session(cfg):  # under torchrun the ranks share the work
        main = is_main()  # asked inside: after the session every process is alone
        results = disentanglement_of_vectors(
            cfg,
            [TaskVector.load(p) for p in vectors],
            posthoc=posthoc,
            split=split,
            progress=progress and main,
            ranks=Ranks.of_process_group(),
        )
    if not main:
        return
    first = next(iter(results.values()))
    figure = out / f"disentanglement_{first.task1}_{first.task2}.png"
    write_json(out / "disentanglement.json", to_data(results))
    plot_disentanglement(results, figure)
    for method, r in results.items():
        typer.echo(f"{method:>10}: mean ξ {r.mean():.3f} over {len(r.alphas1)}×{len(r.alphas2)} grid ({r.seconds:.0f} s)")
    typer.echo(f"wrote {out / 'disentanglement.json'} and {figure}")


@app.command()
def ntk(
    task: str = typer.Option(..., "--task", "-t", help="Training task D_t (its head is used)."),
    control: str = typer.Option(..., "--control", help="Control task D_c."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for ntk.json and the figure."),
    examples: int = typer.Option(100, "--examples", help="Training inputs per task."),
    eigenfunctions: int = typer.Option(20, "--eigenfunctions", help="Top eigenfunctions to report."),
    random_init: bool = typer.Option(True, "--random-init/--no-random-init", help="Also compute it for a randomly initialized model."),
    config: Path | None = ConfigOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """NTK eigenfunction localization on a training task and a control task (the paper's Fig. 6)."""
    import dataclasses

    from ..analysis import plot_ntk_localization
    from ..distributed import Ranks, is_main
    from ..io import write_json
    from ..pipeline.analyses import ntk_results
    from ..pipeline.session import session
    from ..pipeline.setup import Setup
    from ..typed import to_data

    if task == control:
        raise TaskvecError(f"the control task must differ from the training task, got {task!r} twice")
    cfg = config_from(config)
    cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, ntk_examples=examples, ntk_eigenfunctions=eigenfunctions))
    with session(cfg):  # under torchrun the ranks share the parameter groups
        setup = Setup(cfg)
        heads = setup.heads([task])
        prepared = {n: setup.prepared(n) for n in (task, control)}
        main = is_main()  # asked inside: after the session every process is alone
        result = ntk_results(
            setup.backbone,
            heads,
            prepared,
            task,
            control,
            cfg,
            random_init=random_init,
            progress=progress and main,
            ranks=Ranks.of_process_group(),
        )
    if not main:
        return
    write_json(out / "ntk.json", to_data(result))
    plot_ntk_localization(result.models, out / "ntk_localization.png", task, control)
    for label, r in result.models.items():
        typer.echo(f"{label:>12}: localization {r.localization:.3f} over the top {len(r.eigenvalues)} eigenfunctions")
    typer.echo(f"wrote {out / 'ntk.json'} and {out / 'ntk_localization.png'}")
