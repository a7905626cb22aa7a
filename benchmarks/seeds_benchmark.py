"""The multi-seed benchmark of docs/results.md: a config run over several seeds, with a subset
of the merge methods and analyses to fit the machine, reusing the fine-tunes of `taskvec tune`.

    .venv/bin/python benchmarks/seeds_benchmark.py --config configs/image.toml --seeds 3 \
        --methods task_arithmetic --analyses disentanglement --tuned runs/tune-image --out runs/seeds-image

--tuned: a `taskvec tune` directory of the same config; the grid point whose fine-tuning
settings equal a seed's (the tuned rate, seed 0) lends its task vectors to that seed's run
instead of fine-tuning them again (their stages are then skipped). Only fine-tunes made with
identical settings and data are copied; the script says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from taskvec.config import MergeConfig, load_config, seed_config, with_seeds
from taskvec.io import read_json
from taskvec.pipeline.rundir import RunDir
from taskvec.protocol import run_pipeline, tune_grid
from taskvec.typed import to_data

ANALYSES = ("disentanglement", "ntk", "random_init")


def reuse_tuned(cfg, tuned: Path, out: Path) -> None:
    """Copy the task vectors of tuning points whose fine-tunes equal a seed's."""
    grid = tune_grid(cfg, RunDir(tuned))
    for seed in cfg.seeds:
        sub = seed_config(cfg, seed)
        for mode in sub.modes:
            want = to_data(sub)["train"][mode.name]
            for point in grid:
                saved = point.run.dir.config
                if point.mode != mode.name or not saved.exists():
                    continue
                made = read_json(saved)
                same = (
                    made["train"][mode.name] == want
                    and made["data"] == to_data(sub.data)
                    and made["backbone"] == sub.backbone
                    and made["backbone_options"] == sub.backbone_options
                    and made["head"] == to_data(sub.head)
                    and made["tasks"] == sub.tasks
                )
                if not same:
                    continue
                target = RunDir(out / f"seed-{seed}")
                for task in sub.tasks:
                    src, dst = point.run.dir.vector(task, mode), target.vector(task, mode)
                    if src.exists() and not dst.exists():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, dst)
                        print(f"seed {seed}: {task} {mode.name} from {src}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=None, help="comma-separated merge methods (default: the config's)")
    parser.add_argument("--analyses", default="", help=f"comma-separated, of {', '.join(ANALYSES)}")
    parser.add_argument("--tuned", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = with_seeds(load_config(args.config), args.seeds)
    if args.methods:
        methods = tuple(args.methods.split(","))
        cfg = dataclasses.replace(cfg, merge=MergeConfig(methods=methods, grids={k: v for k, v in cfg.merge.grids.items() if k in methods}))
    chosen = [a for a in args.analyses.split(",") if a]
    unknown = set(chosen) - set(ANALYSES)
    if unknown:
        parser.error(f"unknown analyses {sorted(unknown)}")
    cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, **{a: True for a in chosen}))
    if args.tuned is not None:
        reuse_tuned(cfg, args.tuned, args.out)
    run_pipeline(cfg, args.out, log=lambda m: print(m, file=sys.stderr), progress=False)
    print(f"wrote {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
