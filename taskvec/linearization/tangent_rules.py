"""Hand-written tangent rules for the layers a linearized step spends its time in (LayerNorm,
inference-mode BatchNorm, attention, Linear, GELU): each computes the tangent in a few fused
passes, and back-propagation through it is the layer's ordinary backward at the primal point
(one fused kernel for the normalizations and GELU), instead of PyTorch's generic forward-AD
formulas differentiated operation by operation. Same values up to floating-point rounding;
`jvp` (dual.py) installs them with `_TangentRules`. A rule returns None to decline, and the
layer then goes through PyTorch's own formulas.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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
    def forward(ctx, x_t, w_t, b_t, x, shape, mean, rstd, w, b):
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
    def backward(ctx, grad):
        x, mean, rstd, w, b = ctx.saved_tensors
        gx, gw, gb = torch.ops.aten.native_layer_norm_backward(grad, x, ctx.shape, mean, rstd, w, b, ctx.mask)
        return gx, gw, gb, None, None, None, None, None, None


class _BatchNormTangent(torch.autograd.Function):
    """Inference-mode BatchNorm, y = (x − m)·rstd·w + b with running m, v:
    ẏ = ẋ·(w·rstd) + x·(ẇ·rstd) + (ḃ − m·ẇ·rstd); adjoint = BN backward (train=False)."""

    @staticmethod
    def forward(ctx, x_t, w_t, b_t, x, mean, var, w, eps):
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
    def backward(ctx, grad):
        x, mean, var, w = ctx.saved_tensors
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(grad, x, w, mean, var, None, None, False, ctx.eps, ctx.mask)
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
    if (
        training
        or mean is None
        or var is None
        or mean_t is not None
        or var_t is not None
        or (x_t is None and w_t is None and b_t is None)
        or x.dtype not in _EXACT_DTYPES
    ):
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
    def forward(ctx, q_t, k_t, v_t, q, k, v, p, scale):
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
    def backward(ctx, grad):
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
    if (
        (q_t is None and k_t is None and v_t is None)
        or mask_t is not None
        or dropout_p > 0.0
        or enable_gqa
        or q.dtype not in _EXACT_DTYPES
        or q.shape[-3:-2] != k.shape[-3:-2]
        or k.shape[-2] != v.shape[-2]
        or any(t.requires_grad for t in (q, k, v))
    ):
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
    def forward(ctx, x_t, x, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return torch.ops.aten.gelu_backward(x_t, x, approximate=approximate)

    @staticmethod
    def backward(ctx, grad):
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

    _RULES = {
        F.layer_norm: _layer_norm,
        F.batch_norm: _batch_norm,
        F.scaled_dot_product_attention: _attention,
        F.linear: _linear,
        F.gelu: _gelu,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = self._RULES.get(func)
        if rule is not None:
            out = rule(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
