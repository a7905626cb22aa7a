"""The `taskvec` command: thin wrappers over the Python API."""
from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import TaskvecError, finite
from .kinds import FINETUNE_MODES, NONLINEAR

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Task arithmetic in weight space and in the tangent space.")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config (default: the built-in image benchmark).")
ForceOpt = typer.Option(False, "--force", help="Overwrite --out if it exists.")


def _config(path: Optional[Path], quick: bool = False, analyses: bool = False, seeds: Optional[int] = None):
    from .config import load_config, quick as make_quick, with_analyses, with_seeds

    cfg = load_config(path)
    cfg = with_analyses(cfg) if analyses else cfg
    cfg = with_seeds(cfg, seeds) if seeds is not None else cfg
    return make_quick(cfg) if quick else cfg


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Run directory; finished stages in it are reused."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: few steps, little data, coarse α grid (about 1.5 minutes for the default benchmark)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every stage and the data it needs; exit 1 naming what is missing."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: fine-tune only the i-th of n shares of the (task, mode) units, then stop."),
    analyses: bool = typer.Option(False, "--analyses", help="Also run the paper's analyses: disentanglement heatmaps, NTK localization, random-init ablation."),
    init: Optional[str] = typer.Option(None, "--init", help="pretrained or random: override the config's init (random: Table 3's ablation alone)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Repeat the run over N seeds (data.seed, +1, ...) and report mean ± std (the config's `seeds` list otherwise)."),
) -> None:
    """Fine-tune every task in both modes, evaluate addition and negation, write the report.

    Multi-GPU: `torchrun --nproc-per-node N -m taskvec run --config FILE` fine-tunes each task
    with DistributedDataParallel at the config's global batch size and shares every evaluation's
    examples among the GPUs (the same results as one GPU)."""
    from .distributed import parse_shard
    from .pipeline import run_pipeline

    parsed_shard = parse_shard(shard) if shard else None  # a bad value is refused before any work
    cfg = _config(config, quick, analyses, seeds)
    if init is not None:
        import dataclasses

        if init not in ("pretrained", "random"):
            raise TaskvecError(f"unknown init {init!r}; expected 'pretrained' or 'random'")
        cfg = dataclasses.replace(cfg, init=init)
    if quick and out == Path("runs/default"):
        out = Path("runs/quick")
    if dry_run:
        from .pipeline import RunDir, build_graph

        _dry_run(cfg, build_graph(cfg, RunDir(out)))
        return
    results = run_pipeline(cfg, out, log=lambda msg: typer.echo(msg, err=True), progress=progress,
                           shard=parsed_shard)
    if results is None:  # a shard, or a non-main rank under torchrun
        return
    from .seeds import SeedResults

    if isinstance(results, SeedResults):
        _echo_seeds_summary(results)
    else:
        _echo_summary(results)


@app.command()
def tune(
    config: Optional[Path] = ConfigOpt,
    out: Path = typer.Option(Path("runs/tune"), "--out", "-o", help="Tuning directory; finished grid points in it are reused."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: few steps and little data at every grid point."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every stage of the grid; exit 1 naming what is missing."),
) -> None:
    """Choose each mode's learning rate (and steps) on validation: the config's [tune] grid,
    scored by single-task accuracy and by multi-task accuracy after addition (tune.md, tune.json)."""
    from .pipeline import RunDir
    from .protocol import run_tune, tune_graph
    from .tuning import TUNE_CRITERIA, at_edge, config_lines

    cfg = _config(config, quick)
    if dry_run:
        _dry_run(cfg, tune_graph(cfg, RunDir(out)))
        return
    result = run_tune(cfg, out, log=lambda msg: typer.echo(msg, err=True), progress=progress)
    if result is None:
        return
    for mode, tuning in result.modes.items():
        for criterion, index in tuning.chosen.items():
            p = tuning.points[index]
            edge = at_edge(tuning, index)
            typer.echo(f"{mode:>12} by {criterion:<12}: {p.label} (single-task val. {100 * p.single_task:.1f}, addition val. {100 * p.addition:.1f})"
                       + (f"; the {'largest' if edge == ' ↑' else 'smallest'} rate of the grid: a better one may lie beyond it" if edge else ""))
    typer.echo("\n".join(config_lines(result, TUNE_CRITERIA.get(cfg.tune.criterion))))
    typer.echo(f"wrote {out / 'tune.md'} and {out / 'tune.json'}")


def _dry_run(cfg, graph) -> None:
    """Print the graph's stages with their state; exit 1 naming what is missing."""
    from .plan import check_plan, format_plan, plan_graph

    stages = plan_graph(cfg, graph)
    typer.echo(format_plan(cfg, stages))
    missing = check_plan(stages)
    if missing:
        typer.echo(f"taskvec: cannot run yet, {len(missing)} missing: " + "; ".join(missing), err=True)
        raise typer.Exit(1)


def _echo_seeds_summary(results) -> None:
    """Each claim's verdict and the task-addition row, over the seeds."""
    from .claims import CLAIMS, format_spread
    from .kinds import EVAL_METHODS
    from .merging import TASK_ARITHMETIC

    for m, a in results.merge.get(TASK_ARITHMETIC.name, {}).items():
        typer.echo(f"{EVAL_METHODS.get(m).label:>24}: addition {format_spread(a.absolute, True)} / {format_spread(a.normalized, True)}, "
                   f"negation target {format_spread(results.negation[m].target, True)}")
    for check in results.claims:
        claim = CLAIMS.get(check.claim)
        typer.echo(f"  {claim.label}: {check.verdict} ({claim.sides[0]} {format_spread(check.better, claim.points)}, "
                   f"{claim.sides[1]} {format_spread(check.other, claim.points)})")


def _echo_summary(results) -> None:
    """The numbers to look at first: per evaluation method its task addition and negation, per
    merge method its best result, and one line per analysis that ran."""
    from .kinds import EVAL_METHODS
    from .merging import MERGE_METHODS
    from .merging import TASK_ARITHMETIC
    from .report import pct

    addition = results.merge.get(TASK_ARITHMETIC.name, {})
    for m in EVAL_METHODS:
        if m.name not in results.negation:
            continue
        a = results.pretrained_addition() if not m.edits else addition.get(m.name)
        add = "" if a is None else (f"addition {pct(a.accuracy)} / –" if not m.edits else
                                    f"addition {pct(a.absolute)} / {pct(a.normalized)} (α={a.alpha:.2f})")
        n = results.negation[m.name]
        typer.echo(f"{m.label:>24}: {add:<34} negation target {pct(n.target)} / control {pct(n.control)}")
    for name, by_method in results.merge.items():
        cells = ", ".join(f"{EVAL_METHODS.get(k).label} {pct(r.absolute)} / {pct(r.normalized)}" for k, r in by_method.items())
        typer.echo(f"  merge {MERGE_METHODS.get(name).label}: {cells}")
    for pair, by_method in (results.disentanglement or {}).items():
        typer.echo(f"  ξ {pair} (mean over the grid): " + ", ".join(f"{EVAL_METHODS.get(k).label} {r.mean():.3f}" for k, r in by_method.items()))
    if results.ntk is not None:
        typer.echo("  NTK localization: " + ", ".join(f"{label} {r.localization:.3f}" for label, r in results.ntk.models.items()))
    if results.random_init is not None:
        r = results.random_init
        single = ", ".join(f"{EVAL_METHODS.get(k).label} {pct(v)}" for k, v in r.single_task.items())
        multi = ", ".join(f"{EVAL_METHODS.get(k).label} {pct(v)}" for k, v in r.multi_task.items())
        typer.echo(f"  from random init: single-task {single}; multi-task {multi}")


def _choices(name: str, registry) -> type[enum.Enum]:
    """A str Enum of a registry's names: typer shows them in --help and refuses others."""
    return enum.Enum(name, {n: n for n in registry.names()}, type=str)  # type: ignore[return-value]


ModeChoice = _choices("ModeChoice", FINETUNE_MODES)


@app.command()
def finetune(
    task: str = typer.Option(..., "--task", "-t", help="Task name (see `taskvec list`)."),
    mode: ModeChoice = typer.Option(NONLINEAR.name, "--mode", "-m", help="Fine-tuning mode (see `taskvec list`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the task vector (.safetensors)."),
    config: Optional[Path] = ConfigOpt,
    settings: List[str] = typer.Option([], "--set", "-s", help="A setting of the mode, name=value (repeatable; see `taskvec list`)."),
    others: List[str] = typer.Option([], "--other", help="Another task whose inputs a penalized mode (tjp) keeps τ away from (repeatable)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Resumable checkpoint file."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    force: bool = ForceOpt,
) -> None:
    """Fine-tune one task and save its task vector (the mode's [train.<mode>] table of the config,
    else its defaults; --set overrides its settings)."""
    import dataclasses

    from .distributed import device_for, is_main
    from .io import check_output
    from .kinds import FINETUNE_MODES
    from .pipeline import build_head, prepare_tasks, session
    from .registry import parse_settings
    from .train import TrainConfig
    from .train import finetune as run_finetune

    check_output(out, force)  # before the fine-tune, not after it
    cfg = _config(config)
    kind = FINETUNE_MODES.get(mode.value)
    given = parse_settings(kind.settings, settings, f"--mode {kind.name}")
    if kind.penalty and not others:
        raise TaskvecError(f"mode {kind.name} penalizes τ on other tasks' inputs: name them with --other TASK")
    train_modes = cfg.train if kind.name in cfg.train.modes else dataclasses.replace(
        cfg.train, modes={kind.name: TrainConfig(lr=kind.lr, settings=kind.resolve({}))})
    with session(cfg):  # under torchrun: DistributedDataParallel over the ranks
        main = is_main()
        backbone = cfg.build_backbone()
        prepared = prepare_tasks(backbone, [task, *others], cfg)
        head = build_head(backbone, prepared[task], cfg)
        train = prepared[task].sets["train"]
        loop = train_modes.for_task(kind, task, len(train))
        loop = dataclasses.replace(loop, settings=kind.resolve({**loop.settings, **given}))
        vector = run_finetune(backbone, head, train.inputs, train.labels, mode=kind, cfg=loop, task=task, checkpoint=checkpoint,
                              device=device_for(cfg.device), progress=progress and main,
                              others=[prepared[o].sets["train"].inputs for o in others])
    if main:
        vector.save(out)
        typer.echo(f"wrote {out} ({kind.name} task vector of {task}, norm {vector.norm():.4f})")


@app.command()
def add(
    vectors: List[Path] = typer.Argument(..., help="Task vectors to add."),
    out: Path = typer.Option(..., "--out", "-o"),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Scale of the sum."),
    force: bool = ForceOpt,
) -> None:
    """Write α · Σ τ_t to a new task-vector file."""
    from .io import check_output
    from .task_vector import TaskVector, sum_vectors

    check_output(out, force)
    total = finite(alpha, "--alpha") * sum_vectors(TaskVector.load(p) for p in vectors)
    total.save(out)
    typer.echo(f"wrote {out}: {alpha} × ({' + '.join(total.tasks)})")


@app.command()
def merge(
    vectors: List[Path] = typer.Argument(..., help="Task vectors to merge (one base, one mode)."),
    method: str = typer.Option(..., "--method", "-m", help="Merge method (see `taskvec list`)."),
    settings: List[str] = typer.Option([], "--set", "-s", help="A setting of the method, name=value (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the merged direction (.safetensors)."),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Scale of the merged direction (θ0 + α·d)."),
    force: bool = ForceOpt,
) -> None:
    """Merge task vectors with a registered merge method; write the direction d (scaled by α)
    with the method, settings and inputs in its metadata."""
    from .merging import MERGE_METHODS
    from .registry import parse_settings
    from .io import check_output
    from .task_vector import TaskVector

    kind = MERGE_METHODS.get(method)
    given = parse_settings(kind.settings, settings, kind.name)
    finite(alpha, "--alpha")
    check_output(out, force)
    merged = kind([TaskVector.load(p) for p in vectors], **given)
    record = {**merged.info["merge"], "alpha": alpha, "files": [str(p) for p in vectors]}
    merged = merged * alpha
    merged.info = {"merge": record}
    merged.save(out)
    typer.echo(f"wrote {out}: {kind.label} of {' + '.join(merged.tasks)} ({merged.mode.name}), "
               f"settings {json.dumps(merged.info['merge']['settings'])}, α = {alpha:g}")


@app.command()
def negate(vector: Path = typer.Argument(...), out: Path = typer.Option(..., "--out", "-o"), force: bool = ForceOpt) -> None:
    """Write −τ to a new task-vector file."""
    from .io import check_output
    from .task_vector import TaskVector

    check_output(out, force)
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
    from .distributed import Ranks, device_for, is_main
    from .evaluate import EvalSet, Evaluator
    from .kinds import PRETRAINED, method_for_vector
    from .pipeline import build_head, prepare_tasks, session
    from .task_vector import TaskVector

    finite(alpha, "--alpha")
    cfg = _config(config)
    if split not in ("val", "test"):
        raise TaskvecError(f"unknown split {split!r}; expected 'val' or 'test'")
    names = list(tasks) or list(cfg.tasks)
    with session(cfg):  # under torchrun the ranks share the examples
        backbone = cfg.build_backbone()
        prepared = prepare_tasks(backbone, names, cfg)
        heads = {n: build_head(backbone, prepared[n], cfg) for n in names}
        sets: dict[tuple[str, str], EvalSet] = {(n, split): prepared[n].sets[split] for n in names}
        if vector is None:
            vectors, coeffs, method = {}, {}, PRETRAINED
        else:
            tv = TaskVector.load(vector)
            method = method_for_vector(tv.mode, linearized=posthoc)
            vectors, coeffs = {"edit": tv}, {"edit": alpha}
        ev = Evaluator(backbone, heads, sets, vectors, method, chunk=cfg.eval.chunk, device=device_for(cfg.device),
                       ranks=Ranks.of_process_group())
        result = ev.accuracies(names, split, coeffs)
        if is_main():
            typer.echo(json.dumps({"method": method.name, "alpha": alpha if vector else 0.0, "split": split, "accuracy": result}, indent=2))


@app.command()
def disentanglement(
    vectors: List[Path] = typer.Argument(..., help="Task vectors of two tasks: non-linear ones, linearized ones, or both."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for disentanglement.json and the heatmap."),
    posthoc: bool = typer.Option(False, "--posthoc", help="Also apply the non-linear vectors to the linearized model."),
    alpha_min: float = typer.Option(-3.0, "--alpha-min"),
    alpha_max: float = typer.Option(3.0, "--alpha-max"),
    alpha_step: float = typer.Option(0.5, "--alpha-step"),
    examples: int = typer.Option(200, "--examples", help="Evaluation inputs per task (a seeded random subset)."),
    split: str = typer.Option("val", "--split"),
    config: Optional[Path] = ConfigOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Weight disentanglement error ξ(α1, α2) of two tasks (the paper's Fig. 3), per fine-tuning method."""
    import dataclasses

    from .analysis import plot_disentanglement
    from .distributed import Ranks, is_main
    from .io import write_json
    from .pipeline import disentanglement_of_vectors, session
    from .typed import to_data
    from .task_vector import TaskVector

    if split not in ("val", "test"):
        raise TaskvecError(f"unknown split {split!r}; expected 'val' or 'test'")
    cfg = _config(config)
    cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(
        cfg.analysis, disentanglement_min=alpha_min, disentanglement_max=alpha_max, disentanglement_step=alpha_step,
        disentanglement_examples=examples))
    with session(cfg):  # under torchrun the ranks share the work
        main = is_main()  # asked inside: after the session every process is alone
        results = disentanglement_of_vectors(cfg, [TaskVector.load(p) for p in vectors], posthoc=posthoc, split=split,
                                             progress=progress and main, ranks=Ranks.of_process_group())
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
    config: Optional[Path] = ConfigOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """NTK eigenfunction localization on a training task and a control task (the paper's Fig. 6)."""
    import dataclasses

    from .analysis import plot_ntk_localization
    from .distributed import Ranks, is_main
    from .io import write_json
    from .pipeline import build_head, ntk_results, prepare_tasks, session
    from .typed import to_data

    if task == control:
        raise TaskvecError(f"the control task must differ from the training task, got {task!r} twice")
    cfg = _config(config)
    cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, ntk_examples=examples, ntk_eigenfunctions=eigenfunctions))
    with session(cfg):  # under torchrun the ranks share the parameter groups
        backbone = cfg.build_backbone()
        prepared = prepare_tasks(backbone, [task, control], cfg)
        heads = {task: build_head(backbone, prepared[task], cfg)}
        main = is_main()  # asked inside: after the session every process is alone
        result = ntk_results(backbone, heads, prepared, task, control, cfg, random_init=random_init, progress=progress and main,
                             ranks=Ranks.of_process_group())
    if not main:
        return
    write_json(out / "ntk.json", to_data(result))
    plot_ntk_localization(result.models, out / "ntk_localization.png", task, control)
    for label, r in result.models.items():
        typer.echo(f"{label:>12}: localization {r.localization:.3f} over the top {len(r.eigenvalues)} eigenfunctions")
    typer.echo(f"wrote {out / 'ntk.json'} and {out / 'ntk_localization.png'}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory holding results.json.")) -> None:
    """Redraw report.md and every figure (Fig. 2 and the analyses included) from results.json."""
    from .io import read_json
    from .report import write_report
    from .results import RunResults
    from .seeds import FORMAT as SEEDS_FORMAT, SeedResults, write_seeds_report

    path = run_dir / "results.json"
    if not path.exists():
        raise TaskvecError(f"no results.json in {run_dir}: run `taskvec run --out {run_dir}` first")
    data = read_json(path)
    if isinstance(data, dict) and data.get("format") == SEEDS_FORMAT:
        typer.echo(f"wrote {write_seeds_report(SeedResults.load(path), run_dir)}")
        return
    typer.echo(f"wrote {write_report(RunResults.load(path), run_dir)}")


BaseOpt = typer.Option(None, "--base", "-b", help="The base model: a backbone name (see `taskvec list`; e.g. hf-clip:DIR, "
                       "openclip:ViT-B-32/openai), or a transformers CLIP folder or repo id. Default: the --config's backbone.")


def _base_backbone(base: Optional[str], config: Optional[Path]):
    """The base backbone of `vector` and `export`: --base, else the config's (with its options)."""
    from .models import build_backbone

    if base is None:
        if config is None:
            raise TaskvecError("name the base model: --base BACKBONE (or --config FILE)")
        cfg = _config(config)
        return cfg.build_backbone()
    from .models.hf_clip import looks_like_repo_id
    from .models.registry import is_registered

    if Path(base).expanduser().is_dir() or (not is_registered(base) and looks_like_repo_id(base)):
        base = f"hf-clip:{base}"  # a transformers CLIP folder or repo id
    return build_backbone(base)


@app.command()
def vector(
    finetuned: Path = typer.Option(..., "--finetuned", "-f", help="The fine-tuned checkpoint: a transformers folder, a .safetensors "
                                   "state dict or a torch file of tensors (read with weights_only=True)."),
    task: str = typer.Option(..., "--task", "-t", help="The task it was fine-tuned on (recorded in the vector)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the task vector (.safetensors)."),
    base: Optional[str] = BaseOpt,
    config: Optional[Path] = ConfigOpt,
    force: bool = ForceOpt,
) -> None:
    """Make a task vector τ = θ_ft − θ0 from a checkpoint fine-tuned elsewhere (linearized
    checkpoints give linear vectors)."""
    from .checkpoints import vector_from_checkpoints
    from .io import check_output

    check_output(out, force)
    tau = vector_from_checkpoints(_base_backbone(base, config), finetuned, task)
    tau.save(out)
    unchanged = tau.info.get("unchanged from the base (absent from the checkpoint)", [])
    note = f"; kept at the base's value, absent from the checkpoint: {', '.join(unchanged)}" if unchanged else ""
    typer.echo(f"wrote {out} ({tau.mode.name} task vector of {task}, {len(tau.vector)} tensors, norm {tau.norm():.4f}{note})")


@app.command()
def export(
    vector: Path = typer.Argument(..., help="A task vector (from finetune, vector, add or merge)."),
    out: Path = typer.Option(..., "--out", "-o", help="The folder to write the edited model to."),
    base: Optional[str] = BaseOpt,
    config: Optional[Path] = ConfigOpt,
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="The scaling α of θ0 + α·τ."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Write θ0 + α·τ in the base's own format (a transformers folder, an open_clip state dict,
    or safetensors) with a model card, for other tools to load."""
    from .checkpoints import export_model
    from .io import check_output_dir
    from .task_vector import TaskVector

    finite(alpha, "--alpha")
    check_output_dir(out, force)  # before the model is built
    tau = TaskVector.load(vector)
    export_model(tau, _base_backbone(base, config), out, alpha, force)
    typer.echo(f"wrote {out}: base + {alpha:g} × ({', '.join(tau.tasks)}), with README.md")


@app.command()
def info(vector: Path = typer.Argument(...)) -> None:
    """Print a task vector's metadata."""
    from .task_vector import summarize

    summary = summarize(vector)
    header = summary.header
    typer.echo(json.dumps({"mode": header.mode.name, "tasks": list(header.tasks), "base": header.base, "info": header.info,
                           "parameters": summary.parameters, "norm": summary.norm}, indent=2))


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
    """List the registered fine-tuning modes, evaluation and merge methods (with their settings),
    backbones and tasks."""
    from .kinds import EVAL_METHODS
    from .merging import MERGE_METHODS
    from .models import available_backbones
    from .tasks import available_tasks, get_task

    typer.echo("fine-tuning modes ([train] modes = [...] and [train.<mode>] in configs; --mode and --set):")
    for mode in FINETUNE_MODES:
        typer.echo(f"  {mode.name:<18} {mode.label}: {mode.description} [{mode.reference}]; default lr {mode.lr:g}"
                   + ("; a paper mode, trained by default" if mode.paper else ""))
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
    from .claims import CLAIMS
    from .tuning import TUNE_CRITERIA

    typer.echo("tuning criteria (taskvec tune; [tune] criterion):")
    for c in TUNE_CRITERIA:
        typer.echo(f"  {c.name:<18} {c.description}")
    typer.echo("claims checked in every report:")
    for claim in CLAIMS:
        typer.echo(f"  {claim.name:<18} {claim.label}: {claim.metric}")
    typer.echo("backbones: " + ", ".join(available_backbones()))
    for name in available_tasks():
        task = get_task(name)
        typer.echo(f"  {name:<20} {task.modality:<6} {task.num_classes:>3} classes  {task.source}")


def _which_rank() -> str:
    """' (rank i of n)' under torchrun, where every rank prints its own errors; else nothing."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world.isdigit() and int(world) > 1 else ""


def _tell_torchrun(exc: Exception) -> None:
    """Under torchrun, the error for its summary of the failed rank (which then stops the others)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input ends with a one-line error and exit status 2, never a traceback."""
    try:
        code = app(args=argv, prog_name="taskvec", standalone_mode=False)
    except TaskvecError as exc:
        typer.echo(f"taskvec: error{_which_rank()}: {exc}", err=True)
        _tell_torchrun(exc)
        sys.exit(2)
    except Exception as exc:  # usage errors (typer raises its own click-like exceptions)
        import click

        if isinstance(exc, (click.exceptions.Abort, typer.Abort)):
            sys.exit(130)
        if isinstance(exc, (click.exceptions.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            if type(exc).__name__ == "NoArgsIsHelpError":  # `taskvec` alone: the help text
                exc.show()
                sys.exit(0)
            typer.echo(f"taskvec: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    if isinstance(code, int) and code:  # typer.Exit(code) returns it in non-standalone mode
        sys.exit(code)


if __name__ == "__main__":
    main()
