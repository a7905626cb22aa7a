"""Linearization: f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0), one Jacobian-vector product.

`linearize(backbone)` returns a `LinearizedBackbone` whose trainable parameters θ have the
same names as the backbone's, start at θ0, and can be fine-tuned with the same loop as the
non-linear model. θ0 is a frozen copy. The head is never linearized (it sits outside).
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .models.base import Backbone, Batch

Params = dict[str, torch.Tensor]

# torch's forward-AD path scripts a helper on first use and warns about its own deprecated API.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


@contextmanager
def forward_ad_safe_attention() -> Iterator[None]:
    """Forward-mode AD has no rule for the fused attention kernels (on CPU): use the math one."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def parameters_of(module: torch.nn.Module) -> Params:
    return {name: p for name, p in module.named_parameters()}


def jvp(module: torch.nn.Module, primals: Params, tangents: Params, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; primals), J(x; primals) · tangents) with dual numbers.

    Uses `torch.autograd.forward_ad` directly rather than `torch.func.jvp`: same maths, fewer
    layers of wrapping per operation, and autograd can differentiate the tangent with respect
    to `tangents` (that is how the linearized model is trained).
    """
    with forward_ad_safe_attention(), fwAD.dual_level():
        duals = {name: fwAD.make_dual(primals[name], tangents[name]) for name in primals}
        out = functional_call(module, duals, args=(), kwargs=batch, strict=False)
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # output independent of the parameters
        tangent = torch.zeros_like(primal)
    return primal, tangent


def func_jvp(module: torch.nn.Module, primals: Params, tangents: Params, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The same product through `torch.func.jvp`: the paper's way, kept as an independent reference."""
    names = list(primals)

    def f(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, values)), args=(), kwargs=batch, strict=False)

    with forward_ad_safe_attention():
        return torch.func.jvp(f, tuple(primals[n] for n in names), tuple(tangents[n] for n in names))


class LinearizedBackbone(Backbone):
    """First-order Taylor expansion of a backbone around its current weights θ0."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        if isinstance(backbone, LinearizedBackbone):
            raise TypeError("backbone is already linearized")
        # `model` holds θ (trainable, same names as the backbone); θ0 is a frozen snapshot.
        self.model = backbone
        self.name = backbone.name
        self.modality = backbone.modality
        self.embed_dim = backbone.embed_dim
        self._params0: Params = {n: p.detach().clone() for n, p in backbone.named_parameters()}

    @property
    def params0(self) -> Params:
        return self._params0

    def _apply(self, fn, recurse: bool = True):  # keep θ0 on the same device/dtype as θ
        super()._apply(fn, recurse)
        self._params0 = {n: fn(p) for n, p in self._params0.items()}
        return self

    def delta(self) -> Params:
        """θ − θ0 (differentiable with respect to θ)."""
        return {n: p - self._params0[n] for n, p in self.model.named_parameters()}

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        primal, tangent = jvp(self.model, self._params0, self.delta(), batch)
        return primal + tangent

    def prepare(self, inputs):
        return self.model.prepare(inputs)

    def encode_text(self, texts):
        return self.model.encode_text(texts)

    def identity(self) -> dict[str, str]:
        return self.model.identity()

    def train(self, mode: bool = True) -> "LinearizedBackbone":
        super().train(mode)
        self.model.train(mode)
        return self


def linearize(backbone: Backbone) -> LinearizedBackbone:
    """f_lin around the backbone's current weights. The backbone is deep-copied, not shared."""
    return LinearizedBackbone(copy.deepcopy(backbone))
