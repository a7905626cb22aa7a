import copy

import pytest
import torch
import torch.nn.functional as F

from taskvec.linearization import LinearizedBackbone, func_jvp, jvp, linearize
from taskvec.models import build_backbone


def _batch(model, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
    return model.prepare(images)


def _direction(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}


def _shift(model, direction, eps):
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(direction[n], alpha=eps)
    return moved


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-attn"])
def test_linearized_equals_model_at_theta0(name):
    model = build_backbone(name).double().eval()
    batch = {k: v.double() for k, v in _batch(model).items()}
    lin = linearize(model)
    torch.testing.assert_close(lin(**batch), model(**batch), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-attn"])
def test_taylor_gap_shrinks_quadratically(name):
    """|f(θ0 + ετ) − f_lin(θ0 + ετ)| = O(ε²): halving ε divides the gap by about 4."""
    model = build_backbone(name).double().eval()
    batch = {k: v.double() for k, v in _batch(model).items()}
    direction = _direction(model)
    gaps = []
    for eps in (1e-2, 5e-3):
        lin = LinearizedBackbone(copy.deepcopy(model))
        with torch.no_grad():
            for n, p in lin.model.named_parameters():
                p.add_(direction[n], alpha=eps)
        gaps.append((_shift(model, direction, eps)(**batch) - lin(**batch)).abs().max().item())
    ratio = gaps[0] / gaps[1]
    assert 3.5 < ratio < 4.5, gaps


def test_jvp_matches_finite_difference_and_func_jvp():
    model = build_backbone("tiny-attn").double().eval()
    batch = {k: v.double() for k, v in _batch(model).items()}
    params = {n: p.detach() for n, p in model.named_parameters()}
    direction = _direction(model)
    primal, tangent = jvp(model, params, direction, batch)
    eps = 1e-6
    fd = (_shift(model, direction, eps)(**batch) - _shift(model, direction, -eps)(**batch)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)
    ref_primal, ref_tangent = func_jvp(model, params, direction, batch)
    torch.testing.assert_close(primal, ref_primal)
    torch.testing.assert_close(tangent, ref_tangent)


def test_attention_jvp_uses_math_kernel_in_float32():
    """Fused CPU attention has no forward-AD rule; linearize() must still work in float32."""
    model = build_backbone("tiny-attn").eval()
    lin = linearize(model)
    out = lin(**_batch(model))
    out.sum().backward()
    assert all(p.grad is not None for p in lin.model.parameters())


def test_gradients_match_explicit_jacobian():
    """∇_θ L(f_lin(θ)) at θ ≠ θ0 equals J(θ0)ᵀ ∂L/∂f_lin computed from an explicit Jacobian."""
    model = build_backbone("tiny-cnn").double().eval()
    batch = {k: v.double() for k, v in _batch(model, n=3).items()}
    labels = torch.tensor([0, 1, 2])
    lin = LinearizedBackbone(copy.deepcopy(model))
    direction = _direction(model)
    with torch.no_grad():
        for n, p in lin.model.named_parameters():
            p.add_(direction[n], alpha=0.05)
    out = lin(**batch)
    F.cross_entropy(out, labels).backward()

    names = [n for n, _ in model.named_parameters()]
    theta0 = tuple(p.detach() for _, p in model.named_parameters())

    def f(*values):
        return torch.func.functional_call(model, dict(zip(names, values)), args=(), kwargs=batch)

    jac = torch.autograd.functional.jacobian(f, theta0)  # per parameter: (N, D, *shape)
    delta = {n: p.detach() - t for (n, p), t in zip(lin.model.named_parameters(), theta0)}
    f0 = f(*theta0)
    flin = f0 + sum((jac[i].flatten(2) * delta[n].flatten()).sum(-1) for i, n in enumerate(names))
    torch.testing.assert_close(flin, out.detach())
    g = torch.autograd.grad(F.cross_entropy(flin.requires_grad_(), labels), flin)[0]
    for i, (n, p) in enumerate(lin.model.named_parameters()):
        expected = (jac[i] * g[:, :, *([None] * delta[n].ndim)]).sum((0, 1))
        torch.testing.assert_close(p.grad, expected, rtol=1e-8, atol=1e-10)


def test_linearized_keeps_theta0_frozen_and_names():
    model = build_backbone("tiny-cnn")
    lin = linearize(model)
    assert [n for n, _ in lin.model.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert all(not t.requires_grad for t in lin.params0.values())
    with torch.no_grad():
        for p in lin.model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(lin.params0["conv.weight"], model.conv.weight.detach())
    assert lin.delta()["conv.weight"].allclose(torch.ones_like(model.conv.weight))
    with pytest.raises(TypeError):
        LinearizedBackbone(lin)


class _Tied(torch.nn.Module):
    """Two layers sharing one weight, and a stack of linear layers."""

    name, modality, embed_dim = "tied", "image", 6

    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(6, 6)
        self.second = torch.nn.Linear(6, 6)
        self.second.weight = self.first.weight
        self.stack = torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(6)])

    def forward(self, x):
        return self.stack(torch.tanh(self.second(torch.tanh(self.first(x)))))


def test_jvp_reads_tied_parameters_as_one_and_matches_func_jvp():
    torch.manual_seed(0)
    model = _Tied().double()
    params = {n: p.detach() for n, p in model.named_parameters()}  # the tied weight once, as first.weight
    assert "second.weight" not in params
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    batch = {"x": torch.randn(4, 6, dtype=torch.float64)}
    primal, tangent = jvp(model, params, direction, batch)
    ref_primal, ref_tangent = func_jvp(model, params, direction, batch)
    torch.testing.assert_close(primal, ref_primal)
    torch.testing.assert_close(tangent, ref_tangent)
    assert model.second.weight is model.first.weight and isinstance(model.first.weight, torch.nn.Parameter)  # restored


def _linearized_encoders():
    from taskvec.finetuning import TunedEncoder, WeightSubset

    torch.manual_seed(0)
    yield "LinearizedBackbone", linearize(_Tied())
    base = _Tied()
    params = dict(base.named_parameters())
    yield "TunedEncoder", TunedEncoder(base, WeightSubset(params, list(params)), linearized=True)


@pytest.mark.parametrize("which", ["LinearizedBackbone", "TunedEncoder"])
def test_linearized_forward_makes_theta_minus_theta0_one_tensor_at_a_time(which, monkeypatch):
    """θ − θ0 is never materialized for the whole model: each difference is freed after its layer
    (in LinearizedBackbone and in TunedEncoder, which `finetune` trains through)."""
    import weakref

    from taskvec.linearization import LazyTensors

    encoder = dict(_linearized_encoders())[which]
    alive, most = [], [0]
    original = LazyTensors.__getitem__

    def tracked(self, name):
        value = original(self, name)
        alive.append(weakref.ref(value))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return value

    monkeypatch.setattr(LazyTensors, "__getitem__", tracked)
    encoder(x=torch.randn(4, 6)).sum().backward()
    assert len(alive) >= 8 and most[0] <= 2, (len(alive), most[0])
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
