"""What a fine-tune trains: the parameters φ it optimizes and the weights θ(φ) they give.

Every fine-tuning mode is one of three parameterizations of the change to θ0, trained either
through f or through its linearization f_lin:

* `WeightSubset`: φ = the selected weights themselves (all of them for the paper's modes);
  θ = φ on the selection, θ0 elsewhere.
* `SparseWeights`: φ = the weights holding at least one selected entry; θ = φ on the selected
  entries (a boolean mask per tensor), θ0 everywhere else (TaLoS).
* `LowRank`: φ = (A, B) per selected matrix W, θ = W0 + s·B·A with s = alpha / rank, B
  starting at 0 (LoRA). Linearized in (A, B) around (A0, 0) the change is s·B·A0: A gets no
  gradient there, so the linearized variant (L-LoRA) trains B alone. Linearizing each LoRA
  layer on its own (the official code: peta finetune_clip.py `linearize_lora_model`, l. 97-112,
  wrapping each layer in peta/models/LinearizedModel.py `LinearizedModelWraper`, l. 120-173;
  fusion_bench models/linearized/vision_model.py `linearize_lora_model_`) gives W0x + s·B·A0·x:
  f itself at θ(φ), trained non-linearly (`linearize = "adapters"`); linearizing the whole
  network gives f_lin (`"network"`). peft's adapter dropout on the layer's input (0.1 in the
  official configs) is not modelled: a weight parameterization has no separate adapter path.

`TunedEncoder` runs the frozen backbone with θ(φ) (non-linear) or as θ0's dual numbers with
the tangent θ(φ) − θ0 restricted to the changed tensors (linearized, `linearization.jvp`): the
partial linearization f(x; θ0) + J_S(x; θ0)(θ_S − θ0_S) of the subset S. The task vector is
always a full-weight difference (zeros outside the selection), so every merge method and
analysis applies to it unchanged.

LoRA is written here rather than taken from `peft`: as a parameterization of the weights it
needs no module surgery (it works on any backbone, open_clip's fused attention projections
included), and its linearized variant needs the change as a tangent, which a wrapped module
does not expose.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..errors import TaskvecError
from ..linearization import LazyTensors, jvp, preferred_layout
from ..models.base import Backbone, Batch

Tensors = dict[str, torch.Tensor]


class Trainable(nn.Module):
    """The trained parameters φ of one fine-tune and the weights they give.

    `trained` maps stable names (checkpoint keys) to φ; `names` lists the backbone parameters
    that can change. `weights()` gives θ on those names (non-linear forward), `tangent()` the
    first-order change θ − θ0 on them (linearized forward).
    """

    def __init__(self, pretrained: Tensors, names: list[str]):
        super().__init__()
        self.names = list(names)
        # θ0: the frozen backbone's own parameters (shared, so they move with it, not copied)
        self.pretrained = {n: pretrained[n] for n in self.names}
        self.trained: dict[str, nn.Parameter] = {}

    def _add(self, name: str, value: torch.Tensor) -> nn.Parameter:
        param = nn.Parameter(value)
        self.register_parameter(f"phi{len(self.trained)}", param)
        self.trained[name] = param
        return param

    def weights(self) -> Tensors:
        raise NotImplementedError

    def tangent_of(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def tangent(self) -> Tensors:
        return {n: self.tangent_of(n) for n in self.names}

    def vector(self, linearized: bool) -> Tensors:
        """The task vector on the changed tensors: θ − θ0 (non-linear), or the tangent."""
        with torch.no_grad():
            if linearized:
                return {n: t.detach().clone() for n, t in self.tangent().items()}
            weights = self.weights()
            return {n: (weights[n] - self.pretrained[n]).detach() for n in self.names}

    def task_vector(self, params: Tensors, linearized: bool) -> Tensors:
        """The task vector's tensors: `vector` on every backbone parameter in `params`, zeros
        where nothing was trained (on the CPU)."""
        changed = self.vector(linearized)
        return {n: changed[n].detach().cpu() if n in changed else torch.zeros_like(p, device="cpu") for n, p in params.items()}

    def entries(self) -> int:
        """How many weight entries this fine-tune can change."""
        return sum(self.pretrained[n].numel() for n in self.names)

    def stats(self) -> dict[str, Any]:
        """What the builder measured about its choice, for the task vector's info (JSON data)."""
        return {}


class WeightSubset(Trainable):
    """φ = the selected weights, starting at θ0 (weight decay acts on θ, as in the paper)."""

    def __init__(self, pretrained: Tensors, names: list[str]):
        super().__init__(pretrained, names)
        for n in self.names:
            self._add(n, pretrained[n].detach().clone())

    def weights(self) -> Tensors:
        return dict(self.trained)

    def tangent_of(self, name: str) -> torch.Tensor:
        return self.trained[name] - self.pretrained[name]


class SparseWeights(Trainable):
    """φ on the entries of boolean `masks` ({name: mask}); every other entry stays at θ0.
    `stats`: how the masks were chosen (TaLoS: `{"mask": sensitivity.mask_stats}`)."""

    def __init__(self, pretrained: Tensors, masks: dict[str, torch.Tensor], stats: dict[str, Any] | None = None):
        names = [n for n in pretrained if n in masks and bool(masks[n].any())]
        super().__init__(pretrained, names)
        self._stats = dict(stats or {})
        self.masks = {n: masks[n].to(torch.bool) for n in names}
        for n in self.names:
            if self.masks[n].shape != pretrained[n].shape:
                raise TaskvecError(f"mask of {n!r} has shape {tuple(self.masks[n].shape)}, the weight {tuple(pretrained[n].shape)}")
            self._add(n, pretrained[n].detach().clone())

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.masks = {n: m.to(self.pretrained[n].device) for n, m in self.masks.items()}
        return self

    def weights(self) -> Tensors:
        return {n: torch.where(self.masks[n], self.trained[n], self.pretrained[n]) for n in self.names}

    def tangent_of(self, name: str) -> torch.Tensor:
        return (self.trained[name] - self.pretrained[name]) * self.masks[name]

    def entries(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    def stats(self) -> dict[str, Any]:
        return self._stats


A_SUFFIX, B_SUFFIX = ".lora_A", ".lora_B"


def lora_init(name: str, weight: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """A0 of the adapter on `weight`: Kaiming-uniform (a=√5) of a (rank, in) matrix, as peft and
    nn.Linear, seeded by the run's seed and the parameter's name, so that every task's adapter
    (and an adapter-convention vector applied later) shares it, as the official code's seeded
    `get_peft_model` does (peta finetune_clip.py load_clip_processor_and_model)."""
    in_dim = weight.shape[1]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    bound = 1.0 / math.sqrt(in_dim)
    a = (torch.rand(rank, in_dim, generator=generator, dtype=torch.float64) * 2 - 1).mul_(bound)
    return a.to(weight.dtype).to(weight.device)


def adapter_weight_change(
    adapters: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor], *, rank: int, alpha: float, seed: int
) -> Tensors:
    """The weight change s·B·A = s·ΔB·(A0 + ΔA) of adapter deltas {name.lora_A: ΔA, name.lora_B:
    ΔB} (B0 = 0, as peft's default init): what an adapter-convention vector (LoRA `arithmetic =
    "adapters"`) does to each adapted matrix of the θ0 in `pretrained`. The official code adds
    the adapters' state-dict deltas to the pre-trained peft model and runs it (peta
    evaluate_multi_task_clip.py, evaluate_task_arithmetic, l. 244-281): this is that model's weight."""
    scale = alpha / rank
    changes = {}
    for key, delta_b in adapters.items():
        if not key.endswith(B_SUFFIX):
            continue
        name = key[: -len(B_SUFFIX)]
        weight = pretrained[name]
        a = lora_init(name, weight, rank, seed) + adapters[name + A_SUFFIX].to(weight.device, weight.dtype)
        changes[name] = (scale * (delta_b.to(weight.device, weight.dtype) @ a)).view(weight.shape)
    return changes


class LowRank(Trainable):
    """LoRA: θ = W0 + s·B·A per selected matrix (Linear weights, 1×1 convolutions seen as
    (out, in) matrices), A = A0 (`lora_init`), B = 0, s = alpha/rank.
    `linearized`: only B is trained and the change is s·B·A0 (see the module docstring).
    `adapters`: the task vector is the adapters' change {name.lora_A: A − A0, name.lora_B: B}
    (LoRA `arithmetic = "adapters"`) rather than the weight change s·B·A."""

    def __init__(
        self, pretrained: Tensors, names: list[str], *, rank: int, alpha: float, seed: int, linearized: bool, adapters: bool = False
    ):
        super().__init__(pretrained, names)
        self.scale = alpha / rank
        self.linearized, self.adapters = linearized, adapters
        self.a: dict[str, torch.Tensor] = {}
        self.a0: dict[str, torch.Tensor] = {}
        self.b: dict[str, nn.Parameter] = {}
        for n in self.names:
            weight = pretrained[n]
            if weight.ndim not in (2, 4) or (weight.ndim == 4 and weight.shape[2:] != (1, 1)):
                raise TaskvecError(f"LoRA attaches to matrices and 1×1 convolutions; {n!r} has shape {tuple(weight.shape)}")
            out_dim, in_dim = weight.shape[0], weight.shape[1]
            if rank > min(out_dim, in_dim):
                raise TaskvecError(f"LoRA rank {rank} exceeds the smaller side of {n!r} {tuple(weight.shape)}")
            self.a0[n] = lora_init(n, weight, rank, seed)
            self.a[n] = self.a0[n] if linearized else self._add(n + A_SUFFIX, self.a0[n].clone())
            self.b[n] = self._add(n + B_SUFFIX, torch.zeros(out_dim, rank, dtype=weight.dtype, device=weight.device))

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.a0 = {n: fn(a) for n, a in self.a0.items()}
        if self.linearized:
            self.a = dict(self.a0)
        return self

    def _delta(self, n: str) -> torch.Tensor:
        return (self.scale * (self.b[n] @ self.a[n])).view(self.pretrained[n].shape)

    def weights(self) -> Tensors:
        return {n: self.pretrained[n] + self._delta(n) for n in self.names}

    def tangent_of(self, name: str) -> torch.Tensor:
        if not self.linearized:
            raise TaskvecError("the tangent of non-linear LoRA is taken at (A0, 0): use the linearized variant")
        return self._delta(name)

    def vector(self, linearized: bool) -> Tensors:
        with torch.no_grad():  # s·B·A itself, not (W0 + s·B·A) − W0 with its rounding
            if self.adapters:
                return {k: t for n in self.names for k, t in ((n + A_SUFFIX, self.a[n] - self.a0[n]), (n + B_SUFFIX, self.b[n].clone()))}
            return {n: self._delta(n).detach().clone() for n in self.names}

    def task_vector(self, params: Tensors, linearized: bool) -> Tensors:
        if self.adapters:  # the adapters alone: the weights they change are materialized when applied
            return {n: t.detach().cpu() for n, t in self.vector(linearized).items()}
        return super().task_vector(params, linearized)


class TunedEncoder(nn.Module):
    """The frozen backbone evaluated at θ(φ): f(x; θ(φ)), or f_lin restricted to the changed
    tensors when `linearized`. The backbone's own parameters hold θ0 and get no gradient."""

    def __init__(self, backbone: Backbone, trainable: Trainable, linearized: bool):
        super().__init__()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone = backbone
        self.trainable = trainable
        self.linearized = linearized

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if self.linearized:
            primal, tangent = self.tangent_features(batch)
            return primal + tangent
        # channels-last image inputs on CPU, as the linearized path's `jvp` uses: the two modes'
        # step times then compare like with like (oneDNN's convolutions prefer that layout)
        return functional_call(
            self.backbone, self.trainable.weights(), args=(), kwargs=preferred_layout(self.backbone, batch), strict=False
        )

    def tangent_features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x; θ0), J_S(x; θ0)(θ_S − θ0_S)) for the changed tensors S."""
        primals = {n: self.trainable.pretrained[n] for n in self.trainable.names}
        # each tangent made as its layer reads it, never all at once (taskvec.linearization.jvp)
        return jvp(self.backbone, primals, LazyTensors(self.trainable.names, self.trainable.tangent_of), batch)

    def train(self, mode: bool = True) -> TunedEncoder:
        super().train(mode)
        self.backbone.train(mode)  # keeps normalization statistics frozen (Backbone.train)
        return self
