"""Exact fast α sweeps: a task-addition sweep of a linearized model, fast path vs direct.

The default benchmark's setting: `load_config(None)` (EfficientNet-Lite0 at 32 px; tasks mnist,
animal-mnist, ising, textile; validation sets of the default size), prototype heads from
`taskvec.pipeline.setup.build_head`, linear task vectors τ_t (a few steps of
`finetune(mode="linear")`, or the vectors of a finished run with `--run DIR`).

The sweep is the paper's addition sweep on validation: the single-task accuracy of each τ_t
(α = 1 on its own task, the normalizer), then θ0 + α Σ_t τ_t for α ∈ {0, 0.05, …, 1} on every
validation set, and the α of the best mean normalized accuracy. Three ways to compute it:

  fast     `Evaluator(..., "linear")` from cold, what `taskvec run` does: f(x; θ0), J τ_t on
           set t for the normalizers, and for the sweep one JVP of the summed vector
           J(Σ_s τ_s) per val set (the α's are shared): 2T JVPs; then every α is additions.
  direct   for each α, the edited linearized model `evaluator.edited_model(coeffs)` (built
           once per α) is run on every val set (as `DirectEvaluator` in tests/test_evaluate.py):
           one linearized forward (a JVP) per (α ≠ 0, val set), plus the T single-task models.
  summed   the same shortcut written out by hand here (kept as a cross-check of the evaluator).

All three must choose the same α and give the same accuracy at every point (and the same
logits to float precision); the script checks it and exits 1 otherwise. Wall-clock and
process CPU times are reported (the machine may be shared: CPU time is less sensitive to
other processes).

Usage:
  .venv/bin/python benchmarks/bench_alpha_sweep.py                 # vectors from 10 quick steps
  .venv/bin/python benchmarks/bench_alpha_sweep.py --run runs/default   # a run's linear vectors
  .venv/bin/python benchmarks/bench_alpha_sweep.py --json out.json --no-summed
  .venv/bin/python benchmarks/bench_alpha_sweep.py --tasks ising textile --max-val 20 --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taskvec.config import alpha_grid, load_config  # noqa: E402
from taskvec.evaluate import Evaluator, accuracy, encode, encode_jvp  # noqa: E402
from taskvec.io import load_tensors  # noqa: E402
from taskvec.models import build_backbone  # noqa: E402
from taskvec.models.heads import ClassificationHead  # noqa: E402
from taskvec.pipeline.setup import build_head, prepare_tasks  # noqa: E402
from taskvec.task_vector import TaskVector, base_identity, sum_vectors  # noqa: E402
from taskvec.train import finetune  # noqa: E402


class Clock:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def normalizers(logits_of, labels: dict, tasks: list[str]) -> tuple[dict, dict]:
    """Single-task accuracy of each τ_t (α = 1 on its own task): the sweep's normalizers."""
    single, logits = {}, {}
    for t in tasks:
        out = logits_of({t: 1.0}, [t])[t]
        single[t] = accuracy(out, labels[t])
        logits[("single", t)] = out
    return single, logits


def sweep(logits_of, labels: dict, tasks: list[str], alphas: list[float], single: dict | None = None) -> dict:
    """The addition sweep on validation. `logits_of(coeffs)` -> {task: logits} for the tasks asked.
    `single`: the normalizers when already computed (as the pipeline's single-task stage does)."""
    logits = {}
    if single is None:
        single, logits = normalizers(logits_of, labels, tasks)
    curve = []
    for alpha in alphas:
        out = logits_of({t: alpha for t in tasks}, tasks)
        per_task = {t: accuracy(out[t], labels[t]) for t in tasks}
        logits.update({(alpha, t): out[t] for t in tasks})
        curve.append(
            {
                "alpha": alpha,
                "val_per_task": per_task,
                "val_normalized": statistics.fmean(per_task[t] / max(single[t], 1e-12) for t in tasks),
            }
        )
    best = max(curve, key=lambda p: (p["val_normalized"], -p["alpha"]))  # ties: the smaller α, as task_addition
    return {"alpha": best["alpha"], "single": single, "curve": curve, "logits": logits}


def load_run_heads_and_vectors(run: Path, backbone, tasks: list[str]):
    heads, vectors = {}, {}
    identity = base_identity(backbone)
    for t in tasks:
        tensors, meta = load_tensors(run / "heads" / f"{t}.safetensors")
        heads[t] = ClassificationHead(tensors["weight"], meta["scale"])
        vectors[t] = TaskVector.load(run / "vectors" / f"{t}.linear.safetensors")
        if vectors[t].base != identity:
            sys.exit(f"{run}: the vector of {t} was made from another base model")
    return heads, vectors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="reuse heads/ and vectors/<task>.linear.safetensors of this run directory")
    parser.add_argument("--steps", type=int, default=10, help="linearized fine-tuning steps per task when --run is not given")
    parser.add_argument("--lr", type=float, default=1e-4, help="their learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tasks", nargs="+", help="other tasks than the default benchmark's (for a quick check)")
    parser.add_argument("--max-val", type=int, help="smaller validation sets than the default (for a quick check)")
    parser.add_argument("--no-summed", action="store_true", help="skip the summed-vector variant")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(None)  # the default benchmark
    if args.tasks:
        cfg = dataclasses.replace(cfg, tasks=args.tasks)
    if args.max_val:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_val=args.max_val))
    tasks = list(cfg.tasks)
    alphas = alpha_grid(cfg.eval.alpha_start, cfg.eval.alpha_stop, cfg.eval.alpha_step)
    chunk, device = cfg.eval.chunk, cfg.device
    print(
        f"{cfg.backbone} {cfg.backbone_options}, tasks {tasks}, {len(alphas)} α values, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )

    with Clock() as setup:
        backbone = build_backbone(cfg.backbone, init=cfg.init, **cfg.backbone_options)
        prepared = prepare_tasks(backbone, tasks, cfg)
        if args.run:
            heads, vectors = load_run_heads_and_vectors(args.run, backbone, tasks)
            source = f"run {args.run}"
        else:
            heads = {t: build_head(backbone, prepared[t], cfg) for t in tasks}
            tcfg = dataclasses.replace(cfg.train["linear"], steps=args.steps, warmup_steps=min(2, args.steps), lr=args.lr)
            vectors = {}
            for t in tasks:
                train = prepared[t].sets["train"]
                vectors[t] = finetune(backbone, heads[t], train.inputs, train.labels, mode="linear", cfg=tcfg, task=t, progress=False)
            source = f"{args.steps} linearized fine-tuning steps per task at lr {args.lr}"
    sets = {(t, "val"): prepared[t].sets["val"] for t in tasks}
    labels = {t: sets[(t, "val")].labels for t in tasks}
    sizes = {t: len(labels[t]) for t in tasks}
    print(
        f"setup {setup.wall:.1f}s; vectors: {source}; val sizes {sizes}; |τ| = " + ", ".join(f"{t} {vectors[t].norm():.3g}" for t in tasks)
    )

    # ---- fast: the Evaluator, from cold ------------------------------------------------------
    fast_ev = Evaluator(backbone, heads, sets, vectors, "linear", chunk=chunk, device=device)

    def fast_logits(coeffs, which):
        return {t: fast_ev.logits(t, "val", coeffs) for t in which}

    with Clock() as fast_norm_clock:  # the pipeline's single-task stage
        fast_single, fast_single_logits = normalizers(fast_logits, labels, tasks)
    with Clock() as fast_clock:
        fast = sweep(fast_logits, labels, tasks, alphas, fast_single)
    fast["logits"].update(fast_single_logits)
    fast_passes = fast_ev.forward_passes
    with Clock() as warm_clock:  # the same sweep again: every JVP is cached
        sweep(fast_logits, labels, tasks, alphas, fast_single)
    print(
        f"fast   normalizers {fast_norm_clock.wall:6.1f}s, sweep {fast_clock.wall:8.1f}s wall {fast_clock.cpu:8.1f}s cpu  "
        f"({fast_passes} passes in all); warm re-sweep {warm_clock.wall:.3f}s"
    )

    # ---- direct: build each edited linearized model and run it ----------------------------
    passes = {"n": 0}

    def direct_logits(coeffs, which):
        model = fast_ev.edited_model(coeffs)  # θ0 + Σ α τ applied to a fresh copy of f_lin
        out = {}
        for t in which:
            out[t] = heads[t](encode(model, sets[(t, "val")].inputs, chunk, device))
            passes["n"] += 1
        return out

    with Clock() as direct_norm_clock:
        direct_single, direct_single_logits = normalizers(direct_logits, labels, tasks)
    with Clock() as direct_clock:
        direct = sweep(direct_logits, labels, tasks, alphas, direct_single)
    direct["logits"].update(direct_single_logits)
    print(
        f"direct normalizers {direct_norm_clock.wall:6.1f}s, sweep {direct_clock.wall:8.1f}s wall {direct_clock.cpu:8.1f}s cpu  "
        f"({passes['n']} passes, {len(tasks)} of them of θ0 itself at α = 0)"
    )
    print(
        f"speed-up of the 21-point sweep (normalizers given, as in taskvec run): "
        f"{direct_clock.wall / fast_clock.wall:.1f}x wall, {direct_clock.cpu / fast_clock.cpu:.1f}x cpu"
    )
    total_fast, total_direct = fast_clock.wall + fast_norm_clock.wall, direct_clock.wall + direct_norm_clock.wall
    print(f"speed-up including the normalizers: {total_direct / total_fast:.1f}x wall")

    # ---- summed: one JVP of Σ τ per val set (a possible shortcut, not in taskvec) ----------
    summed = None
    if not args.no_summed:
        total = sum_vectors(vectors[t] for t in tasks).vector
        cache: dict = {}

        def summed_logits(coeffs, which):
            out = {}
            for t in which:
                inputs = sets[(t, "val")].inputs
                if len(coeffs) == 1:  # single-task normalizer: J τ_t on its own set
                    if ("diag", t) not in cache:
                        cache[("f0", t)], cache[("diag", t)] = encode_jvp(backbone, vectors[t].vector, inputs, chunk, device)
                    out[t] = heads[t](cache[("f0", t)] + coeffs[t] * cache[("diag", t)])
                else:
                    if ("sum", t) not in cache:
                        _, cache[("sum", t)] = encode_jvp(backbone, total, inputs, chunk, device)
                    out[t] = heads[t](cache[("f0", t)] + coeffs[t] * cache[("sum", t)])
            return out

        with Clock() as summed_clock:
            summed = sweep(summed_logits, labels, tasks, alphas)
        print(f"summed {summed_clock.wall:8.1f}s wall {summed_clock.cpu:8.1f}s cpu  ({2 * len(tasks)} JVPs)")

    # ---- agreement ---------------------------------------------------------------------------
    ok = True
    variants = {"fast": fast, "summed": summed} if summed else {"fast": fast}
    for name, result in variants.items():
        same_alpha = result["alpha"] == direct["alpha"]
        same_points = [p["val_per_task"] for p in result["curve"]] == [p["val_per_task"] for p in direct["curve"]]
        same_single = result["single"] == direct["single"]
        max_diff = max(float((result["logits"][k] - direct["logits"][k]).abs().max()) for k in direct["logits"])
        flips = sum(int((result["logits"][k].argmax(-1) != direct["logits"][k].argmax(-1)).sum()) for k in direct["logits"])
        print(
            f"{name} vs direct: α {result['alpha']} vs {direct['alpha']} ({'same' if same_alpha else 'DIFFERENT'}); "
            f"accuracies at all {len(alphas)} points {'identical' if same_points and same_single else 'DIFFERENT'}; "
            f"max |Δ logit| {max_diff:.2e}; {flips} flipped predictions"
        )
        ok = ok and same_alpha and same_points and same_single
    best = next(p for p in direct["curve"] if p["alpha"] == direct["alpha"])
    print(
        f"chosen α {direct['alpha']}: mean normalized val accuracy {100 * best['val_normalized']:.1f}% "
        f"(α = 0: {100 * direct['curve'][0]['val_normalized']:.1f}%)"
    )

    ratio_wall, ratio_cpu = direct_clock.wall / fast_clock.wall, direct_clock.cpu / fast_clock.cpu
    print(f"\nspeed-up of the fast path over direct evaluation: {ratio_wall:.1f}x wall, {ratio_cpu:.1f}x cpu")
    if summed:
        print(
            f"speed-up of the summed-vector shortcut: {direct_clock.wall / summed_clock.wall:.1f}x wall, "
            f"{direct_clock.cpu / summed_clock.cpu:.1f}x cpu"
        )

    if args.json:
        record = {
            "backbone": cfg.backbone,
            "backbone_options": cfg.backbone_options,
            "tasks": tasks,
            "val_sizes": sizes,
            "alphas": len(alphas),
            "vectors": source,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "fast": {"wall": fast_clock.wall, "cpu": fast_clock.cpu, "passes": fast_passes, "warm_wall": warm_clock.wall},
            "direct": {"wall": direct_clock.wall, "cpu": direct_clock.cpu, "passes": passes["n"]},
            "summed": {"wall": summed_clock.wall, "cpu": summed_clock.cpu} if summed else None,
            "ratio_wall": ratio_wall,
            "ratio_cpu": ratio_cpu,
            "alpha": direct["alpha"],
            "agree": ok,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
