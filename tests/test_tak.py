"""TAK (taskvec.finetuning.kfac): the KFAC factors, their combination and the penalty against
plain re-implementations of the official formulas (aimagelab/mammoth models/tak_utils/hooks.py,
fisher_kfac.py, models/tak.py), the factors' file, a tiny fine-tune and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_training_setup
from torch import nn

from taskvec.config import TrainConfig
from taskvec.errors import TaskvecError
from taskvec.finetuning.kfac import KfacPenalty, TaskFactors, combine, compute_factors, factored_parameters
from taskvec.kinds import TAK
from taskvec.models import Backbone, build_backbone
from taskvec.task_vector import base_identity
from taskvec.train import finetune


class ConvSeq(Backbone):
    """A strided conv with bias, a linear layer with bias over the conv's positions (a sequence)
    and a bias-free linear layer on the pooled features: the three cases the hooks handle."""

    name = "conv-seq"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.mix = nn.Linear(3, 4)
        self.out = nn.Linear(4, 3, bias=False)

    def forward(self, *, pixels):
        h = torch.tanh(self.conv(pixels)).flatten(2).transpose(1, 2)  # (B, L, 3)
        return self.out(torch.tanh(self.mix(h)).mean(1))


def _explicit_factors(model: ConvSeq, pixels: torch.Tensor, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per example and position, as hooks.py:30-57 (A, input with a 1 appended when there is a
    bias, averaged over positions) and hooks.py:127-153 (G, gradient of the probed normalized
    features w.r.t. the layer's output, averaged over positions); means over examples as
    tak.py:597-599. The probe stream is compute_factors's: randperm, then one randn per batch."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pixels), generator=generator)
    x_all = pixels[order]
    probe = None
    sums: dict[str, list[torch.Tensor]] = {}
    conv, mix, out = model.conv, model.mix, model.out
    for i in range(len(x_all)):
        x = x_all[i : i + 1]
        o1 = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
        o1.retain_grad()
        h = torch.tanh(o1).flatten(2).transpose(1, 2)
        o2 = h @ mix.weight.T + mix.bias
        o2.retain_grad()
        p = torch.tanh(o2).mean(1)
        o3 = p @ out.weight.T
        o3.retain_grad()
        z = o3 / o3.norm()
        if probe is None:
            probe = torch.randn((len(x_all), 3), generator=generator, dtype=z.dtype)
        (z * probe[i]).sum().backward()
        # conv patches by explicit loops over output positions (zero padding 1, stride 2)
        padded = F.pad(x[0], (1, 1, 1, 1))
        patches, grads = [], []
        for r in range(o1.shape[2]):
            for c in range(o1.shape[3]):
                patches.append(torch.cat((padded[:, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3].reshape(-1), torch.ones(1, dtype=x.dtype))))
                grads.append(o1.grad[0, :, r, c])
        cases = {
            "conv.weight": (patches, grads),
            "mix.weight": ([torch.cat((h[0, t], torch.ones(1, dtype=x.dtype))) for t in range(h.shape[1])], list(o2.grad[0])),
            "out.weight": ([p[0]], [o3.grad[0]]),
        }
        for name, (a_rows, g_rows) in cases.items():
            a = sum(torch.outer(v, v) for v in a_rows) / len(a_rows)
            g = sum(torch.outer(v, v) for v in g_rows) / len(g_rows)
            sums.setdefault(name, [torch.zeros_like(a), torch.zeros_like(g)])
            sums[name][0] += a.detach()
            sums[name][1] += g.detach()
        for param in model.parameters():
            param.grad = None
    return {n: (a / len(x_all), g / len(x_all)) for n, (a, g) in sums.items()}


def test_factors_equal_explicit_outer_products_in_float64():
    torch.manual_seed(0)
    model = ConvSeq().double()
    pixels = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    got = compute_factors(model, {"pixels": pixels}, batch_size=5, seed=3)
    want = _explicit_factors(model, pixels, seed=3)
    assert set(got.a) == set(want) == set(got.g) and got.count == 5
    for name, (a, g) in want.items():
        torch.testing.assert_close(got.a[name], a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.g[name], g, rtol=1e-10, atol=1e-12)
    assert got.a["conv.weight"].shape == (2 * 9 + 1, 2 * 9 + 1) and got.a["out.weight"].shape == (4, 4)
    assert all(p.grad is None for p in model.parameters())  # the factors' backward leaves no gradient behind


def test_frozen_convs_leave_the_convolutions_out():
    model = ConvSeq()
    assert factored_parameters(model, "frozen") == ["mix.weight", "mix.bias", "out.weight"]
    assert factored_parameters(model, "kfac")[:2] == ["conv.weight", "conv.bias"]
    factors = compute_factors(model, {"pixels": torch.randn(4, 2, 5, 5)}, convs="frozen", batch_size=2)
    assert set(factors.a) == {"mix.weight", "out.weight"}


def _random_factors(shapes: dict[str, tuple[int, int]], count: int, seed: int) -> TaskFactors:
    gen = torch.Generator().manual_seed(seed)

    def spd(k):
        m = torch.randn(k, k, generator=gen, dtype=torch.float64)
        return m @ m.T

    return TaskFactors({n: spd(i) for n, (o, i) in shapes.items()}, {n: spd(o) for n, (o, i) in shapes.items()}, count)


def test_penalty_is_the_kronecker_quadratic_form_of_the_combined_factors():
    """tak.py:583-609 (A weighted by counts, G summed) and tak.py:766 (tr(G ΔW A ΔWᵀ)) against
    vec(ΔW)ᵀ (A ⊗ G) vec(ΔW) with a column-major vec, ΔW = [W, b] where the bias is trained."""
    shapes = {"l1.weight": (3, 5), "l2.weight": (2, 4)}  # l1: 4 inputs + bias
    tasks = [_random_factors(shapes, count, seed) for seed, count in ((0, 10), (1, 30))]
    gen = torch.Generator().manual_seed(9)
    tangent = {
        "l1.weight": torch.randn(3, 4, generator=gen, dtype=torch.float64),
        "l1.bias": torch.randn(3, generator=gen, dtype=torch.float64),
        "l2.weight": torch.randn(2, 4, generator=gen, dtype=torch.float64),
    }
    penalty = KfacPenalty(combine(tasks), 7.0, {n: t.shape for n, t in tangent.items()})
    want = torch.zeros((), dtype=torch.float64)
    for name in shapes:
        a = (10 * tasks[0].a[name] + 30 * tasks[1].a[name]) / 40
        g = tasks[0].g[name] + tasks[1].g[name]
        delta = tangent[name]
        if name == "l1.weight":
            delta = torch.cat((delta, tangent["l1.bias"][:, None]), 1)
        vec = delta.T.reshape(-1)
        want = want + vec @ torch.kron(a, g) @ vec
    torch.testing.assert_close(penalty(tangent.__getitem__), 7.0 * want, rtol=1e-12, atol=0)


def test_factors_round_trip_through_their_file(tmp_path):
    model = ConvSeq()
    factors = compute_factors(model, {"pixels": torch.randn(6, 2, 5, 5)}, batch_size=4, examples=5)
    factors.meta.update(base=base_identity(model), task="toy")
    factors.save(tmp_path / "f.safetensors")
    loaded = TaskFactors.load(tmp_path / "f.safetensors", base=base_identity(model))
    assert loaded.count == 5 and loaded.meta["task"] == "toy" and loaded.meta["settings"]["examples"] == 5
    assert loaded.meta["cost"]["seconds"] >= 0
    for name in factors.a:
        assert torch.equal(loaded.a[name], factors.a[name]) and torch.equal(loaded.g[name], factors.g[name])


def test_tak_reduces_the_penalty_against_lambda_zero():
    model, head, inputs, labels = tiny_training_setup()
    other = {"pixels": inputs["pixels"].flip(-1).roll(1, 0) * 0.5}
    factors = compute_factors(model, other, batch_size=32)
    factors.meta.update(base=base_identity(model), task="other")
    measure = KfacPenalty(
        combine([factors]), 1.0, {n: p.shape for n, p in model.named_parameters() if n in factors.a or n.endswith("bias")}
    )
    terms = {}
    for lam in (0.0, 500.0):
        cfg = TrainConfig.for_mode(TAK, steps=8, batch_size=16, lr=1e-2, warmup_steps=1, lam=lam)
        vector = finetune(model, head, inputs, labels, mode=TAK, cfg=cfg, progress=False, factors=[factors])
        assert set(vector.vector) == {n for n, _ in model.named_parameters()}
        assert torch.count_nonzero(vector.vector["bn.weight"]) == 0  # no factors: frozen
        terms[lam] = measure(vector.vector.__getitem__).item()
    assert terms[500.0] < 0.5 * terms[0.0]


def test_bad_factors_are_refused_in_one_line(tmp_path):
    model, head, inputs, labels = tiny_training_setup()
    cfg = TrainConfig.for_mode(TAK, steps=2, batch_size=8, warmup_steps=1)
    with pytest.raises(TaskvecError, match="KFAC factors: give them"):
        finetune(model, head, inputs, labels, mode=TAK, cfg=cfg, progress=False)
    attn = build_backbone("tiny-attn")
    foreign = compute_factors(attn, attn.prepare(torch.zeros(4, 8, 8, dtype=torch.uint8).numpy()), batch_size=4)
    with pytest.raises(TaskvecError, match="no layer conv.weight"):
        finetune(model, head, inputs, labels, mode=TAK, cfg=cfg, progress=False, factors=[foreign])
    other = compute_factors(model, inputs, batch_size=32)
    other.meta["base"] = {"backbone": "another"}
    with pytest.raises(TaskvecError, match="another base model"):
        finetune(model, head, inputs, labels, mode=TAK, cfg=cfg, progress=False, factors=[other])
    other.save(tmp_path / "f.safetensors")
    with pytest.raises(TaskvecError, match="computed on another base model"):
        TaskFactors.load(tmp_path / "f.safetensors", base=base_identity(model))
    with pytest.raises(TaskvecError, match="KFAC factors not found"):
        TaskFactors.load(tmp_path / "missing.safetensors")
    wrong = TaskFactors({"l.weight": torch.eye(3)}, {"l.weight": torch.eye(2)}, 1)
    with pytest.raises(TaskvecError, match="factors of another model"):
        KfacPenalty(combine([wrong]), 1.0, {"l.weight": torch.Size((2, 4))})


def test_a_layer_the_features_do_not_depend_on_gets_g_zero():
    """As a BERT pooler: run by the forward, its output unused, so its J = 0."""

    class Pooled(ConvSeq):
        def __init__(self):
            super().__init__()
            self.pooler = nn.Linear(3, 2)

        def forward(self, *, pixels):
            self.pooler(torch.ones(1, 3))
            return super().forward(pixels=pixels)

    factors = compute_factors(Pooled(), {"pixels": torch.randn(3, 2, 5, 5)}, batch_size=3)
    assert not factors.g["pooler.weight"].any() and factors.a["pooler.weight"].shape == (4, 4)
    assert factors.g["mix.weight"].any()
