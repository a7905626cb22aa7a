"""The empirical NTK's Gram matrix: per-sample Jacobians of the encoder's (or head's) outputs
with respect to the encoder's parameters, contracted into K = Σ_groups J_g J_gᵀ. `ntk.py`
defines the kernel and the analyses built on it; this module is how the matrix is computed
within a memory budget, and how processes share that work.

How it is computed, chosen by measuring EfficientNet-Lite0 at 32 px on a shared 2-core CPU:
Jacobian contraction. Per-sample Jacobians J(x) ∈ R^{C×P} come from `vmap(jacrev(f))` over
chunks of `chunk` samples, and K = J Jᵀ is accumulated block by block. The alternatives lose:
kernel-vector products (a vjp per (sample, output), then a jvp over all N samples) cost N·C
passes over all N samples, ~N times more than the C backward passes per sample here; a
Python loop of per-sample backward passes was ~2× slower than the vmapped one, and
per-sample `jacrev` (vmapped over the outputs only) ~3× slower. Chunks of 25–50 samples were
equally fast; 4 was 5× slower (every call re-prepares all conv weights), 100 slower again.

Memory: J for all samples is N·C·P floats (27 GB for 200 samples, 10 logits and the 3.4 M
parameters of EfficientNet-Lite0), so the parameters are split into contiguous groups whose
Jacobian over ALL samples fits in `max_memory`, and K = Σ_groups J_g J_gᵀ. Each group costs
a forward pass and a backward pass down to the group (most parameters sit in the late,
low-resolution layers, where that pass is short), so fewer, bigger groups are faster: for
200 samples, 4 GiB took 238 CPU-s and 1 GiB 617. A single tensor too big for the budget on
its own keeps a block of samples' Jacobians and streams the others past it (recomputing
them). Peak memory is about max_memory + 2 GB for EfficientNet-Lite0 (the vmapped chunk).

Measured (EfficientNet-Lite0, 32 px, 10 logits, 200 samples, max_memory 4 GiB): 70–78 s with
one thread, 5.7–6.4 GB peak RSS; with two threads on cores shared with other jobs it took
210 CPU-s (OpenMP threads waiting on each other), so pin one thread when cores are shared.
The trace kernel costs 2·N²·C·P flops of contraction (~18 CPU-s here), the full kernel C
times more. output="features" has embed_dim outputs (1280 here): for small encoders only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ..distributed import Ranks
from ..errors import TaskvecError
from ..linearization import LinearizedBackbone, forward_ad_safe_attention
from ..models.base import Batch
from ..models.heads import Classifier

Output = Literal["logits", "features"]
Kernel = Literal["trace", "full"]
MAX_MEMORY_CAP = 4 << 30  # default budget: a third of the available memory, at most 4 GiB


def default_max_memory() -> int:
    """Bytes of Jacobians to hold at once: a third of MemAvailable, between 256 MiB and 4 GiB."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2 << 30
    return int(min(MAX_MEMORY_CAP, max(256 << 20, available // 3)))


def _num_samples(batch: Batch) -> int:
    if not batch:
        raise TaskvecError("empty batch: no inputs to compute a kernel on")
    sizes = {len(v) for v in batch.values()}
    if len(sizes) != 1:
        raise TaskvecError(f"batch tensors disagree on the number of samples: {sorted(sizes)}")
    return sizes.pop()


def _resolve(model: nn.Module, output: Output):
    """(the module to call, its parameters at which to differentiate, the head or None)."""
    if output not in ("logits", "features"):
        raise TaskvecError(f"unknown output {output!r}; expected 'logits' or 'features'")
    encoder, head = (model.encoder, model.head) if isinstance(model, Classifier) else (model, None)
    if output == "logits" and head is None:
        raise TaskvecError("output='logits' needs a Classifier (encoder + head); pass output='features' for an encoder alone")
    if isinstance(encoder, LinearizedBackbone):  # f_lin's Jacobian is J(x; θ0) of its base
        return encoder.model, {n: p.detach() for n, p in encoder.params0.items()}, (head if output == "logits" else None)
    params = {n: p.detach() for n, p in encoder.named_parameters()}
    if not params:
        raise TaskvecError("the encoder has no parameters: its NTK is zero")
    return encoder, params, (head if output == "logits" else None)


class _Samples:
    """The concatenation of several batches, addressed by global sample index, never copied."""

    def __init__(self, batches: Sequence[Batch]):
        self.batches = list(batches)
        self.sizes = [_num_samples(b) for b in self.batches]
        self.n = sum(self.sizes)

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, Batch]]:
        offset = 0
        for batch, n in zip(self.batches, self.sizes):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                yield lo, {k: v[lo - offset : hi - offset] for k, v in batch.items()}
            offset += n

    def slices(self, start: int, stop: int, size: int) -> Iterator[tuple[int, Batch]]:
        """(global offset, sub-batch) pieces of at most `size` samples covering [start, stop).

        Pieces span batch boundaries where the batches' tensors can be concatenated (same
        keys and trailing shapes), so the chunks keep one shape: every new input shape costs
        the CPU convolution library a fresh kernel set-up.
        """
        for s in range(start, stop, size):
            parts = list(self._pieces(s, min(s + size, stop)))
            if len(parts) == 1:
                yield parts[0]
                continue
            try:
                joined = {k: torch.cat([p[k] for _, p in parts]) for k in parts[0][1]}
            except (RuntimeError, KeyError):  # e.g. token ids padded to different lengths
                yield from parts
            else:
                yield s, joined


def _groups(names: list[str], params: Mapping[str, torch.Tensor], per_param_bytes: int, budget: int) -> list[list[str]]:
    """Contiguous parameter groups whose Jacobian over all samples fits the budget."""
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name in names:
        cost = params[name].numel() * per_param_bytes
        if current and used + cost > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += cost
    if current:
        groups.append(current)
    return groups


def _contract(ja: list[torch.Tensor], jb: list[torch.Tensor], kernel: Kernel) -> torch.Tensor:
    """Σ over parameter tensors of Jacobian products: (n, m) for trace, (n, m, C, C) for full."""
    total = None
    for a, b in zip(ja, jb):  # a: (n, C, p), b: (m, C, p)
        if kernel == "trace":
            part = a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T
        else:
            n, c, _ = a.shape
            m = b.shape[0]
            part = (a.reshape(n * c, -1) @ b.reshape(m * c, -1).T).reshape(n, c, m, c).permute(0, 2, 1, 3)
        part = part.double()
        total = part if total is None else total + part
    if total is None:
        raise TaskvecError("no Jacobians to contract: a side of the Gram matrix has no samples")
    return total


class _Jacobians:
    """Per-sample Jacobians of the model's outputs with respect to a group of its parameters (the
    others held at their values), for a range of samples: one (n, C, p) tensor per parameter."""

    def __init__(self, module: nn.Module, params: dict[str, torch.Tensor], head: nn.Module | None, chunk: int):
        self.module, self.params, self.head, self.chunk = module, params, head, chunk
        self.per_sample = jacrev(self._f)
        self.batched = vmap(self.per_sample, in_dims=(None, 0))
        self.use_vmap = True

    def _f(self, group: dict[str, torch.Tensor], sample: Batch) -> torch.Tensor:
        batch = {k: v.unsqueeze(0) for k, v in sample.items()}
        out = functional_call(self.module, {**self.params, **group}, args=(), kwargs=batch, strict=False)
        return (self.head(out) if self.head is not None else out)[0]

    def _jac(self, group: dict[str, torch.Tensor], sub: Batch) -> dict[str, torch.Tensor]:
        """Per-sample Jacobians, vectorized; one sample at a time for models that branch on
        their data (`if mask.all():`), which vmap cannot trace."""
        if self.use_vmap:
            try:
                return self.batched(group, sub)
            except RuntimeError as exc:
                if "vmap" not in str(exc):
                    raise
                self.use_vmap = False
        rows = [self.per_sample(group, {k: v[i] for k, v in sub.items()}) for i in range(_num_samples(sub))]
        return {name: torch.stack([row[name] for row in rows]) for name in group}

    def __call__(self, samples: _Samples, start: int, stop: int, group: list[str]) -> list[torch.Tensor]:
        """Per-sample Jacobians of samples [start, stop): one (n, C, p) tensor per parameter."""
        held: list[torch.Tensor] = []
        for s, sub in samples.slices(start, stop, self.chunk):
            jac = self._jac({n: self.params[n] for n in group}, sub)
            parts = [jac[n].reshape(jac[n].shape[0], jac[n].shape[1], -1) for n in group]
            del jac
            if not held and len(parts[0]) == stop - start:  # one piece: no copy
                return parts
            if not held:  # preallocated: no concatenation copy at the peak
                held = [torch.empty((stop - start, *p.shape[1:]), dtype=p.dtype) for p in parts]
            for h, p in zip(held, parts):
                h[s - start : s - start + len(p)] = p
        return held


@dataclass
class _GramPlan:
    """One Gram matrix to compute: the samples on each side, the kernel, the number of outputs C,
    and the parameter groups whose Jacobians over all samples fit the memory budget."""

    A: _Samples
    B: _Samples
    symmetric: bool
    kernel: Kernel
    max_memory: int
    jacobians: _Jacobians
    num_out: int
    itemsize: int
    groups: list[list[str]]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.A.n, self.B.n) if self.kernel == "trace" else (self.A.n, self.B.n, self.num_out, self.num_out)

    def contribution(self, group: list[str]) -> torch.Tensor:
        """One parameter group's term J_g J_gᵀ of the Gram matrix."""
        params, chunk = self.jacobians.params, self.jacobians.chunk
        part = torch.zeros(self.shape, dtype=torch.float64)
        group_size = sum(params[n].numel() for n in group)
        block = max(chunk, self.max_memory // max(1, group_size * self.num_out * self.itemsize))
        if self.symmetric:
            _symmetric_blocks(part, self.A, group, block, chunk, self.kernel, self.jacobians)
        else:
            _cross_blocks(part, self.A, self.B, group, block, chunk, self.kernel, self.jacobians)
        return part


def _ntk(
    model: nn.Module,
    left: Sequence[Batch],
    right: Sequence[Batch] | None,
    *,
    output: Output,
    chunk: int,
    kernel: Kernel,
    max_memory: int | None,
    progress: bool = False,
    ranks: Ranks | None = None,
) -> torch.Tensor:
    """The Gram matrix between the samples of `left` and `right` (None: `left` with itself, made
    exactly symmetric), with the model in eval mode and its train/eval mode restored after."""
    ranks = ranks if ranks is not None else Ranks()
    if kernel not in ("trace", "full"):
        raise TaskvecError(f"unknown kernel {kernel!r}; expected 'trace' or 'full'")
    if chunk < 1:
        raise TaskvecError(f"chunk must be at least 1, got {chunk}")
    module, params, head = _resolve(model, output)
    max_memory = default_max_memory() if max_memory is None else int(max_memory)
    A = _Samples(left)
    B = A if right is None else _Samples(right)
    symmetric = right is None
    jacobians = _Jacobians(module, params, head, chunk)
    was_training = model.training
    model.eval()
    try:
        plan = _plan(jacobians, A, B, symmetric, kernel, max_memory)
        gram = _sum_over_groups(plan, ranks, progress)
    finally:
        model.train(was_training)
    if symmetric:  # the diagonal blocks are symmetric only up to rounding
        gram = (gram + gram.transpose(0, 1)) / 2 if kernel == "trace" else (gram + gram.permute(1, 0, 3, 2)) / 2
    return gram


def _plan(jacobians: _Jacobians, A: _Samples, B: _Samples, symmetric: bool, kernel: Kernel, max_memory: int) -> _GramPlan:
    """Measure the number of outputs on one chunk, then cut the parameters into groups whose
    Jacobians over all the samples fit `max_memory`."""
    module, params, head, chunk = jacobians.module, jacobians.params, jacobians.head, jacobians.chunk
    with forward_ad_safe_attention(), torch.no_grad():
        first = next(A.slices(0, A.n, chunk))[1]  # a chunk-sized probe warms the conv kernels
        out = functional_call(module, params, args=(), kwargs=first, strict=False)
        out = head(out) if head is not None else out
        num_out = out.reshape(out.shape[0], -1).shape[1]
    itemsize = next(iter(params.values())).element_size()
    held = A.n + (0 if symmetric else B.n)
    groups = _groups(list(params), params, held * num_out * itemsize, max_memory)
    return _GramPlan(A, B, symmetric, kernel, max_memory, jacobians, num_out, itemsize, groups)


def _sum_over_groups(plan: _GramPlan, ranks: Ranks, progress: bool) -> torch.Tensor:
    """Σ over the parameter groups of their terms, each computed by one rank and broadcast."""
    groups, shape = plan.groups, plan.shape
    gram = torch.zeros(shape, dtype=torch.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(groups), desc=f"NTK of {plan.A.n + (0 if plan.symmetric else plan.B.n)} samples, parameter groups", leave=False
        )
    # Groups are dealt out in rounds, one per rank; every rank adds each round's terms in
    # group order, so the sum is the single process's to the last bit.
    with forward_ad_safe_attention():
        for first in range(0, len(groups), ranks.count):
            dealt = groups[first : first + ranks.count]
            own = plan.contribution(dealt[ranks.index]) if ranks.index < len(dealt) else None
            for source in range(len(dealt)):
                term = own if source == ranks.index else torch.empty(shape, dtype=torch.float64)
                assert term is not None, "a rank dealt a group this round has computed its term"
                gram += ranks.broadcast_tensor(term, source)
            if bar is not None:
                bar.update(len(dealt))
    if bar is not None:
        bar.close()
    return gram


def _symmetric_blocks(gram, A: _Samples, group, block: int, chunk: int, kernel: Kernel, jacobians) -> None:
    """Hold `block` samples' Jacobians; stream the later samples past them (recomputing)."""
    for a0 in range(0, A.n, block):
        a1 = min(a0 + block, A.n)
        ja = jacobians(A, a0, a1, group)
        gram[a0:a1, a0:a1] += _contract(ja, ja, kernel)
        for b0 in range(a1, A.n, chunk):
            b1 = min(b0 + chunk, A.n)
            part = _contract(ja, jacobians(A, b0, b1, group), kernel)
            gram[a0:a1, b0:b1] += part
            gram[b0:b1, a0:a1] += part.transpose(0, 1) if kernel == "trace" else part.permute(1, 0, 3, 2)
        del ja


def _cross_blocks(gram, A: _Samples, B: _Samples, group, block: int, chunk: int, kernel: Kernel, jacobians) -> None:
    if A.n + B.n <= block:  # everything fits: each Jacobian once
        gram += _contract(jacobians(A, 0, A.n, group), jacobians(B, 0, B.n, group), kernel)
        return
    for a0 in range(0, A.n, block):
        a1 = min(a0 + block, A.n)
        ja = jacobians(A, a0, a1, group)
        for b0 in range(0, B.n, chunk):
            b1 = min(b0 + chunk, B.n)
            gram[a0:a1, b0:b1] += _contract(ja, jacobians(B, b0, b1, group), kernel)
        del ja
