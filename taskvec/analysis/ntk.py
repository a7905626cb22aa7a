"""The empirical neural tangent kernel and its eigenfunctions' localization (the paper's Fig. 6).

The linearized model is a kernel machine with the empirical NTK
k(x, x') = ∇_θ f(x; θ0)ᵀ ∇_θ f(x'; θ0), θ = the ENCODER's parameters (the head is frozen).
For a model with C outputs this module uses the trace kernel
K[i, j] = Σ_c ⟨∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ⟩ by default, and the full per-output kernel
K[i, j, c, d] = ⟨∂f_c(x_i)/∂θ, ∂f_d(x_j)/∂θ⟩ on request (`kernel="full"`).

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

from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ..distributed import Ranks
from ..errors import TaskvecError
from ..io import atomic_path
from ..linearize import LinearizedBackbone, forward_ad_safe_attention
from ..models.base import Batch
from ..models.heads import Classifier
from ..results import NtkLocalization

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


def empirical_ntk(
    model: nn.Module,
    batch_a: Batch,
    batch_b: Batch | None = None,
    *,
    output: Output = "logits",
    chunk: int = 32,
    kernel: Kernel = "trace",
    max_memory: int | None = None,
    progress: bool = False,
    ranks: Ranks | None = None,
) -> torch.Tensor:
    """Empirical NTK Gram matrix of `model` between the samples of `batch_a` and `batch_b`.

    model: a `Classifier` (encoder + frozen head) or an encoder alone. The gradient is taken
        with respect to the encoder's parameters only, at their current values. A
        `LinearizedBackbone`'s Jacobian is J(x; θ0) whatever θ, so its kernel is its base
        model's at θ0 (with output="logits", the head is differentiated at f(x; θ0)).
    output: "logits" (the head's outputs; needs a Classifier) or "features" (the encoder's).
        Features have embed_dim outputs (1280 for EfficientNet-Lite0), so that kernel costs
        embed_dim backward passes per sample (C per sample in general): small encoders only.
    batch_b: None for the symmetric Gram matrix of batch_a (exactly symmetric), else the
        cross kernel K(batch_a, batch_b).
    chunk: samples per vmapped Jacobian call.
    kernel: "trace" -> float64 tensor (Na, Nb); "full" -> float64 tensor (Na, Nb, C, C).
    max_memory: bytes of Jacobians held at once; None: `default_max_memory()` (a third of
        the available memory, at most 4 GiB). Results do not depend on it beyond rounding.
    progress: a progress bar over the parameter groups (one pass over the samples each).
    ranks: processes that share the work (`Ranks.of_process_group()` under torchrun): the
        parameter groups are dealt out among them and every rank returns the whole matrix,
        equal to one process's to the last bit. Every rank must call this together.

    The model is evaluated in eval mode (frozen BatchNorm) and its train/eval mode restored.
    """
    return _ntk(model, [batch_a], None if batch_b is None else [batch_b], output=output, chunk=chunk, kernel=kernel,
                max_memory=max_memory, progress=progress, ranks=ranks)


def ntk_localization(
    model: nn.Module,
    batch_train: Batch,
    batch_control: Batch,
    *,
    top_k: int = 10,
    output: Output = "logits",
    chunk: int = 32,
    max_memory: int | None = None,
    progress: bool = False,
    ranks: Ranks | None = None,
) -> "NtkLocalization":
    """Local energy of the NTK's top eigenfunctions on a training task D_t and a control D_c.

    The trace-kernel Gram matrix on D_t ∪ D_c is eigendecomposed (float64, eigenvalues
    descending). For each of the top_k unit eigenvectors v: energy_train = Σ_{i∈D_t} v_i²,
    energy_control = Σ_{i∈D_c} v_i² (the two sum to 1). Returns an `NtkLocalization`:
    eigenvalues, eigenvalue_share (eigenvalue / trace K), energy_train, energy_control
    (lists of length min(top_k, N)), n_train, n_control, trace_share_train (D_t's share of
    trace K: the kernel's scale on each task), and localization = the mean over
    those eigenfunctions of max(energy_train, energy_control): 1 when each one lives on one
    task only; ≈0.5 for eigenvectors spread evenly over two equal-sized sets. `ranks`: as in
    `empirical_ntk` (every rank returns the same result).
    """
    if top_k < 1:
        raise TaskvecError(f"top_k must be at least 1, got {top_k}")
    n_train, n_control = _num_samples(batch_train), _num_samples(batch_control)
    gram = _ntk(model, [batch_train, batch_control], None, output=output, chunk=chunk, kernel="trace", max_memory=max_memory,
                progress=progress, ranks=ranks)
    values, vectors = torch.linalg.eigh(gram.double())
    order = torch.argsort(values, descending=True)[: min(top_k, len(values))]
    values, vectors = values[order], vectors[:, order]
    energy = vectors.square()
    energy_train = energy[:n_train].sum(0)
    energy_control = energy[n_train:].sum(0)
    trace = float(gram.diagonal().sum())
    return NtkLocalization(
        # D_t's share of trace K: far from its share of the samples, the kernel's scale alone
        # (e.g. larger gradients on one task's inputs) tilts the eigenvectors towards one task.
        trace_share_train=float(gram.diagonal()[:n_train].sum()) / trace if trace > 0 else 0.0,
        eigenvalues=values.tolist(),
        eigenvalue_share=(values / trace).tolist() if trace > 0 else [0.0] * len(values),
        energy_train=energy_train.tolist(),
        energy_control=energy_control.tolist(),
        localization=float(torch.maximum(energy_train, energy_control).mean()),
        n_train=n_train,
        n_control=n_control,
    )


def plot_ntk_localization(results: Mapping[str, NtkLocalization], path: str | Path, train_name: str, control_name: str) -> None:
    """Fig. 6: for each model (one panel each), stacked bars of the local energy of the top
    eigenfunctions on D_t and on D_c, x = eigenfunction index by decreasing eigenvalue."""
    from matplotlib.figure import Figure

    if not results:
        raise TaskvecError("no NTK localization results to plot")
    colors = {"train": "#1f77b4", "control": "#ff7f0e"}
    fig = Figure(figsize=(max(7.5, 0.6 + 3.6 * len(results)), 3.4), layout="constrained")
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    for ax, (label, res) in zip(axes, results.items()):
        k = len(res.energy_train)
        xs = range(1, k + 1)
        ax.bar(xs, res.energy_train, 0.8, color=colors["train"], label=f"energy on D_t ({train_name})")
        ax.bar(xs, res.energy_control, 0.8, bottom=res.energy_train, color=colors["control"], label=f"energy on D_c ({control_name})")
        ax.axhline(res.n_train / (res.n_train + res.n_control), color="k", lw=0.8, ls=":", label="D_t's share of the samples")
        ax.set_title(f"{label}\nlocalization (mean of the larger share) {res.localization:.2f}", fontsize=9)
        ax.set_xlabel("eigenfunction (by decreasing eigenvalue)")
        ax.set_xticks(list(xs) if k <= 12 else list(range(1, k + 1, max(1, k // 10))))
        ax.set_xlim(0.4, k + 0.6)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("local energy")
    handles, labels = axes[0].get_legend_handles_labels()
    handles, labels = handles[1:] + handles[:1], labels[1:] + labels[:1]  # bars first, then the line
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(f"NTK eigenfunctions: local energy on {train_name} (D_t) vs {control_name} (D_c)", fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)


# --------------------------------------------------------------------------------------------
# implementation


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
    groups, current, used = [], [], 0
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
    return total


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
    names = list(params)

    def f(group: dict[str, torch.Tensor], sample: Batch) -> torch.Tensor:
        batch = {k: v.unsqueeze(0) for k, v in sample.items()}
        out = functional_call(module, {**params, **group}, args=(), kwargs=batch, strict=False)
        return (head(out) if head is not None else out)[0]

    per_sample = jacrev(f)
    batched = vmap(per_sample, in_dims=(None, 0))
    use_vmap = True

    def jac_fn(group: dict[str, torch.Tensor], sub: Batch) -> dict[str, torch.Tensor]:
        """Per-sample Jacobians, vectorized; one sample at a time for models that branch on
        their data (`if mask.all():`), which vmap cannot trace."""
        nonlocal use_vmap
        if use_vmap:
            try:
                return batched(group, sub)
            except RuntimeError as exc:
                if "vmap" not in str(exc):
                    raise
                use_vmap = False
        rows = [per_sample(group, {k: v[i] for k, v in sub.items()}) for i in range(_num_samples(sub))]
        return {name: torch.stack([row[name] for row in rows]) for name in group}

    def jacobians(samples: _Samples, start: int, stop: int, group: list[str]) -> list[torch.Tensor]:
        """Per-sample Jacobians of samples [start, stop): one (n, C, p) tensor per parameter."""
        held: list[torch.Tensor] = []
        for s, sub in samples.slices(start, stop, chunk):
            jac = jac_fn({n: params[n] for n in group}, sub)
            parts = [jac[n].reshape(jac[n].shape[0], jac[n].shape[1], -1) for n in group]
            del jac
            if not held and len(parts[0]) == stop - start:  # one piece: no copy
                return parts
            if not held:  # preallocated: no concatenation copy at the peak
                held = [torch.empty((stop - start, *p.shape[1:]), dtype=p.dtype) for p in parts]
            for h, p in zip(held, parts):
                h[s - start : s - start + len(p)] = p
        return held

    was_training = model.training
    model.eval()
    try:
        with forward_ad_safe_attention(), torch.no_grad():
            first = next(A.slices(0, A.n, chunk))[1]  # a chunk-sized probe warms the conv kernels
            out = functional_call(module, params, args=(), kwargs=first, strict=False)
            out = head(out) if head is not None else out
            num_out = out.reshape(out.shape[0], -1).shape[1]
        itemsize = next(iter(params.values())).element_size()
        held = A.n + (0 if symmetric else B.n)
        groups = _groups(names, params, held * num_out * itemsize, max_memory)
        shape = (A.n, B.n) if kernel == "trace" else (A.n, B.n, num_out, num_out)
        gram = torch.zeros(shape, dtype=torch.float64)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(groups), desc=f"NTK of {A.n + (0 if symmetric else B.n)} samples, parameter groups", leave=False)

        def contribution(group: list[str]) -> torch.Tensor:
            """One parameter group's term J_g J_gᵀ of the Gram matrix."""
            part = torch.zeros(shape, dtype=torch.float64)
            group_size = sum(params[n].numel() for n in group)
            block = max(chunk, max_memory // max(1, group_size * num_out * itemsize))
            if symmetric:
                _symmetric_blocks(part, A, group, block, chunk, kernel, jacobians)
            else:
                _cross_blocks(part, A, B, group, block, chunk, kernel, jacobians)
            return part

        # Groups are dealt out in rounds, one per rank; every rank adds each round's terms in
        # group order, so the sum is the single process's to the last bit.
        with forward_ad_safe_attention():
            for first in range(0, len(groups), ranks.count):
                dealt = groups[first : first + ranks.count]
                own = contribution(dealt[ranks.index]) if ranks.index < len(dealt) else None
                for source in range(len(dealt)):
                    term = own if source == ranks.index else torch.empty(shape, dtype=torch.float64)
                    gram += ranks.broadcast_tensor(term, source)
                if bar is not None:
                    bar.update(len(dealt))
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)
    if symmetric:  # the diagonal blocks are symmetric only up to rounding
        gram = (gram + gram.transpose(0, 1)) / 2 if kernel == "trace" else (gram + gram.permute(1, 0, 3, 2)) / 2
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
