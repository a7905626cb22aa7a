"""The stages of `taskvec run`, top to bottom. Each stage writes a file in the run directory;
a stage whose file exists is skipped, so a second run reuses the fine-tuned vectors."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import RunConfig, to_dict
from .distributed import barrier, cleanup, device_for, init_from_env, is_main, main_first, shard_units
from .edits import alpha_grid, negation_control, task_addition, task_negation
from .errors import TaskvecError
from .evaluate import METHODS, EvalSet, Evaluator, encode
from .io import load_tensors, read_json, save_tensors, write_json
from .models import Backbone, Batch, build_backbone
from .models.heads import ClassificationHead, prototype_head, probe_head, text_head
from .task_vector import TaskVector, base_identity
from .tasks import Task, get_task, make_splits
from .train import finetune

SPLITS = ("train", "val", "test")
VECTOR_MODE = {"nonlinear": "nonlinear", "posthoc": "nonlinear", "linear": "linear"}
Log = Callable[[str], None]


@dataclass
class PreparedTask:
    task: Task
    sets: dict[str, EvalSet]


def prepare_tasks(backbone: Backbone, names: list[str], cfg: RunConfig) -> dict[str, PreparedTask]:
    """Load each task, split it with the configured seed and caps, and prepare the inputs once."""
    prepared = {}
    d = cfg.data
    for name in names:
        task = get_task(name, root=cfg.data.root)
        if task.modality != backbone.modality:
            raise TaskvecError(f"task {name!r} is {task.modality} data but backbone {backbone.name!r} encodes {backbone.modality}")
        data = make_splits(task, seed=d.seed, val_fraction=d.val_fraction, val_cap=d.val_cap, max_train=d.max_train, max_val=d.max_val, max_test=d.max_test)
        sets = {}
        for split in SPLITS:
            raw = data.split(split)
            sets[split] = EvalSet(backbone.prepare(raw.inputs), torch.as_tensor(raw.labels, dtype=torch.long))
        prepared[name] = PreparedTask(task, sets)
    return prepared


def build_head(backbone: Backbone, prepared: PreparedTask, cfg: RunConfig) -> ClassificationHead:
    kind = cfg.head.kind
    if kind == "auto":
        kind = "zeroshot" if hasattr(backbone, "logit_scale") else "text" if backbone.modality == "text" else "prototype"
    task = prepared.task
    if kind == "zeroshot":
        from .models.zeroshot import zeroshot_head

        cache = Path(cfg.data.cache_dir) / "heads" if cfg.data.cache_dir else None
        return zeroshot_head(backbone, task, cache_dir=cache, device=cfg.device)
    if kind == "text":
        descriptions = list(task.descriptions or [f"An example of {c}." for c in task.classnames])
        return text_head(backbone.encode_text(descriptions), cfg.head.scale)
    train = prepared.sets["train"]
    features = encode(backbone, train.inputs, cfg.eval.chunk, cfg.device)
    if kind == "prototype":
        return prototype_head(features, train.labels, task.num_classes, cfg.head.scale)
    return probe_head(features, train.labels, task.num_classes, seed=cfg.data.seed)


CHANGEABLE_SETTINGS = {"analysis", "threads"}  # config keys that leave fine-tuning and edits unchanged


class Run:
    """A run directory: the config it was made with and one file per finished stage."""

    def __init__(self, cfg: RunConfig, out: str | Path, log: Log = print, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.log: Log = log if is_main() else (lambda message: None)
        self.device = device_for(cfg.device)  # this rank's GPU under torchrun
        self.stage_seconds: dict[str, float | None] = {}
        self.out.mkdir(parents=True, exist_ok=True)

    def check_config(self) -> None:
        """Refuse a run directory made with settings that change its results. The analyses and the
        thread count may change: `taskvec run --analyses` on a finished run adds the analyses."""
        path = self.out / "config.json"
        current = to_dict(self.cfg)
        if path.exists():
            saved = read_json(path)
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            if set(changed) - CHANGEABLE_SETTINGS:
                raise TaskvecError(f"{self.out} holds a run of a different config (differs in: {', '.join(changed)}); use another --out")
            if changed and is_main():
                write_json(path, current)
        elif is_main():
            write_json(path, current)

    def stage(self, name: str, compute: Callable[[], dict], settings: dict | None = None) -> dict:
        """Compute a stage once; its file is reused unless the `settings` it was made with changed.

        The file keeps the result with the settings and the seconds it took, so that a resumed
        run still reports where its time went (`stage_seconds`).
        """
        path = self.out / "stages" / f"{name}.json"
        if path.exists():
            saved = read_json(path)
            if saved.get("stage") != name:  # written before stage files carried settings and times
                saved = {"stage": name, "settings": None, "seconds": None, "result": saved}
            if saved["settings"] == settings:
                self.log(f"[skip] {name}: found {path}")
                self.stage_seconds[name] = saved["seconds"]
                return saved["result"]
            self.log(f"[redo] {name}: its settings changed since {path}")
        started = time.perf_counter()
        result = compute()
        seconds = round(time.perf_counter() - started, 1)
        write_json(path, {"stage": name, "settings": settings, "seconds": seconds, "result": result})
        self.stage_seconds[name] = seconds
        self.log(f"[done] {name} in {seconds:.1f}s")
        return result

    def head(self, backbone: Backbone, prepared: PreparedTask) -> ClassificationHead:
        path = self.out / "heads" / f"{prepared.task.name}.safetensors"
        identity = base_identity(backbone)
        if path.exists():
            tensors, meta = load_tensors(path)
            if meta.get("base") != identity:
                raise TaskvecError(f"head {path} was built for another base model; use another --out")
            return ClassificationHead(tensors["weight"], meta["scale"])
        head = build_head(backbone, prepared, self.cfg)
        save_tensors(path, {"weight": head.weight}, {"base": identity, "task": prepared.task.name, "scale": head.scale, "kind": self.cfg.head.kind})
        return head

    def vector(self, backbone: Backbone, head: ClassificationHead, prepared: PreparedTask, mode: str) -> TaskVector:
        name = prepared.task.name
        path = self.out / "vectors" / f"{name}.{mode}.safetensors"
        if path.exists():
            vector = TaskVector.load(path)
            if vector.base != base_identity(backbone):
                raise TaskvecError(f"task vector {path} was made from another base model; use another --out")
            self.log(f"[skip] fine-tune {name} ({mode}): found {path}")
            return vector
        train = prepared.sets["train"]
        cfg = self.cfg.train.for_task(mode, name, len(train))
        checkpoint = self.out / "checkpoints" / f"{name}.{mode}.safetensors"
        vector = finetune(backbone, head, train.inputs, train.labels, mode=mode, cfg=cfg, task=name,
                          checkpoint=checkpoint, device=self.device, progress=self.progress and is_main())
        if is_main():  # under torchrun every rank holds the same vector; one writes it
            vector.save(path)
            checkpoint.unlink(missing_ok=True)
        barrier()
        self.log(f"[done] fine-tune {name} ({mode}) in {vector.info.get('seconds')}s, last loss {vector.info.get('last_loss')}")
        return vector


def single_task_results(evaluators: dict[str, Evaluator], tasks: list[str], controls: list[str]) -> dict:
    """Accuracy of each single-task model (α = 1), and of θ0 on the tasks and the controls."""
    pre = next(iter(evaluators.values()))
    result = {split: {"pretrained": {t: pre.accuracy(t, split, {}) for t in tasks + controls}} for split in ("val", "test")}
    for method, ev in evaluators.items():
        for split in ("val", "test"):
            result[split][method] = {t: ev.accuracy(t, split, {t: 1.0}) for t in tasks}
    return result


def run_pipeline(cfg: RunConfig, out: str | Path, log: Log = print, progress: bool = True, shard: tuple[int, int] | None = None) -> dict:
    """Every stage of the benchmark; returns the results written to out/results.json.

    Under torchrun every rank fine-tunes together (DistributedDataParallel over the global
    batch) and rank 0 alone evaluates and writes. `shard=(i, n)` fine-tunes only the i-th of n
    shares of the (task, mode) units and stops: several processes (one per GPU) can fill one run
    directory, and a final unsharded run then skips their vectors and evaluates.
    """
    init_from_env()
    try:
        return _run_pipeline(cfg, out, log, progress, shard)
    finally:
        cleanup()


def _run_pipeline(cfg: RunConfig, out: str | Path, log: Log, progress: bool, shard: tuple[int, int] | None) -> dict:
    from .plan import finetune_units
    from .report import write_report

    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Run(cfg, out, log, progress)
    run.check_config()
    torch.manual_seed(cfg.data.seed)  # random init, if asked for, is reproducible
    backbone = build_backbone(cfg.backbone, init=cfg.init, **cfg.backbone_options)
    tasks = list(cfg.tasks)
    targets = list(cfg.negation.targets or tasks)
    controls = {t: negation_control(t, tasks, cfg.negation.control) for t in targets}
    names = tasks + sorted(set(controls.values()) - set(tasks))
    run.log(f"backbone {cfg.backbone} ({cfg.init}); tasks {tasks}; negation controls {controls}")

    units = finetune_units(cfg) if shard is None else shard_units(finetune_units(cfg), *shard)
    needed = names if shard is None else sorted({task for task, _ in units})
    prepared = prepare_tasks(backbone, needed, cfg)
    with main_first():  # rank 0 builds and caches the heads, the others read them
        heads = {name: run.head(backbone, prepared[name]) for name in needed}
    vectors: dict[str, dict[str, TaskVector]] = {"nonlinear": {}, "linear": {}}
    for task, mode in units:
        vectors[mode][task] = run.vector(backbone, heads[task], prepared[task], mode)
    if shard is not None or not is_main():
        run.log(f"fine-tuned {len(units)} (task, mode) units" + (f" of shard {shard[0]}/{shard[1]}" if shard else ""))
        return {}

    sets = {(name, split): prepared[name].sets[split] for name in names for split in ("val", "test")}
    shared: dict = {}
    evaluators = {m: Evaluator(backbone, heads, sets, vectors[VECTOR_MODE[m]], m, chunk=cfg.eval.chunk, device=run.device, pretrained_cache=shared) for m in METHODS}
    alphas = alpha_grid(cfg.eval.alpha_start, cfg.eval.alpha_stop, cfg.eval.alpha_step)

    single = run.stage("single_task", lambda: single_task_results(evaluators, tasks, names[len(tasks):]))
    addition = run.stage("addition", lambda: {
        m: task_addition(ev, tasks, {s: single[s][m] for s in ("val", "test")}, alphas) for m, ev in evaluators.items()})
    negation = run.stage("negation", lambda: {
        m: {t: task_negation(ev, t, controls[t], single["val"]["pretrained"][controls[t]], alphas, cfg.negation.threshold) for t in targets}
        for m, ev in evaluators.items()})

    results = assemble_results(cfg, single, addition, negation, tasks, targets, controls)
    results.update(run_analyses(run, backbone, heads, prepared, evaluators, controls))
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["timing"] = {
        "finetune": {f"{task}.{mode}": vectors[mode][task].info.get("seconds") for task, mode in units},
        "stages": dict(run.stage_seconds),
    }
    write_json(run.out / "results.json", results)
    write_report(results, run.out)
    run.log(f"wrote {run.out / 'results.json'} and {run.out / 'report.md'}")
    return results


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def assemble_results(cfg: RunConfig, single: dict, addition: dict, negation: dict, tasks: list[str], targets: list[str], controls: dict) -> dict:
    """The results.json layout: single_task[method][task], addition[method], negation[method]."""
    pre_test = single["test"]["pretrained"]
    neg = {"pretrained": {
        "target": _mean(pre_test[t] for t in targets),
        "control": _mean(pre_test[controls[t]] for t in targets),
        "per_task": {t: {"target": pre_test[t], "control": pre_test[controls[t]], "control_task": controls[t], "alpha": 0.0} for t in targets},
    }}
    for m, per_target in negation.items():
        neg[m] = {
            "target": _mean(per_target[t]["target"] for t in targets),
            "control": _mean(per_target[t]["control"] for t in targets),
            "per_task": per_target,
        }
    add = {"pretrained": {"alpha": 0.0, "absolute": _mean(pre_test[t] for t in tasks), "normalized": None,
                          "per_task": {t: {"accuracy": pre_test[t], "normalized": None} for t in tasks}}}
    add.update(addition)
    return {
        "config": to_dict(cfg),
        "tasks": tasks,
        "single_task": {m: {t: single["test"][m][t] for t in tasks} for m in single["test"]},
        "single_task_val": {m: {t: single["val"][m][t] for t in tasks} for m in single["val"]},
        "addition": add,
        "negation": neg,
    }


# ----- analyses (the paper's Fig. 3, Fig. 6 and Table 3) -------------------------------------

def run_analyses(run: Run, backbone: Backbone, heads: dict, prepared: dict[str, PreparedTask],
                 evaluators: dict[str, Evaluator], controls: dict[str, str]) -> dict:
    """The analyses switched on in cfg.analysis, each a cached stage; results under their keys."""
    a, tasks, out = run.cfg.analysis, list(run.cfg.tasks), {}
    if a.disentanglement:
        pairs = [(tasks[2 * i], tasks[2 * i + 1]) for i in range(min(a.disentanglement_pairs, len(tasks) // 2))]
        settings = {"pairs": [list(p) for p in pairs], **{k: getattr(a, k) for k in DISENTANGLEMENT_SETTINGS}}
        out["disentanglement"] = run.stage("disentanglement", lambda: disentanglement_results(evaluators, pairs, run.cfg, run.progress), settings)
    if a.ntk:
        train_task = tasks[0]
        control = controls.get(train_task) or tasks[1]
        settings = {"train_task": train_task, "control_task": control, "examples": a.ntk_examples, "eigenfunctions": a.ntk_eigenfunctions}
        out["ntk"] = run.stage("ntk", lambda: ntk_results(backbone, heads, prepared, train_task, control, run.cfg, progress=run.progress), settings)
    if a.random_init and run.cfg.init == "pretrained":
        out["random_init"] = run.stage("random_init", lambda: random_init_results(run))
    return out


DISENTANGLEMENT_SETTINGS = ("disentanglement_min", "disentanglement_max", "disentanglement_step", "disentanglement_examples")


def _disentanglement(ev: Evaluator, task1: str, task2: str, cfg: RunConfig, split: str, progress: bool) -> dict:
    """ξ on the grid and example count of cfg.analysis."""
    from .analysis import disentanglement_error, disentanglement_grid

    a = cfg.analysis
    grid = disentanglement_grid(a.disentanglement_min, a.disentanglement_max, a.disentanglement_step)
    return disentanglement_error(ev, task1, task2, grid, grid, split, max_examples=a.disentanglement_examples,
                                 seed=cfg.data.seed, progress=progress)


def disentanglement_results(evaluators: dict[str, Evaluator], pairs: list[tuple[str, str]], cfg: RunConfig, progress: bool) -> dict:
    return {f"{t1}+{t2}": {m: _disentanglement(ev, t1, t2, cfg, "val", progress) for m, ev in evaluators.items()}
            for t1, t2 in pairs}


def disentanglement_of_vectors(cfg: RunConfig, vectors: list[TaskVector], *, posthoc: bool = False, split: str = "val",
                               progress: bool = True) -> dict[str, dict]:
    """ξ heatmaps for the task vectors of two tasks, on the config's backbone and data.

    Non-linear vectors give the "nonlinear" method (and "posthoc" if asked), linearized ones the
    "linear" method; each mode present must hold one vector for each of the same two tasks.
    Grid and example count come from cfg.analysis. Returns {method: disentanglement_error(...)}.
    """
    by_mode: dict[str, dict[str, TaskVector]] = {}
    for vector in vectors:
        if len(vector.tasks) != 1:
            raise TaskvecError(f"disentanglement needs single-task vectors; got one of {list(vector.tasks)}")
        (task,) = vector.tasks
        if task in by_mode.setdefault(vector.mode, {}):
            raise TaskvecError(f"two {vector.mode} task vectors for task {task!r}")
        by_mode[vector.mode][task] = vector
    pairs = {mode: sorted(group) for mode, group in by_mode.items()}
    for mode, tasks in pairs.items():
        if len(tasks) != 2:
            raise TaskvecError(f"disentanglement needs the vectors of exactly two tasks per mode; {mode} vectors are for {tasks}")
    if len(set(map(tuple, pairs.values()))) > 1:
        raise TaskvecError(f"non-linear and linear vectors are for different tasks: {pairs}")
    if posthoc and "nonlinear" not in by_mode:
        raise TaskvecError("--posthoc needs non-linear task vectors")
    tasks = list(dict.fromkeys(v.tasks[0] for v in vectors))  # α1 is the first vector's task
    backbone = build_backbone(cfg.backbone, init=cfg.init, **cfg.backbone_options)
    prepared = prepare_tasks(backbone, tasks, cfg)
    heads = {t: build_head(backbone, prepared[t], cfg) for t in tasks}
    sets = {(t, split): prepared[t].sets[split] for t in tasks}
    methods = [m for m in METHODS if VECTOR_MODE[m] in by_mode and (m != "posthoc" or posthoc)]
    shared: dict = {}
    results = {}
    for method in methods:
        ev = Evaluator(backbone, heads, sets, by_mode[VECTOR_MODE[method]], method, chunk=cfg.eval.chunk, device=cfg.device, pretrained_cache=shared)
        results[method] = _disentanglement(ev, tasks[0], tasks[1], cfg, split, progress)
    return results


def _ntk_samples(prepared: PreparedTask, n: int, seed: int) -> Batch:
    train = prepared.sets["train"]
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return {k: v[index] for k, v in train.inputs.items()}


def ntk_results(backbone: Backbone, heads: dict, prepared: dict[str, PreparedTask], train_task: str, control: str, cfg: RunConfig,
                random_init: bool = True, progress: bool = False) -> dict:
    """NTK eigenfunction localization (Fig. 6) of the given model and (if `random_init`) a randomly
    initialized one of the same architecture, each with a head of the training task built on its
    own features."""
    from .analysis.ntk import ntk_localization
    from .models.heads import Classifier

    a = cfg.analysis
    batch_t = _ntk_samples(prepared[train_task], a.ntk_examples, cfg.data.seed)
    batch_c = _ntk_samples(prepared[control], a.ntk_examples, cfg.data.seed)
    models = {"pre-trained" if cfg.init == "pretrained" else "random init": Classifier(backbone, heads[train_task])}
    if random_init and cfg.init == "pretrained":
        torch.manual_seed(cfg.data.seed)
        random_backbone = build_backbone(cfg.backbone, init="random", **cfg.backbone_options)
        models["random init"] = Classifier(random_backbone, build_head(random_backbone, prepared[train_task], cfg))
    return {"train_task": train_task, "control_task": control,
            "models": {label: ntk_localization(model, batch_t, batch_c, top_k=a.ntk_eigenfunctions, chunk=cfg.eval.chunk // 8 or 1,
                                                      progress=progress)
                       for label, model in models.items()}}


def random_init_results(run: Run) -> dict:
    """Table 3: the same pipeline from a randomly initialized backbone (no analyses)."""
    cfg = dataclasses.replace(run.cfg, name=f"{run.cfg.name}-random-init", init="random",
                              analysis=dataclasses.replace(run.cfg.analysis, disentanglement=False, ntk=False, random_init=False))
    results = _run_pipeline(cfg, run.out / "random_init", run.log, run.progress, None)
    tasks = results["tasks"]
    return {
        "run_dir": "random_init",
        "single_task": {m: _mean(results["single_task"][m][t] for t in tasks) for m in ("pretrained", "nonlinear", "linear")},
        "multi_task": {m: results["addition"][m]["absolute"] for m in ("nonlinear", "linear")},
        "alpha": {m: results["addition"][m]["alpha"] for m in ("nonlinear", "linear")},
    }
