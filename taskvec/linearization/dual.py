"""Jacobian-vector products with dual numbers: `jvp` runs a module's forward with each parameter
read as (primal, tangent), made when its layer reads it, and returns (f, J·tangent). Every
linearized forward (training, evaluation, the NTK) goes through here; the package docstring
says what makes it fast. Named `dual`, not `jvp`, so that no submodule shares a name with a
function the package exports.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.base import Batch
from .tangent_rules import _TangentRules

Params = dict[str, torch.Tensor]

# torch's forward-AD path scripts a helper on first use and warns about its own deprecated API.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


@contextmanager
def forward_ad_safe_attention() -> Iterator[None]:
    """Forward-mode AD has no rule for the fused attention kernels (on CPU): use the math one."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def jvp(module: torch.nn.Module, primals: Params, tangents: Mapping[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; primals), J(x; primals) · tangents) with dual numbers.

    Uses `torch.autograd.forward_ad` directly rather than `torch.func.jvp`: same maths, fewer
    layers of wrapping per operation, and autograd can differentiate the tangent with respect
    to `tangents` (that is how the linearized model is trained). Each parameter's dual number is
    made when the forward reads it (`_dual_parameters`), so a lazy `tangents` mapping (θ − θ0,
    `LazyTensors`) is computed one tensor at a time and freed after its layer, never all at once.
    Normalization, attention, linear and GELU layers use the fused tangent rules
    (`tangent_rules`), and on CPU image inputs of convolutional modules are passed channels-last
    (see the package docstring): both change speed, not values beyond floating-point rounding.
    """
    batch = preferred_layout(module, batch)
    with forward_ad_safe_attention(), fwAD.dual_level(), _TangentRules(), _dual_parameters(module, primals, tangents):
        out = module(**batch)
        primal, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # output independent of the parameters
        tangent = torch.zeros_like(primal)
    return primal, tangent


class LazyTensors(Mapping):
    """Tensors computed when asked for, e.g. the tangents θ − θ0 that `jvp` reads one layer at a
    time (differentiable: computed inside the forward)."""

    def __init__(self, names: list[str], compute: Callable[[str], torch.Tensor]):
        self.names, self.compute = list(names), compute

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.compute(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class _DualTable(dict):
    """A module's parameter table that hands out dual numbers (primal, tangent) for the named
    entries, made when read: nn.Module.__getattr__ reads `_parameters[name]`."""

    def __init__(self, original: dict, duals: dict[str, Callable[[], torch.Tensor]]):
        super().__init__(original)
        self._duals = duals

    def __getitem__(self, name: str) -> Any:
        make = self._duals.get(name)
        return make() if make is not None else super().__getitem__(name)


def _dual_of(primals: Params, tangents: Mapping[str, torch.Tensor], name: str) -> Callable[[], torch.Tensor]:
    """make_dual(primals[name], tangents[name]), made when called (inside the dual level)."""
    return lambda: fwAD.make_dual(primals[name], tangents[name])


@contextmanager
def _dual_parameters(module: torch.nn.Module, primals: Params, tangents: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """While the block runs, reading a parameter named in `primals` (under any of its tied
    names) gives make_dual(primals[name], tangents[name]); the module's own tensors are untouched."""
    canonical: dict[int, str] = {}
    tables: dict[torch.nn.Module, dict[str, Callable[[], torch.Tensor]]] = {}
    named = list(module.named_parameters(remove_duplicate=False))
    unknown = set(primals) - {name for name, _ in named}
    if unknown:
        raise KeyError(f"not parameters of the module: {sorted(unknown)[:3]}")
    for name, param in named:
        canonical.setdefault(id(param), name)
        source = name if name in primals else canonical[id(param)]
        if source not in primals:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        tables.setdefault(owner, {})[leaf] = _dual_of(primals, tangents, source)
    originals = {owner: owner.__dict__["_parameters"] for owner in tables}
    try:
        for owner, duals in tables.items():
            owner.__dict__["_parameters"] = _DualTable(originals[owner], duals)
        yield
    finally:
        for owner, table in originals.items():
            owner.__dict__["_parameters"] = table


def preferred_layout(module: torch.nn.Module, batch: Batch) -> Batch:
    """Channels-last copies of the 4-D floating CPU inputs of a module with Conv2d layers.

    Values are unchanged; only strides differ. oneDNN's CPU convolutions (depthwise above all)
    run faster on channels-last activations, and the layout propagates through the network.
    Other devices, modules without convolutions and non-image inputs are left as given.
    """
    if not any(isinstance(m, torch.nn.Conv2d) for m in module.modules()):
        return batch
    out = dict(batch)
    for key, value in batch.items():
        if (
            isinstance(value, torch.Tensor)
            and value.ndim == 4
            and value.is_floating_point()
            and value.device.type == "cpu"
            and not value.is_contiguous(memory_format=torch.channels_last)
        ):
            out[key] = value.contiguous(memory_format=torch.channels_last)
    return out
