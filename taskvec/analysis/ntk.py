"""The empirical neural tangent kernel and its eigenfunctions' localization (the paper's Fig. 6).

The linearized model is a kernel machine with the empirical NTK
k(x, x') = ∇_θ f(x; θ0)ᵀ ∇_θ f(x'; θ0), θ = the ENCODER's parameters (the head is frozen).
For a model with C outputs this module uses the trace kernel
K[i, j] = Σ_c ⟨∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ⟩ by default, and the full per-output kernel
K[i, j, c, d] = ⟨∂f_c(x_i)/∂θ, ∂f_d(x_j)/∂θ⟩ on request (`kernel="full"`).

The Gram matrix itself, and how it is computed within a memory budget, is `gram.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..distributed import Ranks
from ..errors import TaskvecError
from ..io import atomic_path
from ..models.base import Batch
from ..results import NtkLocalization
from .gram import MAX_MEMORY_CAP, Kernel, Output, _ntk, _num_samples, default_max_memory

__all__ = ["MAX_MEMORY_CAP", "Kernel", "Output", "default_max_memory", "empirical_ntk", "ntk_localization", "plot_ntk_localization"]


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
    return _ntk(
        model,
        [batch_a],
        None if batch_b is None else [batch_b],
        output=output,
        chunk=chunk,
        kernel=kernel,
        max_memory=max_memory,
        progress=progress,
        ranks=ranks,
    )


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
) -> NtkLocalization:
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
    gram = _ntk(
        model,
        [batch_train, batch_control],
        None,
        output=output,
        chunk=chunk,
        kernel="trace",
        max_memory=max_memory,
        progress=progress,
        ranks=ranks,
    )
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
