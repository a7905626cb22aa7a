"""Non-linear edit evaluation: contiguous weights vs channels-last weights (what the evaluator uses
for edited copies of convolutional backbones on the CPU), on the same inputs, in one run.

Every non-linear point of a merge or negation sweep builds θ0 + α·d and runs it on every
validation set; this times that pass both ways on the default benchmark's four validation sets
(EfficientNet-Lite0 at 32 px) and checks the two layouts agree.

    .venv/bin/python benchmarks/bench_edit_layout.py [--repeats 5] [--run runs/default]

`--run DIR` edits with the run's task-arithmetic direction (Σ of its non-linear vectors, α=0.4);
without it, a small random direction. Prints the median seconds of each layout, their ratio, the
largest logit difference and how many predictions differ.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from taskvec.config import load_config
from taskvec.evaluate import channels_last, encode
from taskvec.kinds import NONLINEAR
from taskvec.merging import TASK_ARITHMETIC
from taskvec.pipeline.context import RunContext
from taskvec.pipeline.rundir import RunDir
from taskvec.task_vector import TaskVector, base_identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run", type=Path, default=None, help="a finished default run directory (its vectors)")
    args = parser.parse_args()
    cfg = load_config(None)  # the default benchmark
    ctx = RunContext(cfg, RunDir(args.run or Path("/nonexistent")), log=lambda m: None, progress=False)
    base = ctx.backbone
    tasks = ctx.roles.tasks
    sets = [ctx.prepared(t).sets["val"].inputs for t in tasks]
    if args.run is not None:
        direction = TASK_ARITHMETIC([TaskVector.load(RunDir(args.run).vector(t, NONLINEAR)) for t in tasks]) * 0.4
    else:
        g = torch.Generator().manual_seed(0)
        params = dict(base.named_parameters())
        direction = TaskVector({n: 1e-3 * torch.randn(p.shape, generator=g) for n, p in params.items()}, NONLINEAR, base_identity(base))
    contiguous = direction.apply_to(base)
    last = channels_last(copy.deepcopy(contiguous))

    def timed(model) -> tuple[float, list[torch.Tensor]]:
        started = time.perf_counter()
        out = [encode(model, inputs) for inputs in sets]
        return time.perf_counter() - started, out

    timed(contiguous), timed(last)  # warm-up
    seconds = {"contiguous": [], "channels-last": []}
    for _ in range(args.repeats):  # alternate so both see the same machine load
        s, a = timed(contiguous)
        seconds["contiguous"].append(s)
        s, b = timed(last)
        seconds["channels-last"].append(s)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    heads = [ctx.head(t) for t in tasks] if args.run is not None else None
    flips = sum(int((h(x).argmax(-1) != h(y).argmax(-1)).sum()) for h, x, y in zip(heads, a, b)) if heads else None
    n = sum(len(next(iter(s.values()))) for s in sets)
    print(
        f"{n} validation images of {len(tasks)} tasks, {cfg.backbone} at {cfg.backbone_options['image_size']} px, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for k, v in med.items():
        print(f"  {k:<14} {v:.3f} s per edit pass")
    print(f"  speed-up of channels-last: {med['contiguous'] / med['channels-last']:.2f}x")
    print(f"  max |Δ feature| {diff:.2e}" + ("" if flips is None else f", predictions that differ: {flips} of {n}"))


if __name__ == "__main__":
    main()
