"""What `taskvec run` will do, and whether everything it needs is there, without doing it.

`plan_run(cfg)` lists every stage of a run (zero-shot or other heads, each fine-tune, the
single-task evaluation, the addition and negation sweeps, the analyses) with the data and
weights each one needs and whether they are present; `check_plan` returns what is missing
(one line each, naming the folder expected and how to obtain it); `format_plan` prints it.
Nothing is loaded beyond directory listings, and nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig
from .edits import negation_control
from .errors import TaskvecError

MODES = ("nonlinear", "linear")


@dataclass
class Need:
    """One thing a stage needs: a dataset, weights, a device."""

    what: str
    present: bool
    detail: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.detail}" if self.detail else self.what


@dataclass
class Stage:
    name: str
    kind: str  # heads | finetune | single_task | addition | negation | analysis
    needs: list[Need] = field(default_factory=list)
    output: str = ""  # file in the run directory that marks the stage done
    detail: str = ""
    done: bool = False

    @property
    def ready(self) -> bool:
        return all(n.present for n in self.needs)


def finetune_units(cfg: RunConfig) -> list[tuple[str, str]]:
    """The run's fine-tunes, (task, mode), in the order the pipeline runs them."""
    return [(task, mode) for mode in MODES for task in cfg.tasks]


def _data_need(name: str, cfg: RunConfig) -> Need:
    from .tasks import get_task

    try:
        task = get_task(name, root=cfg.data.root)
    except TaskvecError as exc:
        return Need(f"task {name}", False, str(exc))
    if task.missing is None:
        return Need(f"{name} data", True, task.source or "bundled")
    messages = task.missing()
    if messages:
        return Need(f"{name} data", False, "; ".join(messages))
    return Need(f"{name} data", True, task.source)


def _needs_files_for_names(name: str, cfg: RunConfig) -> bool:
    from .tasks import get_task

    try:
        return get_task(name, root=cfg.data.root).num_classes == 0
    except TaskvecError:
        return True


def _backbone_needs(cfg: RunConfig) -> list[Need]:
    name = cfg.backbone
    if cfg.init == "random":
        return []
    if name.startswith("openclip:"):
        from .models.openclip import parse_spec, weights_location

        arch, tag = parse_spec(name.partition(":")[2])
        tag = cfg.backbone_options.get("pretrained") or tag
        try:
            present, where = weights_location(arch, tag, cfg.backbone_options.get("weights_dir"))
        except Exception as exc:  # noqa: BLE001 - open_clip missing or broken
            return [Need(f"weights {name}", False, str(exc))]
        how = "" if present else (f" (fetch once where the internet is reachable: python -c \"import open_clip; "
                                  f"open_clip.create_model('{arch}', pretrained='{tag}')\", then copy the cache)")
        return [Need(f"weights {arch}/{tag}", present, f"{where}{how}")]
    return []


def _device_needs(cfg: RunConfig) -> list[Need]:
    import torch

    needs = []
    if cfg.device.startswith("cuda"):
        ok = torch.cuda.is_available()
        needs.append(Need("CUDA device", ok, f"{torch.cuda.device_count()} visible" if ok else f"device = {cfg.device!r} but torch sees no GPU"))
    for mode in MODES:
        if getattr(cfg.train, mode).precision == "bf16" and not cfg.device.startswith("cuda"):
            needs.append(Need(f"train.{mode}.precision = bf16", False, "needs device = \"cuda\""))
    return needs


def plan_run(cfg: RunConfig, out: str | Path | None = None) -> list[Stage]:
    """Every stage of `taskvec run` for this config, with what each needs (and, given the run
    directory `out`, whether its output already exists and it will be skipped)."""
    tasks = list(cfg.tasks)
    targets = list(cfg.negation.targets or tasks)
    controls = {t: negation_control(t, tasks, cfg.negation.control) for t in targets}
    extra = sorted(set(controls.values()) - set(tasks))
    names = tasks + extra
    data = {name: _data_need(name, cfg) for name in names}
    model = _backbone_needs(cfg)
    device = _device_needs(cfg)
    kind = cfg.head.kind
    stages: list[Stage] = []

    head_data = [] if kind in ("zeroshot", "text") else [data[n] for n in names]
    if kind == "zeroshot":  # class names of some datasets (Cars, DTD, SUN397) come from their files
        head_data = [data[n] for n in names if not data[n].present and _needs_files_for_names(n, cfg)]
    stages.append(Stage(f"heads ({kind}) for {len(names)} tasks: {', '.join(names)}", "heads", model + head_data, "heads/",
                        "frozen; cached per model and task" + (f" in {cfg.data.cache_dir}" if cfg.data.cache_dir else "")))
    for task, mode in finetune_units(cfg):
        train = getattr(cfg.train, mode)
        if task in cfg.train.steps:
            length = f"{cfg.train.steps[task]} steps"
        elif task in cfg.train.epochs:
            length = f"{cfg.train.epochs[task]:g} epochs = {cfg.train.epochs[task]:g} × ceil(n_train / {train.batch_size}) steps"
        else:
            length = f"{train.steps} steps"
        detail = (f"{length}, batch {train.batch_size}, lr {train.lr:g}, warm-up {train.warmup_steps}, "
                  f"{train.precision}" + (f", {train.grad_accumulation} micro-batches" if train.grad_accumulation > 1 else ""))
        stages.append(Stage(f"fine-tune {task} ({mode})", "finetune", model + device + [data[task]],
                            f"vectors/{task}.{mode}.safetensors", detail))
    eval_needs = model + device + [data[n] for n in names]
    stages.append(Stage("single-task accuracy (pre-trained, non-linear, post-hoc, linearized; val and test)", "single_task",
                        eval_needs, "stages/single_task.json"))
    alphas = f"α ∈ [{cfg.eval.alpha_start:g}, {cfg.eval.alpha_stop:g}] step {cfg.eval.alpha_step:g}"
    stages.append(Stage(f"task addition of {len(tasks)} tasks, {alphas}", "addition", model + device + [data[t] for t in tasks],
                        "stages/addition.json", "α chosen on validation (mean normalized accuracy), reported on test"))
    negation_data = [data[n] for n in dict.fromkeys(targets + list(controls.values()))]
    stages.append(Stage(f"task negation of {len(targets)} targets (controls: {', '.join(sorted(set(controls.values())))}), {alphas}",
                        "negation", model + device + negation_data, "stages/negation.json",
                        f"control validation accuracy ≥ {cfg.negation.threshold:g} × pre-trained"))
    a = cfg.analysis
    if a.disentanglement:
        pairs = [(tasks[2 * i], tasks[2 * i + 1]) for i in range(min(a.disentanglement_pairs, len(tasks) // 2))]
        stages.append(Stage(f"analysis: weight disentanglement ξ for {', '.join(f'{x}+{y}' for x, y in pairs)}", "analysis",
                            model + device + [data[t] for pair in pairs for t in pair], "",
                            f"α ∈ [{a.disentanglement_min:g}, {a.disentanglement_max:g}] step {a.disentanglement_step:g}, "
                            f"{a.disentanglement_examples} examples per task"))
    if a.ntk:
        ntk_control = controls.get(tasks[0]) or tasks[1]
        stages.append(Stage(f"analysis: NTK eigenfunction localization ({tasks[0]} vs {ntk_control})", "analysis",
                            model + device + [data[tasks[0]], data[ntk_control]], "",
                            f"{a.ntk_examples} examples per task, {a.ntk_eigenfunctions} eigenfunctions, pre-trained and random init"))
    if a.random_init:
        stages.append(Stage("analysis: task arithmetic from random initialization (Table 3)", "analysis",
                            device + [data[t] for t in tasks], "", "fine-tunes every task again from a random θ0, both modes"))
    if out is not None:
        out = Path(out)
        for stage in stages:
            if stage.output and not stage.output.endswith("/"):
                stage.done = (out / stage.output).exists()
    return stages


def check_plan(stages: list[Stage]) -> list[str]:
    """What is missing, one line per distinct item (empty when the run can start)."""
    seen: dict[str, str] = {}
    for stage in stages:
        if stage.done:
            continue
        for need in stage.needs:
            if not need.present and need.what not in seen:
                seen[need.what] = need.line()
    return list(seen.values())


def format_plan(cfg: RunConfig, stages: list[Stage]) -> str:
    """The dry-run listing: each stage, what it needs, and what is missing."""
    lines = [f"plan for {cfg.name}: backbone {cfg.backbone} ({cfg.init}), device {cfg.device}, "
             f"data root {cfg.data.root or '$TASKVEC_DATA'}"]
    for i, stage in enumerate(stages, 1):
        state = "done, skipped" if stage.done else ("ready" if stage.ready else "MISSING INPUTS")
        lines.append(f"{i:>3}. {stage.name}  [{state}]")
        if stage.detail:
            lines.append(f"       {stage.detail}")
        if stage.needs:
            lines.append("       needs: " + ", ".join(f"{n.what} ({'ok' if n.present else 'missing'})" for n in stage.needs))
    missing = check_plan(stages)
    if missing:
        lines.append(f"missing ({len(missing)}):")
        lines.extend(f"  - {m}" for m in missing)
    else:
        lines.append("everything the run needs is present")
    return "\n".join(lines)
