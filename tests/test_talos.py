"""TaLoS against its authors' code (github.com/iurada/talos-task-arithmetic at b99d422): the
score against vision/pruners.py's TaLoS.score (lines 189-212) and the calibration against
vision/prune_finetune.py's rounds (lines 90, 107-113) with pruners.py's `_global_copy`
(lines 59-74), both re-implemented here with plain loops in float64; the threshold rule on ties,
and the mask's statistics in the saved vector."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import tiny_training_setup
from torch import nn
from torch.func import functional_call

from taskvec.config import TrainConfig
from taskvec.finetuning.sensitivity import ScoringData, calibrate, sampled_logit_scores, scorer
from taskvec.kinds import TALOS
from taskvec.models import Backbone
from taskvec.models.heads import ClassificationHead, Classifier
from taskvec.results import MaskStats
from taskvec.task_vector import TaskVector
from taskvec.train import finetune
from taskvec.typed import from_data


class TinyNet(Backbone):
    """Two linear layers around a BatchNorm in eval mode (frozen statistics, as in fine-tuning)."""

    name = "tiny-talos"
    modality = "image"
    embed_dim = 3

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, *, pixels):
        return self.fc2(torch.tanh(self.bn(self.fc1(pixels))))


def _setup(n: int = 12):
    torch.manual_seed(0)
    net = TinyNet().double()
    net.bn.running_mean.normal_()
    net.bn.running_var.uniform_(0.5, 2.0)
    head = ClassificationHead(torch.randn(4, 3, dtype=torch.float64), 2.0)
    model = Classifier(net, head).eval()
    inputs = {"pixels": torch.randn(n, 4, dtype=torch.float64)}
    labels = torch.randint(0, 4, (n,))
    return model, inputs, labels


def _data(model, inputs, labels, seed: int) -> ScoringData:
    return ScoringData(model, inputs, labels, torch.arange(len(labels)), 4, torch.Generator().manual_seed(seed), torch.device("cpu"))


def _candidates(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("encoder.")}


def _reference_score(model, mask: dict[str, torch.Tensor], inputs, generator, prune_bs: int = 5) -> dict[str, torch.Tensor]:
    """pruners.py TaLoS.score (lines 189-212): eval mode, a label sampled from the model's softmax
    per example (one uniform per example, inverted through the softmax's CDF), then one backward
    per example of its sampled logit, p.grad² accumulated. The masked layers (layers.py `mm`)
    compute with W·mask, so the gradient is taken w.r.t. W through W·mask."""
    params = {n: p.detach().clone().requires_grad_(True) for n, p in _candidates(model).items()}
    scores = {n: torch.zeros_like(p) for n, p in params.items()}
    n = len(inputs["pixels"])
    uniforms = torch.rand(n, generator=generator, dtype=torch.float64)
    for start in range(0, n, prune_bs):
        x = inputs["pixels"][start : start + prune_bs]
        logits = functional_call(model, {k: p * mask[k] for k, p in params.items()}, args=(), kwargs={"pixels": x})
        outdx = []
        for row, u in zip(logits.detach(), uniforms[start : start + prune_bs]):
            probs, total, label = torch.softmax(row, -1).tolist(), 0.0, len(row) - 1
            for c, prob in enumerate(probs):
                total += prob
                if total > float(u):
                    label = c
                    break
            outdx.append([label])
        samples = logits.gather(1, torch.tensor(outdx))
        for idx in range(len(x)):
            for p in params.values():
                p.grad = None
            samples[idx].sum().backward(retain_graph=True)
            for k, p in params.items():
                scores[k] += p.grad.pow(2)
    return scores


def test_official_score_matches_the_authors_per_example_loop():
    model, inputs, labels = _setup()
    weights = _candidates(model)
    ours = sampled_logit_scores(_data(model, inputs, labels, seed=3), weights)
    ones = {n: torch.ones_like(p) for n, p in weights.items()}
    reference = _reference_score(copy.deepcopy(model), ones, inputs, torch.Generator().manual_seed(3))
    assert set(ours) == set(reference)
    for name in ours:
        assert ours[name].dtype == torch.float64
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-10, atol=1e-14)
    # the true labels are not used; the sampled ones are (another seed samples others)
    shuffled = sampled_logit_scores(_data(model, inputs, labels.flip(0), seed=3), weights)
    assert all(torch.equal(shuffled[n], ours[n]) for n in ours)
    other = sampled_logit_scores(_data(model, inputs, labels, seed=4), weights)
    assert any(not torch.allclose(other[n], ours[n]) for n in ours)


def _reference_calibration(model, inputs, seed: int, sparsity: float, rounds: int) -> dict[str, torch.Tensor]:
    """prune_finetune.py lines 107-113 with pruners.py `_global_copy` (lines 59-74): masks start
    at 1; each round rescores the masked model and keeps, among the entries whose mask is 1, those
    scoring ≤ the kthvalue threshold; the others' masks become 0.1."""
    generator = torch.Generator().manual_seed(seed)
    masks = {n: torch.ones_like(p) for n, p in _candidates(model).items()}
    for r in range(rounds):
        sparse = sparsity ** ((r + 1) / rounds)
        scores = _reference_score(model, masks, inputs, generator)
        global_scores = torch.cat([torch.flatten(v) for v in scores.values()])
        global_masks = torch.cat([torch.flatten(m) for m in masks.values()])
        active = global_scores[global_masks == 1.0]
        t, _ = torch.kthvalue(active, min(int(sparse * global_scores.numel()), active.numel() - 1))
        for name, mask in masks.items():
            score = scores[name]
            score[mask != 1.0] = torch.inf
            mask.copy_(torch.where(score > t, 0.1, 1.0))
    return {n: m == 1.0 for n, m in masks.items()}


@pytest.mark.parametrize("fraction, rounds", [(0.3, 4), (0.2, 2)])
def test_calibration_rounds_match_the_authors_loop(fraction, rounds):
    model, inputs, labels = _setup(n=10)
    pretrained = _candidates(model)
    masks, stats = calibrate(scorer("official", _data(model, inputs, labels, seed=5)), pretrained, fraction, rounds)
    expected = _reference_calibration(copy.deepcopy(model), inputs, 5, fraction, rounds)
    for name in pretrained:
        assert torch.equal(masks[name], expected[name]), name
    total = sum(p.numel() for p in pretrained.values())
    trained = sum(int(m.sum()) for m in masks.values())
    assert stats["trained"] == trained / total and stats["rounds"] == rounds and stats["requested"] == fraction
    assert trained >= int(fraction * total)
    # the rounds matter: one round at θ0 alone picks another set here
    one_round, _ = calibrate(scorer("official", _data(model, inputs, labels, seed=5)), pretrained, fraction, 1)
    assert any(not torch.equal(one_round[n], masks[n]) for n in masks)


def test_every_entry_tied_at_the_threshold_is_trained_and_the_excess_is_warned():
    fixed = {"a": torch.zeros(6), "b": torch.tensor([4.0, 0.0, 3.0, 0.0, 2.0, 1.0])}
    pretrained = {n: torch.ones_like(s) for n, s in fixed.items()}
    excess = r"5 candidate entries tie at the threshold score 0 \(66.7% score exactly 0\): 66.67% of the candidates are trained, not the requested 25.00%"
    with pytest.warns(UserWarning, match=excess):
        masks, stats = calibrate(lambda weights: {n: s.clone() for n, s in fixed.items()}, pretrained, 0.25, 1)
    assert masks["a"].all() and masks["b"].tolist() == [False, True, False, True, False, False]  # not the first 3 by position
    assert stats["trained"] == 8 / 12 and stats["zero_score"] == 8 / 12 and stats["threshold"] == 0.0
    assert stats["per_tensor"] == {"a": 1.0, "b": 2 / 6}
    # order-free: the same scores in the other parameter order select the same entries
    with pytest.warns(UserWarning, match=excess):
        swapped, _ = calibrate(lambda weights: {n: fixed[n].clone() for n in ("b", "a")}, dict(reversed(pretrained.items())), 0.25, 1)
    assert all(torch.equal(swapped[n], masks[n]) for n in masks)
    # distinct scores: exactly int(fraction · n) entries, and no warning
    distinct = {"a": torch.arange(6.0), "b": torch.arange(6.0, 12.0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks, stats = calibrate(lambda weights: {n: s.clone() for n, s in distinct.items()}, pretrained, 0.25, 1)
    assert masks["a"].tolist() == [True] * 3 + [False] * 3 and not masks["b"].any() and stats["trained"] == 0.25


def test_mask_stats_are_recorded_in_the_saved_vector(tmp_path):
    model, head, inputs, labels = tiny_training_setup()
    cfg = TrainConfig(steps=2, batch_size=16, lr=1e-2, warmup_steps=1, settings={"fraction": 0.25, "examples": 24, "rounds": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny-cnn's ReLUs may leave ties at 0
        vector = finetune(model, head, inputs, labels, mode=TALOS, cfg=cfg, progress=False)
    mask = vector.info["mask"]
    assert mask["score"] == "official" and mask["rounds"] == 2 and mask["examples"] == 24 and mask["requested"] == 0.25
    assert mask["candidates"] == sum(p.numel() for p in model.parameters())
    assert round(mask["trained"] * mask["candidates"]) == vector.info["cost"]["changed_entries"] >= int(0.25 * mask["candidates"])
    assert set(mask["per_tensor"]) == {n for n, _ in model.named_parameters()}
    for name, delta in vector.vector.items():  # no entry moved in a tensor the mask left out
        if mask["per_tensor"][name] == 0:
            assert not delta.any(), name
    vector.save(tmp_path / "talos.safetensors")
    loaded = TaskVector.load(tmp_path / "talos.safetensors")
    assert loaded.info["mask"] == mask
    stats = from_data(MaskStats, loaded.info["mask"])
    assert stats.trained == mask["trained"] and stats.per_tensor == mask["per_tensor"]


def test_the_earlier_batch_fisher_score_is_a_named_setting():
    model, inputs, labels = _setup()
    weights = _candidates(model)
    scores = scorer("batch-fisher", _data(model, inputs, labels, seed=0))(weights)
    leaves = {n: w.clone().requires_grad_(True) for n, w in weights.items()}
    expected = {n: torch.zeros_like(w) for n, w in weights.items()}
    for index in torch.arange(len(labels)).split(4):  # mean cross-entropy of each mini-batch, true labels
        logits = functional_call(model, leaves, args=(), kwargs={"pixels": inputs["pixels"][index]})
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels[index]), list(leaves.values()))
        for n, g in zip(leaves, grads):
            expected[n] += g**2
    for n in weights:
        torch.testing.assert_close(scores[n], expected[n], rtol=1e-10, atol=1e-14)
    assert TALOS.resolve({})["score"] == "official" and TALOS.resolve({})["rounds"] == 4
