"""Empirical NTK: exact against an explicit Jacobian product, chunking, localization, figure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from taskvec.analysis.ntk import empirical_ntk, ntk_localization, plot_ntk_localization
from taskvec.errors import TaskvecError
from taskvec.linearization import forward_ad_safe_attention, linearize
from taskvec.models import Backbone, build_backbone
from taskvec.models.heads import ClassificationHead, Classifier


def classifier(name: str, classes: int = 3, seed: int = 0) -> Classifier:
    encoder = build_backbone(name)
    gen = torch.Generator().manual_seed(seed)
    weight = F.normalize(torch.randn(classes, encoder.embed_dim, generator=gen), dim=-1)
    return Classifier(encoder, ClassificationHead(weight, scale=5.0)).double().eval()


def pixels(n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randn(n, 3, 8, 8, generator=gen, dtype=torch.float64)}


def explicit_jacobian(model: Classifier, batch, output: str) -> torch.Tensor:
    """(N, C, P): d outputs / d flattened encoder parameters, by torch.autograd.functional."""
    encoder = model.encoder
    names = [n for n, _ in encoder.named_parameters()]
    shapes = [p.shape for _, p in encoder.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in encoder.named_parameters()])

    def g(flat: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            params[name] = flat[start : start + size].reshape(shape)
            start += size
        features = functional_call(encoder, params, args=(), kwargs=batch)
        return model.head(features) if output == "logits" else features

    with forward_ad_safe_attention():
        return torch.autograd.functional.jacobian(g, theta)


@pytest.mark.parametrize("backbone", ["tiny-cnn", "tiny-attn"])
@pytest.mark.parametrize("output", ["logits", "features"])
def test_kernel_equals_explicit_jacobian_product(backbone, output):
    model = classifier(backbone)
    batch = pixels(5, seed=1)
    jac = explicit_jacobian(model, batch, output)
    trace = empirical_ntk(model, batch, output=output, chunk=2)
    full = empirical_ntk(model, batch, output=output, chunk=2, kernel="full")
    assert trace.dtype == torch.float64 and trace.shape == (5, 5)
    torch.testing.assert_close(trace, torch.einsum("icp,jcp->ij", jac, jac), rtol=1e-10, atol=1e-10)
    assert full.shape == (5, 5, jac.shape[1], jac.shape[1])
    torch.testing.assert_close(full, torch.einsum("icp,jdp->ijcd", jac, jac), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(full.diagonal(dim1=2, dim2=3).sum(-1), trace)


class BranchingEncoder(Backbone):
    """Takes a data-dependent branch, as transformers' mask code does: vmap cannot trace it."""

    name, modality, embed_dim = "branching", "image", 4

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3 * 8 * 8, 4)

    def prepare(self, inputs):
        return {"pixels": torch.as_tensor(inputs)}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        flat = pixels.flatten(1)
        if bool(torch.isfinite(flat).all()):  # like `if mask.all(): mask = None`: same result either way
            return torch.tanh(self.a(flat))
        return torch.tanh(self.a(torch.nan_to_num(flat)))

    def identity(self):
        return {"backbone": self.name}


def test_models_with_data_dependent_branches_fall_back_to_one_sample_at_a_time():
    torch.manual_seed(0)
    encoder = BranchingEncoder().double()
    model = Classifier(encoder, ClassificationHead(F.normalize(torch.randn(3, 4), dim=-1), 5.0)).double().eval()
    batch = pixels(6, seed=3)
    with pytest.raises(RuntimeError, match="vmap"):  # the reason for the fallback
        torch.func.vmap(lambda x: encoder(x.unsqueeze(0)))(batch["pixels"])
    jac = explicit_jacobian(model, batch, "logits")
    torch.testing.assert_close(empirical_ntk(model, batch, chunk=4), torch.einsum("icp,jcp->ij", jac, jac), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backbone", ["tiny-cnn", "tiny-attn"])
def test_kernel_is_symmetric_psd_and_chunking_does_not_matter(backbone):
    model = classifier(backbone)
    batch = pixels(7, seed=2)
    whole = empirical_ntk(model, batch, chunk=64)
    assert torch.equal(whole, whole.T)
    eig = torch.linalg.eigvalsh(whole)
    assert eig.min() > -1e-10 * eig.max()
    # chunks of 3 samples; a tiny memory budget: one group per tensor, Jacobian blocks streamed
    for chunk, max_memory in ((3, 1 << 30), (2, 1), (3, 2000)):
        torch.testing.assert_close(empirical_ntk(model, batch, chunk=chunk, max_memory=max_memory), whole, rtol=1e-10, atol=1e-12)
    full = empirical_ntk(model, batch, kernel="full", chunk=64)
    torch.testing.assert_close(empirical_ntk(model, batch, kernel="full", chunk=2, max_memory=1), full, rtol=1e-10, atol=1e-12)


def test_cross_kernel_is_the_off_diagonal_block():
    model = classifier("tiny-cnn")
    a, b = pixels(4, seed=3), pixels(3, seed=4)
    union = empirical_ntk(model, {"pixels": torch.cat([a["pixels"], b["pixels"]])})
    for chunk, max_memory in ((32, 1 << 30), (2, 1)):
        cross = empirical_ntk(model, a, b, chunk=chunk, max_memory=max_memory)
        torch.testing.assert_close(cross, union[:4, 4:], rtol=1e-10, atol=1e-12)


def test_float32_model_and_mode_restored():
    encoder = build_backbone("tiny-cnn")
    weight = F.normalize(torch.randn(3, encoder.embed_dim), dim=-1)
    model = Classifier(encoder, ClassificationHead(weight, 5.0)).train()
    batch = {"pixels": torch.randn(4, 3, 8, 8)}
    gram = empirical_ntk(model, batch)
    assert model.training and model.encoder.training
    reference = empirical_ntk(model.double(), {"pixels": batch["pixels"].double()})
    torch.testing.assert_close(gram, reference, rtol=1e-4, atol=1e-6)


def test_linearized_encoder_has_the_base_kernel():
    encoder = build_backbone("tiny-cnn").double()
    batch = pixels(4, seed=5)
    torch.testing.assert_close(
        empirical_ntk(linearize(encoder), batch, output="features"), empirical_ntk(encoder, batch, output="features")
    )


def test_errors():
    encoder = build_backbone("tiny-cnn")
    batch = {"pixels": torch.randn(2, 3, 8, 8)}
    with pytest.raises(TaskvecError, match="Classifier"):
        empirical_ntk(encoder, batch, output="logits")
    with pytest.raises(TaskvecError, match="kernel"):
        empirical_ntk(encoder, batch, output="features", kernel="diag")
    with pytest.raises(TaskvecError, match="disagree"):
        empirical_ntk(encoder, {"pixels": torch.randn(2, 3, 8, 8), "mask": torch.ones(3)}, output="features")


class LinearEncoder(Backbone):
    """f(x) = W x on flattened pixels: ∂f_c/∂W = e_c xᵀ, so inputs with disjoint non-zero
    pixels have orthogonal gradients and the NTK Gram matrix is block diagonal."""

    name = "linear-test"
    embed_dim = 6

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, self.embed_dim, bias=False)

    def forward(self, *, pixels):
        return self.fc(pixels.flatten(1))


def disjoint_sets(n_train: int, n_control: int) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(6)
    train = torch.zeros(n_train, 3, 8, 8, dtype=torch.float64)
    control = torch.zeros(n_control, 3, 8, 8, dtype=torch.float64)
    train[:, :, :4] = torch.randn(n_train, 3, 4, 8, generator=gen, dtype=torch.float64)  # top half
    control[:, :, 4:] = torch.randn(n_control, 3, 4, 8, generator=gen, dtype=torch.float64)  # bottom half
    return {"pixels": train}, {"pixels": control}


def test_localization_on_disjoint_supports_is_complete():
    torch.manual_seed(0)
    encoder = LinearEncoder().double()
    head = ClassificationHead(F.normalize(torch.randn(3, encoder.embed_dim), dim=-1), 5.0)
    model = Classifier(encoder, head).double()
    train, control = disjoint_sets(5, 4)
    for m, output in ((model, "logits"), (encoder, "features")):
        res = ntk_localization(m, train, control, top_k=9, output=output, chunk=2)
        assert (res.n_train, res.n_control) == (5, 4)
        assert len(res.eigenvalues) == 9
        assert res.eigenvalues == sorted(res.eigenvalues, reverse=True)
        for et, ec in zip(res.energy_train, res.energy_control):
            assert et + ec == pytest.approx(1.0, abs=1e-12)
            assert min(et, ec) < 1e-10  # each eigenfunction lives on one support only
        assert sum(e > 0.5 for e in res.energy_train) == 5  # one per training sample (full rank)
        assert res.localization == pytest.approx(1.0, abs=1e-10)


def test_localization_energies_sum_to_one_and_figure(tmp_path):
    model = classifier("tiny-attn")
    train, control = pixels(6, seed=7), pixels(5, seed=8)
    res = ntk_localization(model, train, control, top_k=4)
    assert len(res.energy_train) == len(res.energy_control) == 4
    for et, ec in zip(res.energy_train, res.energy_control):
        assert et + ec == pytest.approx(1.0, abs=1e-10) and 0 <= et <= 1
    assert res.localization == pytest.approx(sum(max(et, ec) for et, ec in zip(res.energy_train, res.energy_control)) / 4)
    gram = empirical_ntk(model, {k: torch.cat([train[k], control[k]]) for k in train}, kernel="trace")
    assert res.trace_share_train == pytest.approx(float(gram.diagonal()[:6].sum() / gram.diagonal().sum()), rel=1e-4)
    assert len(ntk_localization(model, train, control, top_k=50).eigenvalues) == 11  # capped at N
    with pytest.raises(TaskvecError):
        ntk_localization(model, train, control, top_k=0)

    path = tmp_path / "fig" / "ntk.png"
    other = ntk_localization(classifier("tiny-cnn"), train, control, top_k=4)
    plot_ntk_localization({"pre-trained": res, "random init": other}, path, "toy-a", "toy-b")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["ntk.png"]  # no temporary left behind


def test_union_of_batches_with_different_input_shapes():
    """Batches that cannot be concatenated (like token ids padded to different lengths) are
    chunked separately; the Gram matrix on their union is still assembled correctly."""
    model = classifier("tiny-attn")
    small = pixels(3, seed=9)
    gen = torch.Generator().manual_seed(10)
    large = {"pixels": torch.randn(4, 3, 12, 12, generator=gen, dtype=torch.float64)}
    res = ntk_localization(model, small, large, top_k=7)
    gram = torch.zeros(7, 7, dtype=torch.float64)
    gram[:3, :3] = empirical_ntk(model, small)
    gram[3:, 3:] = empirical_ntk(model, large)
    gram[:3, 3:] = empirical_ntk(model, small, large)
    gram[3:, :3] = gram[:3, 3:].T
    values, vectors = torch.linalg.eigh(gram)
    torch.testing.assert_close(torch.tensor(res.eigenvalues, dtype=torch.float64), values.flip(0))
    torch.testing.assert_close(torch.tensor(res.energy_train, dtype=torch.float64), vectors[:3].square().sum(0).flip(0))
