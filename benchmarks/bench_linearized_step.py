"""Time one training step: non-linear, taskvec's linearized, and the paper's reference.

For each backbone, on the same pre-trained model, the same batch and the same random frozen
`ClassificationHead`, a full training step (forward, cross-entropy, backward, gradient
clipping, AdamW step) is timed for three variants:

  nonlinear  f(x; θ), as `taskvec.train.finetune(mode="nonlinear")` trains it (channels-last images on
             CPU; `--contiguous-nonlinear` adds the contiguous layout it used before).
  linear     f_lin(x; θ) through `taskvec.linearization.LinearizedBackbone`, as
             `finetune(mode="linear")` trains it.
  reference  f_lin the straightforward way, as the paper's code does: the forward is
             `torch.func.jvp(lambda *p: functional_call(model, p, x), θ0, θ − θ0)` on the whole
             model, and autograd back-propagates through it (attention on the math SDPA kernel,
             which forward-mode AD needs). Written here, independently of taskvec.linearization.

The variants run in interleaved rounds (nonlinear, linear, reference, nonlinear, ...) so that
noise from other processes on the machine hits all three alike. For each variant the script
prints the median wall-clock time of a step and its interquartile range, and the median CPU
time of the process during the step (`time.process_time`). On a shared, loaded machine wall
time mostly measures how much of the CPU the scheduler handed out; CPU time with `--threads 1`
is the steadier measure of the work itself (with more threads it also counts OpenMP's
spin-waiting). Ratios are given both as ratios of the medians and as medians of the per-round
ratios (each round's steps ran close together in time, so the latter cancels slow drifts).

Peak memory. tracemalloc does not see torch's allocations and `torch.cuda` counters do not
exist on CPU, so each variant's memory is measured by the kernel in a fresh subprocess of its
own (no allocator state left over from the other variants): the process builds the model,
batch and optimizer, records its resident set size (VmRSS, "RSS before": Python, torch, the
model; θ0 is a second copy of the weights in the two linearized variants), resets the
high-water mark (writes "5" to `/proc/self/clear_refs`), runs `--probe-steps` training steps
and reads the high-water mark (VmHWM); the median of `--memory-repeats` such processes is
reported (the same measurement varies by a few tens of MiB from run to run). "step peak" = VmHWM − RSS before: what a training step
adds at its worst moment (activations, tangents, the autograd graph, gradients, AdamW's moments
which the first step allocates). `resource.getrusage(...).ru_maxrss` is not used: Linux carries
it across `execve`, so a subprocess started from this (large) process would report at least
the parent's peak.

Correctness is checked in the script too, in float64 (allclose, rtol 1e-7): from the same
θ = θ0 + δ (δ small and random), `linear` and `reference` give the same loss and the same
gradients; and at θ = θ0 the linearized gradient equals the non-linear one (J(θ0)ᵀ g). The
same comparison in float32 (rtol 1e-4) is printed for information; `check_correctness` says
why float32 cannot be the verdict for a ReLU6 network. Weights after an AdamW step are not
compared: AdamW's first update is about lr·sign(g), so gradient entries that are zero up to
rounding (they exist, see `_compare`) move by ±lr whichever way they round.

Usage:
  .venv/bin/python benchmarks/bench_linearized_step.py                    # both backbones
  .venv/bin/python benchmarks/bench_linearized_step.py --backbone effnet-lite0 --image-size 64
  .venv/bin/python benchmarks/bench_linearized_step.py --threads 1 --contiguous-nonlinear

The exit status is 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from taskvec.linearization import LinearizedBackbone  # noqa: E402
from taskvec.models import build_backbone  # noqa: E402
from taskvec.models.heads import ClassificationHead, Classifier  # noqa: E402

BACKBONES = ("effnet-lite0", "minilm")
VARIANTS = ("nonlinear", "linear", "reference")
RATIOS = (("linear", "nonlinear"), ("linear", "reference"), ("reference", "nonlinear"), ("linear", "nonlinear-contiguous"))
NUM_CLASSES = 10
LR, WEIGHT_DECAY, GRAD_CLIP = 3e-5, 0.1, 1.0  # non-linear FT's default lr; TrainConfig's weight decay and clipping


# --------------------------------------------------------------------------- the reference
class ReferenceLinearized(nn.Module):
    """f_lin as in the paper's code: torch.func.jvp of the whole model, autograd through it."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.model = backbone
        self.names = [n for n, _ in backbone.named_parameters()]
        self.params0 = tuple(p.detach().clone() for p in backbone.parameters())

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        dparams = tuple(p - p0 for p, p0 in zip(self.model.parameters(), self.params0))

        def f(*values: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, dict(zip(self.names, values)), args=(), kwargs=batch)

        with sdpa_kernel(SDPBackend.MATH):
            out, dp = torch.func.jvp(f, self.params0, dparams)
        return out + dp


class ChannelsLastInput(nn.Module):
    """The non-linear model fed channels-last images, as taskvec trains it on CPU (and as
    taskvec.linearization feeds the linearized one)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.model = backbone

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}
        return self.model(**batch)


# --------------------------------------------------------------------------- set-up
def build_base(name: str, args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    if name == "effnet-lite0":
        return build_backbone(name, image_size=args.image_size)
    return build_backbone(name)


def make_batch(base: nn.Module, name: str, args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = args.batch_size
    if name == "effnet-lite0":
        batch = {"pixels": torch.rand(n, 3, args.image_size, args.image_size, generator=g) * 2 - 1}
    else:  # random token ids, padded to seq_length: lengths in [seq_length/4, seq_length]
        vocab = base.tokenizer.vocab_size
        length = args.seq_length
        ids = torch.randint(1000, vocab, (n, length), generator=g)
        lengths = torch.randint(max(2, length // 4), length + 1, (n,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids[:, 0] = base.tokenizer.cls_token_id
        ids[torch.arange(n), lengths - 1] = base.tokenizer.sep_token_id
        ids = ids * mask  # [PAD] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if base._uses_token_types:
            batch["token_type_ids"] = torch.zeros_like(ids)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return batch, labels


def make_head(base: nn.Module) -> ClassificationHead:
    g = torch.Generator().manual_seed(2)
    return ClassificationHead(F.normalize(torch.randn(NUM_CLASSES, base.embed_dim, generator=g), dim=-1), scale=30.0)


class Variant:
    """A Classifier, its trainable parameters and an AdamW, as taskvec.train.finetune sets them up."""

    def __init__(self, kind: str, base: nn.Module, head: ClassificationHead):
        self.kind = kind
        encoder = copy.deepcopy(base)
        if kind == "linear":
            encoder = LinearizedBackbone(encoder)
            trainable = encoder.model
        elif kind == "reference":
            encoder = ReferenceLinearized(encoder)
            trainable = encoder.model
        elif kind == "nonlinear":  # channels-last images, as taskvec's TunedEncoder feeds f since issue 13
            encoder = ChannelsLastInput(encoder)
            trainable = encoder.model
        else:  # "nonlinear-contiguous": the layout taskvec's non-linear step used before
            trainable = encoder
        self.model = Classifier(encoder, head)
        self.model.train()
        self.params = dict(trainable.named_parameters())
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=LR, weight_decay=WEIGHT_DECAY)

    def loss_and_grads(self, batch, labels) -> torch.Tensor:
        loss = F.cross_entropy(self.model(**batch), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    def step(self, batch, labels) -> float:
        """One training step, exactly as in taskvec.train.finetune's loop."""
        loss = self.loss_and_grads(batch, labels)
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), GRAD_CLIP)
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------- correctness
def _grads(variant: Variant) -> dict[str, torch.Tensor]:
    """Gradients by name; a parameter the loss does not reach (BERT's pooler) counts as zero."""
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for n, p in variant.params.items()}


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> tuple[float, bool]:
    """(‖a − b‖ / ‖b‖ over all tensors together, per-tensor allclose).

    The absolute tolerance is relative to the largest gradient entry of the whole model, not of
    each tensor: some gradients are zero in exact arithmetic (BERT's attention key biases: a
    softmax does not see a shift common to all keys) and hold rounding noise of ~1e-8, which no
    two computations reproduce.
    """
    diff = torch.sqrt(sum(((a[n] - b[n]).double() ** 2).sum() for n in b))
    norm = torch.sqrt(sum((b[n].double() ** 2).sum() for n in b))
    atol = rtol * max(b[n].abs().max().item() for n in b)
    return (diff / norm).item(), all(torch.allclose(a[n], b[n], rtol=rtol, atol=atol) for n in b)


def check_correctness(base: nn.Module, head: ClassificationHead, batch, labels, dtype: torch.dtype, rtol: float) -> dict:
    """Losses and gradients: `linear` vs `reference` from the same θ0 + δ; `linear` vs `nonlinear` at θ0.

    Run in float64 for the verdict, in float32 for information. In float32 a pass is not
    guaranteed even for two correct implementations: ReLU6 has kinks, and a pre-activation within
    rounding distance of 0 or 6 that lands on the other side in one of the two computations
    (different summation order: memory layout, kernel, thread count) zeroes or restores one
    entry of the back-propagated gradient, which then reaches every earlier layer. Seen with
    effnet-lite0 at 64 px: one flipped entry of 245,760 at block 7 gives a 2.6e-4 relative
    difference, exactly as large between the plain non-linear model run in the two memory
    layouts. In float64 rounding is ~1e-16 and such flips do not happen in practice.
    """
    base = copy.deepcopy(base).to(dtype)
    head = copy.deepcopy(head).to(dtype)
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
    lin, ref = Variant("linear", base, head), Variant("reference", base, head)
    # θ = θ0 + δ, the same δ for both linearized models (random, about 1% of each tensor's scale)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in lin.params.items():
            p.add_(torch.randn(p.shape, generator=g, dtype=dtype) * (0.01 * p.abs().mean() + 1e-4))
            ref.params[name].copy_(p)
    loss_lin = lin.loss_and_grads(batch, labels).item()
    loss_ref = ref.loss_and_grads(batch, labels).item()
    grad_err, grad_close = _compare(_grads(lin), _grads(ref), rtol)
    del lin, ref
    # at θ0, ∇θ L(f_lin) = J(θ0)ᵀ g = ∇θ L(f)
    lin0, non = Variant("linear", base, head), Variant("nonlinear", base, head)
    loss0_lin = lin0.loss_and_grads(batch, labels).item()
    loss0_non = non.loss_and_grads(batch, labels).item()
    grad0_err, grad0_close = _compare(_grads(lin0), _grads(non), rtol)
    result = {
        "dtype": str(dtype).removeprefix("torch."),
        "rtol": rtol,
        "loss_linear": loss_lin,
        "loss_reference": loss_ref,
        "loss_close": abs(loss_lin - loss_ref) <= rtol * abs(loss_ref),
        "grad_rel_err": grad_err,
        "grad_close": grad_close,
        "at_theta0_loss_close": abs(loss0_lin - loss0_non) <= rtol * abs(loss0_non),
        "at_theta0_grad_rel_err": grad0_err,
        "at_theta0_grad_close": grad0_close,
    }
    result["ok"] = all(v for k, v in result.items() if k.endswith("close"))
    return result


def _describe_check(c: dict) -> str:
    return (
        f"{c['dtype']}: linear vs reference from θ0+δ: loss {c['loss_linear']:.8f} vs {c['loss_reference']:.8f}, "
        f"gradients rel. err {c['grad_rel_err']:.1e}; at θ0, linear vs nonlinear gradients rel. err "
        f"{c['at_theta0_grad_rel_err']:.1e}; allclose at rtol {c['rtol']:g}: {'yes' if c['ok'] else 'NO'}"
    )


# --------------------------------------------------------------------------- memory
def _proc_status(key: str) -> int:
    """A kB field of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_probe(args: argparse.Namespace) -> dict:
    """Run in a fresh subprocess: peak resident memory while `args.probe_steps` steps run."""
    torch.set_num_threads(args.threads)
    base = build_base(args.backbone, args)
    batch, labels = make_batch(base, args.backbone, args)
    variant = Variant(args.variant, base, make_head(base))
    del base
    gc.collect()
    setup_peak = _proc_status("VmHWM")
    before = _proc_status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        reset = True
    except OSError:
        reset = False
    for _ in range(args.probe_steps):
        variant.step(batch, labels)
    peak = _proc_status("VmHWM")
    return {
        "rss_before_bytes": before,
        "setup_peak_bytes": setup_peak,
        "peak_during_steps_bytes": peak if reset else None,
        "step_peak_bytes": peak - before if reset else None,
    }


def measure_memory(backbone: str, variant: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--backbone",
        backbone,
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        str(args.image_size),
        "--seq-length",
        str(args.seq_length),
        "--threads",
        str(args.threads),
        "--probe-steps",
        str(args.probe_steps),
        "--_probe",
        variant,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- timing
def _quantile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=4, method="inclusive")[{0.25: 0, 0.75: 2}[q]] if len(xs) > 1 else xs[0]


def bench_backbone(name: str, args: argparse.Namespace) -> dict:
    base = build_base(name, args)
    batch, labels = make_batch(base, name, args)
    head = make_head(base)
    shape = {k: list(v.shape) for k, v in batch.items()}
    print(
        f"\n== {name}: {sum(p.numel() for p in base.parameters()) / 1e6:.2f} M parameters, batch {shape}, "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    check = check_correctness(base, head, batch, labels, torch.float64, rtol=1e-7)
    check32 = check_correctness(base, head, batch, labels, torch.float32, rtol=1e-4)
    print(f"correctness, {_describe_check(check)} -> {'OK' if check['ok'] else 'MISMATCH'}", flush=True)
    print(f"  for information, {_describe_check(check32)}", flush=True)

    kinds = list(VARIANTS) + (["nonlinear-contiguous"] if args.contiguous_nonlinear else [])
    variants = {k: Variant(k, base, head) for k in kinds}
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    for round_ in range(args.warmup + args.repeats):
        for kind, v in variants.items():  # interleaved: one step of each variant per round
            start, start_cpu = time.perf_counter(), time.process_time()
            v.step(batch, labels)
            if round_ >= args.warmup:
                wall[kind].append(time.perf_counter() - start)
                cpu[kind].append(time.process_time() - start_cpu)
    del variants
    gc.collect()

    memory = {}
    if args.memory:
        for k in kinds:
            runs = [measure_memory(name, k, args) for _ in range(args.memory_repeats)]
            memory[k] = {key: statistics.median(r[key] for r in runs) if runs[0][key] is not None else None for key in runs[0]}
            memory[k]["runs"] = runs

    def summary(times: dict[str, list[float]]) -> dict:
        med = {k: statistics.median(ts) for k, ts in times.items()}
        return {
            "median_s": med,
            "iqr_s": {k: (_quantile(ts, 0.25), _quantile(ts, 0.75)) for k, ts in times.items()},
            "ratio_of_medians": {f"{a}/{b}": med[a] / med[b] for a, b in RATIOS if a in med and b in med},
            "median_of_paired_ratios": {
                f"{a}/{b}": statistics.median(x / y for x, y in zip(times[a], times[b])) for a, b in RATIOS if a in times and b in times
            },
        }

    stats = {"wall": summary(wall), "cpu": summary(cpu)}
    print(f"{'variant':<13} {'wall median ms':>15} {'wall IQR ms':>16} {'CPU median ms':>14} {'RSS before MiB':>15} {'step peak +MiB':>15}")
    for k in kinds:
        mem = memory.get(k, {})
        before = f"{mem['rss_before_bytes'] / 2**20:.0f}" if mem else "-"
        step_peak = f"{mem['step_peak_bytes'] / 2**20:.0f}" if mem.get("step_peak_bytes") is not None else "-"
        lo, hi = stats["wall"]["iqr_s"][k]
        print(
            f"{k:<13} {stats['wall']['median_s'][k] * 1e3:>15.1f} {f'{lo * 1e3:.0f}-{hi * 1e3:.0f}':>16} "
            f"{stats['cpu']['median_s'][k] * 1e3:>14.1f} {before:>15} {step_peak:>15}"
        )
    for clock in ("wall", "cpu"):
        print(
            f"{clock:>4} ratios, of medians: "
            + ", ".join(f"{r} {v:.2f}" for r, v in stats[clock]["ratio_of_medians"].items())
            + "; medians of per-round ratios: "
            + ", ".join(f"{r} {v:.2f}" for r, v in stats[clock]["median_of_paired_ratios"].items()),
            flush=True,
        )
    return {
        "backbone": name,
        "batch": shape,
        "correctness": check,
        "correctness_float32": check32,
        "wall_s": wall,
        "cpu_s": cpu,
        "stats": stats,
        "memory": memory,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=(*BACKBONES, "all"), default="all")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32, help="effnet-lite0 input size (default 32, the default benchmark's)")
    p.add_argument("--seq-length", type=int, default=64, help="minilm padded token length (default 64: movie-sentiment's)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (one step of each variant per round)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--probe-steps", type=int, default=3, help="training steps per memory subprocess")
    p.add_argument(
        "--memory-repeats", type=int, default=3, help="memory subprocesses per variant; the median is reported (RSS varies by tens of MiB)"
    )
    p.add_argument(
        "--contiguous-nonlinear",
        action="store_true",
        help="add a fourth variant: the non-linear step with contiguous (NCHW) input, as taskvec "
        "trained it before it fed channels-last images on CPU (effnet-lite0)",
    )
    p.add_argument("--json", type=Path, help="also write all measurements to this file")
    p.add_argument("--_probe", dest="variant", choices=(*VARIANTS, "nonlinear-contiguous"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.variant:  # memory subprocess
        print(json.dumps(memory_probe(args)))
        return 0

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    names = BACKBONES if args.backbone == "all" else (args.backbone,)
    results = [bench_backbone(n, args) for n in names]
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1))
    return 0 if all(r["correctness"]["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
