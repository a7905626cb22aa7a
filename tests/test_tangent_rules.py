"""The fused tangent rules of taskvec.linearization (attention, linear, GELU; issue 13) against
PyTorch's own forward-AD formulas, central finite differences, and autograd's gradients of
those formulas, in float64 (and float32 at float32 tolerance)."""

from contextlib import nullcontext

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from taskvec.linearization import forward_ad_safe_attention
from taskvec.linearization.tangent_rules import _attention, _gelu, _linear, _TangentRules


def _tangent(op, primals, tangents, kwargs, rules: bool):
    """(primal, tangent) of op at primals along tangents, with taskvec's rules or PyTorch's."""
    with forward_ad_safe_attention(), fwAD.dual_level(), _TangentRules() if rules else nullcontext():
        duals = [p if t is None else fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        primal, tangent = fwAD.unpack_dual(op(*duals, **kwargs))
    return primal, tangent


def _check(op, rule, primals, tangents, kwargs, dtype=torch.float64):
    primals = [p.to(dtype) if p.is_floating_point() else p for p in primals]
    tangents = [None if t is None else t.to(dtype).requires_grad_() for t in tangents]
    with fwAD.dual_level():  # the rule must take these inputs, not decline them
        duals = [p if t is None else fwAD.make_dual(p, t) for p, t in zip(primals, tangents)]
        assert rule(*duals, **kwargs) is not None
    primal, tangent = _tangent(op, primals, tangents, kwargs, rules=True)
    ref_primal, ref_tangent = _tangent(op, primals, tangents, kwargs, rules=False)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(primal, ref_primal, **tol)
    torch.testing.assert_close(tangent, ref_tangent, **tol)
    if dtype == torch.float64:
        eps = 1e-6
        moved = lambda s: op(*[p if t is None else p + s * t.detach() for p, t in zip(primals, tangents)], **kwargs)  # noqa: E731
        torch.testing.assert_close(tangent, (moved(eps) - moved(-eps)) / (2 * eps), rtol=1e-6, atol=1e-8)
    weights = torch.randn(tangent.shape, dtype=dtype, generator=torch.Generator().manual_seed(9))
    live = [t for t in tangents if t is not None]
    grads = torch.autograd.grad((tangent * weights).sum(), live)
    ref_grads = torch.autograd.grad((ref_tangent * weights).sum(), live)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


ATTENTION_MASKS = {
    "none": lambda: {},
    "padded keys (bool)": lambda: {"attn_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]},
    "additive (float, -inf)": lambda: {
        "attn_mask": torch.where(_randn(2, 1, 5, 6, seed=5) > 0.8, float("-inf"), 0.1 * _randn(2, 1, 5, 6, seed=6))
    },
    "causal": lambda: {"is_causal": True},
    "scale": lambda: {"scale": 0.3},
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask", list(ATTENTION_MASKS))
@pytest.mark.parametrize("which", ["qkv", "v", "qk", "k"])
def test_attention_rule(mask, which, dtype):
    keys = 5 if mask == "causal" else 6
    primals = [_randn(2, 3, 5, 4, seed=1), _randn(2, 3, keys, 4, seed=2), _randn(2, 3, keys, 4, seed=3)]
    tangents = [_randn(*p.shape, seed=10 + i) if "qkv"[i] in which else None for i, p in enumerate(primals)]
    kwargs = ATTENTION_MASKS[mask]()
    if dtype == torch.float64 and "attn_mask" in kwargs and kwargs["attn_mask"].is_floating_point():
        kwargs["attn_mask"] = kwargs["attn_mask"].double()
    _check(F.scaled_dot_product_attention, _attention, primals, tangents, kwargs, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5)])
@pytest.mark.parametrize("which", ["xwb", "wb", "x", "w", "b"])
def test_linear_rule(shape, which, dtype):
    primals = [_randn(*shape, seed=1), _randn(4, 5, seed=2), _randn(4, seed=3)]
    tangents = [_randn(*p.shape, seed=10 + i) if "xwb"[i] in which else None for i, p in enumerate(primals)]
    _check(F.linear, _linear, primals, tangents, {}, dtype)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_rule(approximate):
    _check(F.gelu, _gelu, [_randn(3, 8, seed=1)], [_randn(3, 8, seed=2)], {"approximate": approximate})


def test_rules_decline_what_they_do_not_cover():
    q = _randn(2, 3, 5, 4)
    with fwAD.dual_level():
        dual = fwAD.make_dual(q, torch.ones_like(q))
        assert _attention(dual, q, q, dropout_p=0.1) is None  # dropout: PyTorch's formulas
        assert _attention(dual, q.requires_grad_(), q) is None  # a primal that needs gradients
        assert _attention(q.detach(), q.detach(), q.detach()) is None  # no tangent at all
        assert _linear(fwAD.make_dual(q.half(), q.half()), q.half()) is None  # half precision
