"""Expected time of each evaluation stage of the paper's run on 1 and N GPUs (issue 14): FLOP
counts of the work each stage does, the granularity of sharding (a rank takes whole chunks of
`eval.chunk` rows, so a set of fewer chunks than ranks leaves ranks idle) and, where given, the
share of each stage that did not shrink with ranks in the CPU measurement of
bench_sharded_eval.py (Amdahl: s = 2 / speed-up − 1 with 2 ranks). Each N-GPU cell gives both:
FLOPs and granularity alone (the bound), then with that unshared share (pessimistic: on the
CPU the unshared work — data preparation, building each edited model, merging — weighs more
against a forward pass of 32-px EfficientNet-Lite0 than against one of a ViT at 224 px).

    .venv/bin/python benchmarks/estimate_sharded_eval.py --config configs/paper-vit-b-32.toml \\
        --measured runs/bench-sharded-eval/summary.json --ranks 8 --chunk 512 64

Estimates, not measurements: no GPU was available. Assumptions (printed with the table): the
forward pass's GFLOP per image, a Jacobian-vector product = 3 forward passes (2.97× measured
for MiniLM in docs/benchmarks.md, issue 13), 20 TFLOP/s sustained in fp32, the standard sizes
of the paper's validation and test sets, analyses with their default settings.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from taskvec.config import load_config
from taskvec.distributed import Ranks
from taskvec.kinds import EVAL_METHODS
from taskvec.merging import MERGE_METHODS

# (validation, test) rows: validation is 10% of train capped at 5,000 (EuroSAT: its own split);
# ImageNet is the negation control (validation from its train set, test = its 50,000 val images).
SIZES = {
    "Cars": (814, 8041),
    "DTD": (376, 1880),
    "EuroSAT": (2700, 2700),
    "GTSRB": (2664, 12630),
    "MNIST": (5000, 10000),
    "RESISC45": (1890, 6300),
    "SUN397": (1985, 19850),
    "SVHN": (5000, 26032),
    "ImageNet": (5000, 50000),
}
CLASSES = {"Cars": 196, "DTD": 47, "EuroSAT": 10, "GTSRB": 43, "MNIST": 10, "RESISC45": 45, "SUN397": 397, "SVHN": 10}
GFLOP = {"openclip:ViT-B-32/openai": 8.8, "openclip:ViT-B-16/openai": 35.0, "openclip:ViT-L-14/openai": 156.0}
PARAMS = {"openclip:ViT-B-32/openai": 88e6, "openclip:ViT-B-16/openai": 86e6, "openclip:ViT-L-14/openai": 304e6}
JVP = 3.0
TFLOPS = 20.0


@dataclass
class Work:
    """Passes over evaluation sets, (rows, forward-equivalents per row): split by rows among
    the ranks (`passes`), dealt out whole (`dealt`: ξ's cells) or made by every rank (`everywhere`)."""

    passes: list[tuple[int, float]] = field(default_factory=list)
    dealt: list[tuple[int, float]] = field(default_factory=list)
    everywhere: list[tuple[int, float]] = field(default_factory=list)

    def add(self, rows: int, cost: float, times: int = 1) -> None:
        self.passes += [(rows, cost)] * times

    def total(self) -> float:
        return sum(n * c for n, c in self.passes + self.dealt + self.everywhere)

    def slowest_rank(self, ranks: int, chunk: int) -> float:
        """Forward-equivalents of the busiest rank: each pass waits for its largest share."""
        split = sum(max(b - a for a, b in Ranks(0, ranks).spans(n, chunk)) * c for n, c in self.passes)
        dealt = math.ceil(len(self.dealt) / ranks) * max((n * c for n, c in self.dealt), default=0)
        return split + dealt + sum(n * c for n, c in self.everywhere)


def stage_work(cfg, methods) -> dict[str, Work]:
    tasks, control = list(cfg.tasks), cfg.negation.control
    alphas = [a for a in cfg.eval.alphas() if a != 0]  # α = 0 is θ0, encoded once
    on_f = [m for m in methods if not m.linearized]
    on_flin = [m for m in methods if m.linearized]
    val, test = ({t: SIZES[t][i] for t in [*tasks, control]} for i in (0, 1))
    work: dict[str, Work] = {}
    w = work["single_task"] = Work()
    for t in [*tasks, control]:
        w.add(val[t], 1)
        w.add(test[t], 1)  # θ0
    for t in tasks:
        for _ in on_f:
            w.add(val[t], 1)
            w.add(test[t], 1)
        for _ in on_flin:
            w.add(val[t], JVP)
            w.add(test[t], JVP)
    w = work["linearity"] = Work()
    for t in tasks:
        w.add(val[t], JVP)
    for name in cfg.merge.methods:
        method = MERGE_METHODS.get(name)
        settings, grid = len(cfg.merge.settings_grid(method)), [a for a in cfg.merge.alphas(method, cfg.eval.alphas()) if a != 0]
        w = work[f"merge/{name}"] = Work()
        for t in tasks:
            for _ in on_f:
                w.add(val[t], 1, settings * len(grid))
                w.add(test[t], 1)
            for _ in on_flin:
                w.add(val[t], JVP, settings)  # one JVP of the merged direction per setting: every α from it
                w.add(test[t], JVP)
    w = work["negation"] = Work()
    for t in tasks:
        for _ in on_f:
            w.add(val[t], 1, len(alphas))
            w.add(val[control], 1, len(alphas))
            w.add(test[t], 1)
            w.add(test[control], 1)
        for _ in on_flin:
            for rows in (val[t], val[control], test[t], test[control]):
                w.add(rows, JVP)
    a = cfg.analysis
    side = int(round((a.disentanglement_max - a.disentanglement_min) / a.disentanglement_step)) + 1
    w = work["disentanglement (with --analyses)"] = Work()
    rows = a.disentanglement_examples
    for _ in on_f:  # one pair: each own edit on its set (every rank), every cell on both sets (dealt out)
        w.everywhere += [(rows, 1)] * (2 * side)
        w.dealt += [(2 * rows, 1)] * (side * side)
    for _ in on_flin:  # J τ1, J τ2 on both subsets (every rank), when not cached from the sweeps
        w.everywhere += [(rows, JVP)] * 4
    return work


def ntk_work(cfg, model: str, budget: float) -> tuple[float, int]:
    """(forward-equivalents, parameter groups) of the Gram matrix of the pre-trained model: per
    group, every sample's forward pass and one backward pass (≈ 1 forward on average, down to
    the group) per output; groups hold the Jacobian of all samples within the memory budget."""
    samples, outputs = 2 * cfg.analysis.ntk_examples, CLASSES[cfg.tasks[0]]
    groups = math.ceil(PARAMS[model] * samples * outputs * 4 / budget)
    return groups * samples * (1 + outputs), groups


def hours(forward_equivalents: float, gflop: float) -> float:
    return forward_equivalents * gflop * 1e9 / (TFLOPS * 1e12) / 3600


def duration(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 / 6 else f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/paper-vit-b-32.toml"))
    parser.add_argument("--measured", type=Path, help="summary.json of bench_sharded_eval.py (2 ranks on CPU)")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--chunk", type=int, nargs="+", help="eval.chunk values to compare (default: the config's)")
    parser.add_argument("--ntk-memory-gib", type=float, default=4.0)
    args = parser.parse_args()
    cfg = load_config(args.config)
    methods = [m for m in EVAL_METHODS if m.vectors is not None and m.vectors.name in cfg.train.modes]
    chunks = args.chunk or [cfg.eval.chunk]
    gflop = GFLOP[cfg.backbone]
    unshared: dict[str, float] = {}
    if args.measured:
        measured = json.loads(args.measured.read_text())
        for key, row in measured["stages"].items():
            unshared[key] = min(1.0, max(0.0, 2 / row["speedup"] - 1))
    n = args.ranks
    print(
        f"{cfg.backbone}, {len(cfg.tasks)} tasks, {len(cfg.merge.methods)} merge methods, methods {', '.join(m.name for m in methods)}; "
        f"{gflop:g} GFLOP per image, JVP = {JVP:g} forward passes, {TFLOPS:g} TFLOP/s\n"
    )
    head = " | ".join(f"{n} GPUs, chunk {c} (FLOPs – with CPU share)" for c in chunks)
    print(f"| stage | forward-equivalents | 1 GPU | {head} | unshared share (CPU, 2 ranks) |")
    print("|---|---|---|" + "---|" * len(chunks) + "---|")
    totals = [0.0] * (2 * len(chunks) + 1)
    for key, work in stage_work(cfg, methods).items():
        one = hours(work.total(), gflop)
        stage = key.split(" ")[0]
        s = unshared.get(stage, unshared.get("merge/tsv_m", 0.0) if stage.startswith("merge/") else 0.0)
        shared = [hours(work.slowest_rank(n, c), gflop) for c in chunks]
        many = [s * one + (1 - s) * h for h in shared]
        if "analyses" not in key:
            totals = [t + v for t, v in zip(totals, [one, *shared, *many])]
        cells = " | ".join(f"{duration(a)} – {duration(b)}" for a, b in zip(shared, many))
        print(f"| {key} | {work.total() / 1e6:.2f} M | {duration(one)} | {cells} | {s:.2f} |")
    fe, groups = ntk_work(cfg, cfg.backbone, args.ntk_memory_gib * 2**30)
    s = unshared.get("ntk", 0.0)
    one = hours(fe, gflop)
    shared = one * math.ceil(groups / n) / groups
    print(
        f"| ntk (with --analyses; {groups} parameter groups) | {fe / 1e6:.0f} M | {one:.1f} h | "
        + " | ".join(f"{shared:.1f} h – {s * one + (1 - s) * shared:.1f} h" for _ in chunks)
        + f" | {s:.2f} |"
    )
    k = len(chunks)
    print(
        f"| evaluation without analyses | | {totals[0]:.1f} h | "
        + " | ".join(
            f"{a:.1f} h ({totals[0] / a:.1f}×) – {b:.1f} h ({totals[0] / b:.1f}×)" for a, b in zip(totals[1 : k + 1], totals[k + 1 :])
        )
        + " | |"
    )
    validation = [SIZES[t][0] for t in cfg.tasks]
    for c in chunks:
        busiest = sum(max(b - a for a, b in Ranks(0, n).spans(rows, c)) for rows in validation)
        print(
            f"\nchunk {c}: the busiest of {n} GPUs evaluates {busiest:,} of the {sum(validation):,} validation images "
            f"({sum(validation) / busiest:.1f}× rather than {n}×)",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
