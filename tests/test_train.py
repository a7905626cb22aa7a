import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_training_setup as _setup

from taskvec.config import TrainConfig
from taskvec.errors import TaskvecError
from taskvec.finetuning.kfac import compute_factors
from taskvec.kinds import NONLINEAR
from taskvec.models.heads import Classifier
from taskvec.train import batch_indices, finetune, learning_rate


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(10, cfg) == pytest.approx(1.0)
    assert learning_rate(55, cfg) == pytest.approx(0.5)
    assert learning_rate(99, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(10, 4, s, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 4, 2, seed=3), batch_indices(10, 4, 2, seed=3))


@pytest.mark.parametrize("mode", ["nonlinear", "linear"])
def test_finetuning_learns_and_leaves_base_untouched(mode):
    model, head, inputs, labels = _setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(steps=30, batch_size=16, lr=1e-2, warmup_steps=3)
    vector = finetune(model, head, inputs, labels, mode=mode, cfg=cfg, task="toy-squares", progress=False)
    assert vector.mode.name == mode and vector.norm() > 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    edited = vector.apply_to(model)
    with torch.no_grad():
        loss0 = F.cross_entropy(Classifier(model, head)(**inputs), labels)
        loss1 = F.cross_entropy(Classifier(edited, head)(**inputs), labels)
    assert loss1 < 0.7 * loss0


# every registered mode, with settings that fit tiny-cnn (it has no attention)
MODE_SETTINGS = {
    "nonlinear": {},
    "linear": {},
    "subset": {"params": "fc.*"},
    "linear-subset": {"params": "conv.*"},
    "lora": {"rank": 2},
    "linear-lora": {"rank": 2},
    "talos": {"fraction": 0.3},
    "tjp": {},
    "tak": {},
}


@pytest.mark.parametrize("mode", list(MODE_SETTINGS))
def test_interrupted_run_resumes_to_the_same_vector(mode, tmp_path):
    model, head, inputs, labels = _setup()
    cfg = TrainConfig(steps=12, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=4, settings=MODE_SETTINGS[mode])
    others = [{"pixels": inputs["pixels"].flip(0)}]  # read by tjp only
    factors = [compute_factors(model, others[0], batch_size=32)]  # read by tak only
    full = finetune(model, head, inputs, labels, mode=mode, cfg=cfg, progress=False, others=others, factors=factors)
    ckpt = tmp_path / "ckpt.safetensors"
    partial = finetune(
        model, head, inputs, labels, mode=mode, cfg=cfg, checkpoint=ckpt, progress=False, stop_after=5, others=others, factors=factors
    )
    assert ckpt.exists()
    assert any(not torch.equal(partial.vector[n], full.vector[n]) for n in full.vector)
    resumed = finetune(model, head, inputs, labels, mode=mode, cfg=cfg, checkpoint=ckpt, progress=False, others=others, factors=factors)
    for n in full.vector:
        assert torch.equal(resumed.vector[n], full.vector[n]), n


def test_every_registered_mode_is_covered_by_the_resume_test():
    from taskvec.kinds import FINETUNE_MODES

    assert list(MODE_SETTINGS) == FINETUNE_MODES.names()


def test_checkpoint_of_another_run_is_refused(tmp_path):
    model, head, inputs, labels = _setup()
    cfg = TrainConfig.for_mode(NONLINEAR, steps=4, batch_size=8, warmup_steps=1, checkpoint_every=2)
    ckpt = tmp_path / "ckpt.safetensors"
    finetune(model, head, inputs, labels, mode="nonlinear", cfg=cfg, checkpoint=ckpt, progress=False, stop_after=2)
    with pytest.raises(TaskvecError, match="different run"):
        finetune(model, head, inputs, labels, mode="linear", cfg=cfg, checkpoint=ckpt, progress=False)


def test_bad_train_config_is_refused():
    with pytest.raises(TaskvecError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(TaskvecError, match="warmup"):
        TrainConfig(steps=5, warmup_steps=10, lr=1e-3)
