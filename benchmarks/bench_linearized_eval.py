"""The linearized evaluation (every α sweep, merge and analysis runs it): one `jvp` under
no_grad, against a plain forward f(x; θ0) and against its own floor.

The floor: a linearized forward does one primal and two tangent products per layer (W0·ẋ and
Ẇ·x), three times a plain forward's matmul/convolution work, so three plain forwards is what
it cannot beat by much. The script times, interleaved per round on the same batch and weights
(τ random, of a fine-tune's size):

- plain: f(x; θ0), inputs as taskvec's evaluator feeds them (channels-last images on CPU);
- taskvec: `taskvec.linearization.jvp` (primal and tangent), as the evaluator calls it;
- reference: `torch.func.jvp` of the whole model (math attention kernel), the paper's way.

    .venv/bin/python benchmarks/bench_linearized_eval.py                       # both backbones
    .venv/bin/python benchmarks/bench_linearized_eval.py --backbone minilm --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_linearized_step import build_base, make_batch  # noqa: E402

from taskvec.linearization import jvp, preferred_layout  # noqa: E402


def measure(name: str, args: argparse.Namespace) -> None:
    base = build_base(name, args).eval()
    batch, _ = make_batch(base, name, args)
    batch = preferred_layout(base, batch)
    names = [n for n, _ in base.named_parameters()]
    theta0 = {n: p.detach() for n, p in base.named_parameters()}
    g = torch.Generator().manual_seed(3)
    tau = {n: 1e-3 * torch.randn(p.shape, generator=g) for n, p in theta0.items()}

    def plain():
        return base(**batch)

    def taskvec_jvp():
        return jvp(base, theta0, tau, batch)

    def reference():
        def f(*values):
            return functional_call(base, dict(zip(names, values)), args=(), kwargs=batch)

        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(f, tuple(theta0.values()), tuple(tau[n] for n in names))

    with torch.no_grad():
        primal, tangent = taskvec_jvp()
        ref_primal, ref_tangent = reference()
        error = float((tangent - ref_tangent).norm() / ref_tangent.norm())
        variants = {"plain": plain, "taskvec": taskvec_jvp, "reference": reference}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for round_ in range(args.warmup + args.repeats):
            for kind, fn in variants.items():
                start = time.process_time()
                fn()
                if round_ >= args.warmup:
                    times[kind].append(time.process_time() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    shape = {k: list(v.shape) for k, v in batch.items()}
    print(f"\n== {name}, batch {shape}, {args.threads} threads; tangent vs reference rel. err {error:.1e}")
    print("| variant | CPU median ms | ÷ plain | ÷ floor (3 × plain) |\n|---|---:|---:|---:|")
    for kind in variants:
        print(f"| {kind} | {1000 * med[kind]:.1f} | {med[kind] / med['plain']:.2f} | {med[kind] / (3 * med['plain']):.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", choices=("effnet-lite0", "minilm", "all"), default="all")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seq-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("effnet-lite0", "minilm") if args.backbone == "all" else (args.backbone,):
        measure(name, args)


if __name__ == "__main__":
    main()
