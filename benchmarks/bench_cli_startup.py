"""How long the commands that need no model take to start (issue 11): `taskvec --help`,
`taskvec list` and `taskvec info VECTOR`, against a reference revision of taskvec.

Each command runs in a fresh process (`python -m taskvec ...`), `--rounds` times, once with this
tree first on PYTHONPATH and once with the reference revision (checked out by `git worktree`
into a temporary folder); rounds alternate the two, so slow drifts of a shared machine hit both.
The vector `info` reads is an EfficientNet-Lite0 task vector (random init plus noise), written
by the script. Prints the median wall time of each and the ratio reference ÷ this tree.

    .venv/bin/python benchmarks/bench_cli_startup.py                  # reference 5a02229
    .venv/bin/python benchmarks/bench_cli_startup.py --reference HEAD~3 --rounds 9

5a02229 is the last commit before deferred imports: there the CLI imported torch at start and
`list` imported open_clip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_vector(path: Path) -> None:
    import torch

    from taskvec.kinds import NONLINEAR
    from taskvec.models import build_backbone
    from taskvec.task_vector import TaskVector, base_identity

    torch.manual_seed(0)
    model = build_backbone("effnet-lite0", init="random")
    pretrained = {n: p.detach() for n, p in model.named_parameters()}
    finetuned = {n: p + 0.01 * torch.randn_like(p) for n, p in pretrained.items()}
    TaskVector.from_weights(pretrained, finetuned, mode=NONLINEAR, base=base_identity(model), task="mnist").save(path)


def timed(tree: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "taskvec", *argv], env=env, cwd=tree, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: taskvec {' '.join(argv)} failed: {done.stderr.strip()[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", default="5a02229", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "reference"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(reference), args.reference], check=True)
        try:
            vector = Path(tmp) / "effnet.safetensors"
            write_vector(vector)
            commands = {"taskvec --help": ["--help"], "taskvec list": ["list"], "taskvec info": ["info", str(vector)]}
            times = {(name, which): [] for name in commands for which in ("this", "reference")}
            for _ in range(args.rounds):
                for name, argv in commands.items():
                    for which, tree in (("this", ROOT), ("reference", reference)):
                        times[(name, which)].append(timed(tree, argv))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(reference)], check=False)
    print(f"median wall time over {args.rounds} fresh processes each (reference: {args.reference})")
    print("| command | this tree (s) | reference (s) | reference ÷ this |\n|---|---|---|---|")
    for name in commands:
        this, ref = (statistics.median(times[(name, w)]) for w in ("this", "reference"))
        print(f"| `{name}` | {this:.2f} | {ref:.2f} | {ref / this:.1f} |")


if __name__ == "__main__":
    main()
