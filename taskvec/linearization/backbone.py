"""The linearized model: `LinearizedBackbone` keeps θ0 frozen and trains θ through
f(x; θ0) + J(x; θ0)(θ − θ0), so that it fine-tunes, saves and evaluates like any backbone;
`func_jvp` computes the same product with `torch.func`, as an independent reference.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch.func import functional_call

from ..models.base import Backbone, Batch
from .dual import LazyTensors, Params, forward_ad_safe_attention, jvp


def func_jvp(module: torch.nn.Module, primals: Params, tangents: Params, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The same product through `torch.func.jvp`: the paper's way, kept as an independent reference."""
    names = list(primals)

    def f(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, values)), args=(), kwargs=batch, strict=False)

    with forward_ad_safe_attention():
        # without has_aux, jvp returns the pair (f, J·tangent); torch's annotation also lists has_aux's triple
        return cast(
            "tuple[torch.Tensor, torch.Tensor]", torch.func.jvp(f, tuple(primals[n] for n in names), tuple(tangents[n] for n in names))
        )


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

    def differences(self) -> LazyTensors:
        """θ − θ0 (differentiable with respect to θ), each tensor computed when asked for."""
        theta = dict(self.model.named_parameters())
        return LazyTensors(list(theta), lambda n: theta[n] - self._params0[n])

    def delta(self) -> Params:
        """θ − θ0 for every parameter at once."""
        return dict(self.differences().items())

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        # θ − θ0 one tensor at a time, as each layer reads it: never all of it at once
        primal, tangent = jvp(self.model, self._params0, self.differences(), batch)
        return primal + tangent

    def prepare(self, inputs):
        return self.model.prepare(inputs)

    def encode_text(self, texts):
        return self.model.encode_text(texts)

    def identity(self) -> dict[str, str]:
        return self.model.identity()

    def train(self, mode: bool = True) -> LinearizedBackbone:
        super().train(mode)
        self.model.train(mode)
        return self


def linearize(backbone: Backbone) -> LinearizedBackbone:
    """f_lin around the backbone's current weights. The backbone is deep-copied, not shared."""
    return LinearizedBackbone(copy.deepcopy(backbone))
