"""Linearization: f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0), one Jacobian-vector product.

`linearize(backbone)` returns a `LinearizedBackbone` whose trainable parameters θ have the
same names as the backbone's, start at θ0, and can be fine-tuned with the same loop as the
non-linear model. θ0 is a frozen copy. The head is never linearized (it sits outside).

Speed (benchmarks/bench_linearized_step.py, docs/benchmarks.md). A linearized training step
runs the forward pass with dual numbers (primal and tangent) and back-propagates through the
tangent computation. Two things in `jvp` make that cheaper without changing what is computed:

* Normalization layers (and, since, attention, linear layers and GELU: see their section
  below) get hand-written tangent rules (`_TangentRules`). PyTorch's
  built-in forward-AD formulas for `layer_norm` and `batch_norm` are generic, and autograd
  then back-propagates through each of their element-wise operations. The tangent of a
  normalization is linear in the tangents of (input, weight, bias), and its adjoint is exactly
  the layer's ordinary backward at the primal point, so here the tangent is computed in a few
  fused passes and differentiated by the single fused `native_layer_norm_backward` /
  `native_batch_norm_backward` kernel. BatchNorm is covered in inference mode only (running
  statistics, as `Backbone.train()` keeps it); anything else uses PyTorch's own formulas.
  Measured on CPU: a LayerNorm of MiniLM's size, 14 ms -> 5.5 ms for tangent + its backward;
  an EfficientNet-Lite0 step at 224 px, about 12% less time.
* On CPU, 4-D floating inputs of a module that has `Conv2d` layers are passed in the
  channels-last memory format (same values, other strides): oneDNN's convolutions, the
  depthwise ones above all, are faster in that layout, for the three convolutions (primal and
  two tangent terms) and their backward. EfficientNet-Lite0 step at 32 px: about 15% less time.

An alternative that was measured and dropped: a custom autograd.Function computing f_lin's
gradient as the VJP J(θ0)ᵀg from the primal graph instead of through the tangent operations.
It needs either a dual pass with the primal graph recorded (autograd then also records every
tangent operation, for higher-order derivatives) or a second primal pass; both were 5-15%
slower than back-propagating through the tangents. `torch.func.jvp` (see `func_jvp`) computes
the same dual numbers with an extra layer of wrapping per operation, and is not faster.
"""
from __future__ import annotations

import copy
import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from .models.base import Backbone, Batch

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
    Normalization, attention, linear and GELU layers use the fused tangent rules below, and on
    CPU image inputs of convolutional modules are passed channels-last (see the module
    docstring): both change speed, not values beyond floating-point rounding.
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
        tables.setdefault(owner, {})[leaf] = lambda n=source: fwAD.make_dual(primals[n], tangents[n])
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
        if (isinstance(value, torch.Tensor) and value.ndim == 4 and value.is_floating_point()
                and value.device.type == "cpu" and not value.is_contiguous(memory_format=torch.channels_last)):
            out[key] = value.contiguous(memory_format=torch.channels_last)
    return out


# --- fused tangent rules for normalization layers ---------------------------------------------
#
# For y = N(x; w, b) the tangent ẏ = ∂N/∂x·ẋ + ∂N/∂w·ẇ + ∂N/∂b·ḃ is linear in (ẋ, ẇ, ḃ). Its
# adjoint, which back-propagation through the tangent needs, is the ordinary VJP of N at the
# primal point: one call of the fused backward kernel. Each rule computes the primal output
# with the ordinary kernel, the tangent with an autograd.Function whose backward is that
# kernel, and returns the dual of the two. Only float32/float64 are covered.

_EXACT_DTYPES = (torch.float32, torch.float64)


def _split(value: Any) -> tuple[Any, torch.Tensor | None]:
    """(primal, tangent or None) of a possibly dual tensor; non-tensors pass through."""
    if isinstance(value, torch.Tensor):
        primal, tangent = fwAD.unpack_dual(value)
        return primal, tangent
    return value, None


class _LayerNormTangent(torch.autograd.Function):
    """ẏ = w·rstd·(ẋ − mean(ẋ) − x̂·mean(ẋ·x̂)) + x̂·ẇ + ḃ, x̂ = (x − μ)·rstd; adjoint = LN backward."""

    @staticmethod
    def forward(ctx, x_t, w_t, b_t, x, shape, mean, rstd, w, b):  # type: ignore[override]
        dims = tuple(range(-len(shape), 0))
        xhat = (x - mean) * rstd
        out = None
        if x_t is not None:
            out = (x_t - x_t.mean(dims, keepdim=True)).sub_(xhat * (x_t * xhat).mean(dims, keepdim=True)).mul_(rstd)
            if w is not None:
                out = out.mul_(w)
        if w_t is not None:
            out = xhat * w_t if out is None else out.addcmul_(xhat, w_t)
        if b_t is not None:
            out = b_t.expand_as(xhat).clone() if out is None else out.add_(b_t)
        ctx.save_for_backward(x, mean, rstd, w, b)
        ctx.shape = shape
        ctx.mask = [x_t is not None, w_t is not None, b_t is not None]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, mean, rstd, w, b = ctx.saved_tensors
        gx, gw, gb = torch.ops.aten.native_layer_norm_backward(grad, x, ctx.shape, mean, rstd, w, b, ctx.mask)
        return gx, gw, gb, None, None, None, None, None, None


class _BatchNormTangent(torch.autograd.Function):
    """Inference-mode BatchNorm, y = (x − m)·rstd·w + b with running m, v:
    ẏ = ẋ·(w·rstd) + x·(ẇ·rstd) + (ḃ − m·ẇ·rstd); adjoint = BN backward (train=False)."""

    @staticmethod
    def forward(ctx, x_t, w_t, b_t, x, mean, var, w, eps):  # type: ignore[override]
        view = (1, -1) + (1,) * (x.ndim - 2)
        rstd = torch.rsqrt(var + eps)
        shift = torch.zeros_like(mean) if b_t is None else b_t.clone()
        out = None
        if w_t is not None:
            a = w_t * rstd
            shift.sub_(mean * a)
            out = torch.addcmul(shift.view(view), x, a.view(view))
        if x_t is not None:
            scale = (rstd if w is None else w * rstd).view(view)
            out = torch.addcmul(shift.view(view), x_t, scale) if out is None else out.addcmul_(x_t, scale)
        if out is None:
            out = shift.view(view).expand_as(x).clone()
        ctx.save_for_backward(x, mean, var, w)
        ctx.eps = eps
        ctx.mask = [x_t is not None, w_t is not None, b_t is not None]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, mean, var, w = ctx.saved_tensors
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad, x, w, mean, var, None, None, False, ctx.eps, ctx.mask)
        return gx, gw, gb, None, None, None, None, None


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    (x, x_t), (w, w_t), (b, b_t) = _split(input), _split(weight), _split(bias)
    if (x_t is None and w_t is None and b_t is None) or x.dtype not in _EXACT_DTYPES:
        return None
    shape = list(normalized_shape)
    y, mean, rstd = torch.native_layer_norm(x, shape, w, b, eps)
    return fwAD.make_dual(y, _LayerNormTangent.apply(x_t, w_t, b_t, x, shape, mean, rstd, w, b))


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    (x, x_t), (w, w_t), (b, b_t) = _split(input), _split(weight), _split(bias)
    (mean, mean_t), (var, var_t) = _split(running_mean), _split(running_var)
    if (training or mean is None or var is None or mean_t is not None or var_t is not None
            or (x_t is None and w_t is None and b_t is None) or x.dtype not in _EXACT_DTYPES):
        return None
    y = F.batch_norm(x, mean, var, w, b, False, momentum, eps)
    return fwAD.make_dual(y, _BatchNormTangent.apply(x_t, w_t, b_t, x, mean, var, w, eps))


# --- attention and linear layers --------------------------------------------------------------
#
# Attention, O = P·V with P = softmax(S), S = scale·Q·Kᵀ (+ mask): the tangent is
# Ȯ = Ṗ·V + P·V̇ with Ṗ = P ⊙ (Ṡ − rowsum(P ⊙ Ṡ)) and Ṡ = scale·(Q̇·Kᵀ + Q·K̇ᵀ), linear in
# (Q̇, K̇, V̇); its adjoint is attention's own backward at the primal point. The rule computes P
# once, the primal and the tangent from it, and back-propagates with the saved P: four batched
# matmuls and one softmax backward, instead of autograd through the math kernel's composition
# under forward AD (whose intermediates it would all keep).


class _AttentionTangent(torch.autograd.Function):
    """Ȯ from (Q̇, K̇, V̇) at the primal (Q, K, V, P); backward = attention's VJP from the saved P."""

    @staticmethod
    def forward(ctx, q_t, k_t, v_t, q, k, v, p, scale):  # type: ignore[override]
        out = None
        if q_t is not None or k_t is not None:
            ds = torch.matmul(q_t, k.transpose(-2, -1)) if q_t is not None else None
            if k_t is not None:
                term = torch.matmul(q, k_t.transpose(-2, -1))
                ds = term if ds is None else ds.add_(term)
            ds.mul_(p).mul_(scale)  # P ⊙ Ṡ
            ds.sub_(p * ds.sum(-1, keepdim=True))  # Ṗ = P ⊙ Ṡ − P·rowsum(P ⊙ Ṡ)
            out = torch.matmul(ds, v)
        if v_t is not None:
            term = torch.matmul(p, v_t)
            out = term if out is None else out.add_(term)
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, p = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        g_q = g_k = g_v = None
        if need_v:
            g_v = torch.matmul(p.transpose(-2, -1), grad)
        if need_q or need_k:
            g_p = torch.matmul(grad, v.transpose(-2, -1))
            g_s = g_p.sub_((g_p * p).sum(-1, keepdim=True)).mul_(p).mul_(ctx.scale)  # softmax backward, × scale
            g_q = torch.matmul(g_s, k) if need_q else None
            g_k = torch.matmul(g_s.transpose(-2, -1), q) if need_k else None
        return g_q, g_k, g_v, None, None, None, None, None


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    (q, q_t), (k, k_t), (v, v_t) = _split(query), _split(key), _split(value)
    mask, mask_t = _split(attn_mask)
    if ((q_t is None and k_t is None and v_t is None) or mask_t is not None or dropout_p > 0.0 or enable_gqa
            or q.dtype not in _EXACT_DTYPES or q.shape[-3:-2] != k.shape[-3:-2] or k.shape[-2] != v.shape[-2]
            or any(t.requires_grad for t in (q, k, v))):
        return None  # anything else goes through PyTorch's own formulas
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # heads arrive as transposed views; batched matmuls would copy them at every use (forward and backward)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    q_t, k_t, v_t = (None if t is None else t.contiguous() for t in (q_t, k_t, v_t))
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    if is_causal:
        scores.masked_fill_(torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill_(mask.logical_not(), float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
    p = torch.softmax(scores, dim=-1)
    return fwAD.make_dual(torch.matmul(p, v), _AttentionTangent.apply(q_t, k_t, v_t, q, k, v, p, scale))


def _linear(input, weight, bias=None):
    """ẏ = ẋ·Wᵀ + ḃ + x·Ẇᵀ as two accumulating matmuls (addmm), not two matmuls and two adds."""
    (x, x_t), (w, w_t), (b, b_t) = _split(input), _split(weight), _split(bias)
    if (x_t is None and w_t is None and b_t is None) or x.dtype not in _EXACT_DTYPES or w.requires_grad or x.requires_grad:
        return None
    y = F.linear(x, w, b)
    flat = x.reshape(-1, x.shape[-1])
    tangent = None
    if x_t is not None:
        tangent = F.linear(x_t.reshape(-1, x.shape[-1]), w, b_t)
    if w_t is not None:
        # in place: F.linear's backward does not need its output, and out-of-place addmm would copy it
        tangent = flat.matmul(w_t.t()) if tangent is None else tangent.addmm_(flat, w_t.t())
        if x_t is None and b_t is not None:
            tangent = tangent + b_t
    if tangent is None:
        tangent = b_t.expand_as(y)
    return fwAD.make_dual(y, tangent.reshape(y.shape))


class _GeluTangent(torch.autograd.Function):
    """ẏ = gelu'(x) ⊙ ẋ: one `gelu_backward` kernel, and the same kernel as its own adjoint (the
    map is diagonal), saving only x, which the next layer keeps anyway. PyTorch's formula also
    saves ẋ."""

    @staticmethod
    def forward(ctx, x_t, x, approximate):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return torch.ops.aten.gelu_backward(x_t, x, approximate=approximate)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate=ctx.approximate), None, None


def _gelu(input, approximate="none"):
    x, x_t = _split(input)
    if x_t is None or x.dtype not in _EXACT_DTYPES or x.requires_grad:
        return None
    return fwAD.make_dual(F.gelu(x, approximate=approximate), _GeluTangent.apply(x_t, x, approximate))


class _TangentRules(TorchFunctionMode):
    """Route dual F.layer_norm, inference-mode F.batch_norm, F.scaled_dot_product_attention,
    F.linear and F.gelu to the fused rules above (each returns None to decline: PyTorch's formulas then)."""

    _RULES = {F.layer_norm: _layer_norm, F.batch_norm: _batch_norm, F.scaled_dot_product_attention: _attention,
              F.linear: _linear, F.gelu: _gelu}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = self._RULES.get(func)
        if rule is not None:
            out = rule(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


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

    def train(self, mode: bool = True) -> "LinearizedBackbone":
        super().train(mode)
        self.model.train(mode)
        return self


def linearize(backbone: Backbone) -> LinearizedBackbone:
    """f_lin around the backbone's current weights. The backbone is deep-copied, not shared."""
    return LinearizedBackbone(copy.deepcopy(backbone))
