"""Evaluation shared among torchrun ranks (issue 14): each evaluation stage of a finished run
recomputed by 1 process and by N processes (torchrun, gloo, one thread each) from the same
task vectors and heads; prints each stage's seconds, the speed-up N ranks give and whether
every result is the same to the last bit.

    taskvec run --config configs/image.toml --out runs/image      # a finished run, once
    .venv/bin/python benchmarks/bench_sharded_eval.py --run runs/image --ranks 2

On a CPU machine each rank takes one core (`threads = 1`), so N ranks need N free cores, and
the speed-up compares one core with N. `--methods` and `--ntk-examples` trim the run's merge
methods and the NTK (settings a run directory may change) to keep the benchmark short; the
run's vectors are never touched (the stages are recomputed in copies under --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEPT = ("config.json", "heads", "vectors")  # what the copies start from: the evaluations are redone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_toml(data: dict, table: str = "") -> str:
    """A config (JSON data: tables, scalars, lists of scalars) as TOML; None means unset."""
    scalars = [f"{key} = {json.dumps(value)}" for key, value in data.items() if value is not None and not isinstance(value, dict)]
    text = (f"[{table}]\n" if table and scalars else "") + "".join(line + "\n" for line in scalars)
    for key, value in data.items():
        if isinstance(value, dict):
            text += to_toml(value, f"{table}.{json.dumps(key)}" if table else json.dumps(key))
    return text


def prepare_copy(run: Path, target: Path, overrides: dict) -> Path:
    """The run's config (with `overrides`), heads and vectors in `target`, as a config file."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in KEPT[1:]:
        shutil.copytree(run / name, target / name)
    config = json.loads((run / "config.json").read_text())
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values) if isinstance(values, dict) else config.__setitem__(section, values)
    shutil.copy(run / "config.json", target / "config.json")  # the directory's own record: changeable settings differ
    path = target.parent / f"{target.name}.toml"
    path.write_text(to_toml(config))
    return path


def run_taskvec(config: Path, out: Path, ranks: int) -> float:
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(ranks),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ]
        if ranks > 1
        else [sys.executable]
    )
    started = time.perf_counter()
    done = subprocess.run(
        [*launcher, "-m", "taskvec", "run", "--config", str(config), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    if done.returncode:
        sys.exit(f"taskvec run with {ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def without_seconds(data):
    if isinstance(data, dict):
        return {k: without_seconds(v) for k, v in data.items() if k not in ("seconds", "merge_seconds")}
    if isinstance(data, list):
        return [without_seconds(v) for v in data]
    return data


def stage_files(out: Path) -> dict[str, dict]:
    files = sorted(p for p in (out / "stages").rglob("*.json") if p.stem != "report")
    return {str(p.relative_to(out / "stages").with_suffix("")): json.loads(p.read_text()) for p in files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory (its vectors and heads are reused)")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--methods", default="task_arithmetic,tsv_m", help="merge methods to evaluate (comma-separated)")
    parser.add_argument("--ntk-examples", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-sharded-eval")
    args = parser.parse_args()

    overrides = {"threads": 1, "merge": {"methods": args.methods.split(",")}, "analysis": {"ntk_examples": args.ntk_examples}}
    seconds, results, walls = {}, {}, {}
    for ranks in (1, args.ranks):
        out = args.out / f"ranks-{ranks}"
        config = prepare_copy(args.run, out, overrides)
        walls[ranks] = run_taskvec(config, out, ranks)
        files = stage_files(out)
        seconds[ranks] = {k: v["seconds"] for k, v in files.items()}
        results[ranks] = {k: without_seconds(v["result"]) for k, v in files.items()}
        print(f"{ranks} rank(s): {walls[ranks]:.0f} s in all", flush=True)

    n = args.ranks
    rows = [(k, seconds[1][k], seconds[n][k], results[1][k] == results[n][k]) for k in seconds[1] if k in seconds[n]]
    print(f"\n| stage | 1 rank (s) | {n} ranks (s) | speed-up | same result |\n|---|---|---|---|---|")
    for key, one, many, same in rows:
        print(f"| {key} | {one:.1f} | {many:.1f} | {one / many:.2f}× | {'yes' if same else 'NO'} |")
    total1, totaln = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(
        f"| all evaluation stages | {total1:.1f} | {totaln:.1f} | {total1 / totaln:.2f}× | {'yes' if all(r[3] for r in rows) else 'NO'} |"
    )
    summary = {
        "ranks": n,
        "stages": {k: {"seconds_1": one, f"seconds_{n}": many, "speedup": one / many, "same": same} for k, one, many, same in rows},
        "wall_seconds": walls,
        "run": str(args.run),
        "overrides": overrides,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if not all(r[3] for r in rows):
        sys.exit("sharded results differ from the single process's")


if __name__ == "__main__":
    main()
