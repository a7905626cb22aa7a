"""Worker of the sharded-evaluation tests: the same evaluations in one process (`Ranks()`) and
in each process of a gloo group on the CPU (`Ranks.of_process_group()`).

Spawned processes do not run conftest as a plugin; importing it registers tiny-cnn and the toy
tasks here too. Heads and task vectors come from files the test wrote, so every process
evaluates the very same tensors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import conftest  # noqa: F401  (registers tiny-cnn and the toy tasks)
import torch
from plain_addition import task_addition

from taskvec.analysis import disentanglement_error
from taskvec.analysis.linearity import linearity_gap
from taskvec.analysis.ntk import ntk_localization
from taskvec.distributed import Ranks
from taskvec.edits import select_merge, task_negation
from taskvec.evaluate import EvalSet, Evaluator
from taskvec.io import load_tensors
from taskvec.kinds import EVAL_METHODS, FINETUNE_MODES
from taskvec.merging import MERGE_METHODS
from taskvec.models import build_backbone
from taskvec.models.heads import ClassificationHead, Classifier
from taskvec.task_vector import TaskVector
from taskvec.typed import to_data

TASKS = ["toy-squares", "toy-stripes", "toy-noise"]
# Rows per set with chunks of 8: 45 = 6 chunks (3 + 3, rows 24 + 21), 38 = 5 chunks (2 + 3),
# 6 = one chunk (rank 0 of 2 holds no rows). None divides evenly into rows per rank.
SIZES = {
    ("toy-squares", "val"): 45,
    ("toy-squares", "test"): 38,
    ("toy-stripes", "val"): 38,
    ("toy-stripes", "test"): 45,
    ("toy-noise", "val"): 6,
    ("toy-noise", "test"): 29,
}
CHUNK = 8
ALPHAS = [0.0, 0.5, 1.0, 2.0, 4.0]
XI_ALPHAS = [-1.0, 0.0, 1.0, 2.0]


def evaluation_sets(model) -> dict[tuple[str, str], EvalSet]:
    sets = {}
    for (task, split), n in SIZES.items():
        images = conftest.synthetic_images(task.removeprefix("toy-"), n=n, seed=1 if split == "val" else 2)
        sets[(task, split)] = EvalSet(model.prepare(images.inputs), torch.as_tensor(images.labels))
    return sets


def write_inputs(folder: Path) -> None:
    """Heads and task vectors of the three toy tasks, in files every process reads."""
    from taskvec.config import TrainConfig
    from taskvec.evaluate import encode
    from taskvec.io import save_tensors
    from taskvec.models.heads import prototype_head
    from taskvec.tasks import load_task_data
    from taskvec.train import finetune

    model = build_backbone("tiny-cnn")
    cfg = TrainConfig(steps=12, batch_size=16, lr=3e-2, warmup_steps=2)
    for task in TASKS:
        data = load_task_data(task, max_train=64)
        train = EvalSet(model.prepare(data.train.inputs), torch.as_tensor(data.train.labels))
        head = prototype_head(encode(model, train.inputs), train.labels, data.task.num_classes)
        save_tensors(folder / f"{task}.head.safetensors", {"weight": head.weight}, {"scale": head.scale})
        for mode in ("nonlinear", "linear"):
            vector = finetune(model, head, train.inputs, train.labels, mode=mode, cfg=cfg, task=task, progress=False)
            vector.save(folder / f"{task}.{mode}.safetensors")


def load(folder: Path):
    model = build_backbone("tiny-cnn")
    heads = {}
    for task in TASKS:
        tensors, meta = load_tensors(folder / f"{task}.head.safetensors")
        heads[task] = ClassificationHead(tensors["weight"], meta["scale"])
    vectors = {mode: {t: TaskVector.load(folder / f"{t}.{mode}.safetensors") for t in TASKS} for mode in ("nonlinear", "linear")}
    return model, heads, vectors


def evaluate_all(folder: Path, ranks: Ranks) -> dict:
    """Single-task accuracies, addition, one merge method, negation, ξ, linearity and the NTK."""
    model, heads, vectors = load(folder)
    sets = evaluation_sets(model)
    shared: dict = {}
    evaluators = {
        m: Evaluator(model, heads, sets, vectors[m.vectors.name], m, chunk=CHUNK, pretrained_cache=shared, ranks=ranks)
        for m in EVAL_METHODS
        if m.vectors is not None and m.vectors.paper
    }
    out: dict = {"rows": {f"{t}/{s}": len(next(iter(evaluators.values())).local(t, s)) for t, s in SIZES}}
    finetuned = {
        split: {m.name: {t: ev.accuracy(t, split, {t: 1.0}) for t in TASKS} for m, ev in evaluators.items()} for split in ("val", "test")
    }
    out["single_task"] = finetuned
    out["counts"] = {m.name: ev.correct(TASKS, "test", {t: 0.5 for t in TASKS}) for m, ev in evaluators.items()}
    out["addition"] = {
        m.name: to_data(task_addition(ev, TASKS, {s: finetuned[s][m.name] for s in finetuned}, ALPHAS)) for m, ev in evaluators.items()
    }
    for result in out["addition"].values():
        result.pop("seconds")
    ties = MERGE_METHODS.get("ties")
    merged = select_merge(
        evaluators,
        {FINETUNE_MODES.get(mode): list(group.values()) for mode, group in vectors.items()},
        ties,
        ties.grid()[:2],
        ALPHAS,
        TASKS,
        finetuned,
    )
    out["ties"] = {}
    for name, result in merged.items():
        data = to_data(result)
        data.pop("seconds")
        for point in data["search"]:
            point.pop("merge_seconds")
        out["ties"][name] = data
    pretrained_val = evaluators[next(iter(evaluators))].accuracy("toy-stripes", "val", {})
    # a low threshold on the control, so that the choice of α is not simply 0
    out["negation"] = {
        m.name: to_data(task_negation(ev, "toy-squares", "toy-stripes", pretrained_val, ALPHAS, threshold=0.25))
        for m, ev in evaluators.items()
    }
    out["xi"] = {}
    for m, ev in evaluators.items():
        for examples in (None, 13, 40):  # whole sets (split by rows), subsets (cells dealt out), one set whole
            data = to_data(disentanglement_error(ev, "toy-squares", "toy-stripes", XI_ALPHAS, XI_ALPHAS, max_examples=examples, seed=3))
            data.pop("seconds")
            out["xi"][f"{m.name}/{examples}"] = data
    # a subset split by rows among the ranks: cached rows move to the rank that now holds them
    rows = {"toy-squares": torch.arange(0, 45, 2), "toy-stripes": None}
    out["restricted"] = {
        m.name: ev.restricted(rows, "val").correct(["toy-squares", "toy-stripes"], "val", {"toy-squares": 0.7, "toy-stripes": -0.4})
        for m, ev in evaluators.items()
    }
    nonlinear = next(ev for m, ev in evaluators.items() if not m.linearized)
    out["linearity"] = {t: to_data(linearity_gap(nonlinear, t)) for t in TASKS}
    batch_t = {k: v[:10] for k, v in sets[("toy-squares", "val")].inputs.items()}
    batch_c = {k: v[:9] for k, v in sets[("toy-stripes", "val")].inputs.items()}
    # a small memory budget: the Gram matrix is a sum over several parameter groups
    out["ntk"] = to_data(
        ntk_localization(Classifier(model, heads["toy-squares"]), batch_t, batch_c, top_k=5, chunk=4, max_memory=20_000, ranks=ranks)
    )
    return out


def run(rank: int, world: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from taskvec.distributed import init_from_env

    assert init_from_env(backend="gloo")
    result = evaluate_all(Path(folder), Ranks.of_process_group())
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result, sort_keys=True))
    dist.barrier()
    dist.destroy_process_group()
    # Skip the interpreter's teardown: now and then a c10d store or gloo thread still running
    # there aborts the process ("terminate called without an active exception") after all the
    # work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
