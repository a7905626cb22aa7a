"""What each fine-tuning mode costs per step: median step time and peak memory, ÷ non-linear FT.

Each (mode, round) runs in a fresh subprocess (so that no allocator state of another mode is
left over): it builds the backbone, prepares the benchmark's first task and, for τJp and TAK, the other
tasks (the same data and settings as configs/methods.toml and configs/text-methods.toml), and
fine-tunes `--steps` steps with `taskvec.train.finetune`. The numbers are what every fine-tune
records in its vector (taskvec.finetuning.cost): the median step time (the slower first steps
do not move a median), and the peak resident memory the fine-tune added above the memory held when it
started (the model, θ0 and the data). Rounds alternate the modes, so slow drifts of a shared
machine spread over all of them; the table gives the median over rounds and its ratio to
non-linear FT of the same backbone.

    .venv/bin/python benchmarks/bench_modes.py                      # both backbones
    .venv/bin/python benchmarks/bench_modes.py --backbone minilm --rounds 3
    .venv/bin/python benchmarks/bench_modes.py --modes linear,tak --rounds 1   # TAK: also its factors' time

TAK's fine-tune reads the other tasks' KFAC factors; the probe computes them first (the
benchmark's other tasks, all their training inputs) and prints what one task's factors cost
beside the step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETUPS = {
    "effnet-lite0": {"config": "configs/methods.toml"},
    "minilm": {"config": "configs/text-methods.toml"},
}


def probe(args: argparse.Namespace) -> dict:
    """In a fresh process: fine-tune one mode for args.steps steps; the vector's recorded cost."""
    import dataclasses

    import torch

    from taskvec.config import load_config
    from taskvec.kinds import FINETUNE_MODES
    from taskvec.models import build_backbone
    from taskvec.pipeline.setup import build_head, prepare_tasks
    from taskvec.train import finetune

    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / SETUPS[args.backbone]["config"])
    mode = FINETUNE_MODES.get(args._probe)
    backbone = build_backbone(cfg.backbone, init=cfg.init, **cfg.backbone_options)
    task = cfg.tasks[0]
    prepared = prepare_tasks(backbone, list(cfg.tasks) if mode.penalty or mode.curvature else [task], cfg)
    head = build_head(backbone, prepared[task], cfg)
    train = prepared[task].sets["train"]
    loop = dataclasses.replace(cfg.train[mode], steps=args.steps, warmup_steps=1, checkpoint_every=10**6)
    others = [prepared[t].sets["train"].inputs for t in cfg.tasks[1:]] if mode.penalty or mode.curvature else []
    factors = [_factors(backbone, o, loop) for o in others] if mode.curvature else []
    vector = finetune(
        backbone, head, train.inputs, train.labels, mode=mode, cfg=loop, task=task, progress=False, others=others, factors=factors
    )
    cost = dict(vector.info["cost"])
    if factors:  # TAK: what one task's factors cost (the mean over the other tasks')
        cost["factor_seconds"] = statistics.mean(f.meta["cost"]["seconds"] for f in factors)
        cost["factor_peak_mib"] = max(f.meta["cost"]["peak_mib"] or 0 for f in factors)
    return {"mode": mode.name, **cost, "batch_size": loop.batch_size}


def _factors(backbone, inputs, loop):
    """A task's KFAC factors at θ0 under the TAK mode's settings (taskvec.finetuning.kfac)."""
    from taskvec.finetuning.kfac import compute_factors

    s = loop.settings
    return compute_factors(
        backbone, inputs, convs=s["convs"], examples=s["examples"], probes=s["probes"], batch_size=loop.batch_size, seed=loop.seed
    )


def run_probe(backbone: str, mode: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--backbone",
        backbone,
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--_probe",
        mode,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench(backbone: str, args: argparse.Namespace) -> dict:
    from taskvec.kinds import FINETUNE_MODES, NONLINEAR

    names = [m for m in FINETUNE_MODES.names() if not args.modes or m in args.modes or m == NONLINEAR.name]
    runs: dict[str, list[dict]] = {m: [] for m in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for mode in order:
            runs[mode].append(run_probe(backbone, mode, args))
    rows = {}
    for mode, rs in runs.items():
        rows[mode] = {
            "step_ms": statistics.median(r["step_ms"] for r in rs),
            "peak_mib": statistics.median(r["peak_mib"] for r in rs) if rs[0]["peak_mib"] is not None else None,
            "trained_entries": rs[0]["trained_entries"],
            "changed_entries": rs[0]["changed_entries"],
            "batch_size": rs[0]["batch_size"],
            "runs": rs,
        }
    ref = rows[NONLINEAR.name]
    print(
        f"\n{backbone} ({SETUPS[backbone]['config']}, batch {ref['batch_size']}, {args.steps} steps, {args.rounds} rounds, {args.threads} threads)"
    )
    print(f"{'mode':<15} {'step ms':>9} {'÷ nonlin':>9} {'peak MiB':>9} {'÷ nonlin':>9} {'trained':>11} {'changed':>11}")
    for mode, row in rows.items():
        peak = row["peak_mib"]
        print(
            f"{mode:<15} {row['step_ms']:>9.1f} {row['step_ms'] / ref['step_ms']:>9.2f} "
            f"{peak if peak is not None else float('nan'):>9.0f} {peak / ref['peak_mib'] if peak and ref['peak_mib'] else float('nan'):>9.2f} "
            f"{row['trained_entries']:>11,} {row['changed_entries']:>11,}"
        )
        if row["runs"][0].get("factor_seconds") is not None:
            sec = statistics.median(r["factor_seconds"] for r in row["runs"])
            print(f"{'':<15} KFAC factors of one task: {sec:.1f} s, peak {max(r['factor_peak_mib'] for r in row['runs']):.0f} MiB")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", choices=sorted(SETUPS), action="append")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--modes", help="comma-separated modes to measure (non-linear FT, the reference, always); default all")
    parser.add_argument("--_probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",")] if args.modes else []
    if args._probe:
        args.backbone = args.backbone[0]
        print(json.dumps(probe(args)))
        return 0
    started = time.perf_counter()
    results = {b: bench(b, args) for b in (args.backbone or sorted(SETUPS))}
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
