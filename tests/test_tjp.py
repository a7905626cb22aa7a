"""τJp's penalty as the official code computes it (katoro8989/tau-Jp_Task_Arithmetic,
finetune_reg_strict.py lines 165-196): λ · mean over the penalized datasets (the other tasks,
then the control) of mean_x ‖J(x; θ0) τ‖, 16 examples each, λ = 0.1; the earlier squared-sum
form on request; the control taken from the run's [negation] control or `--control`; the
effective penalty recorded in the vector and shown in the report; bad penalty data refused."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_training_setup
from torch import nn

import taskvec
from taskvec.config import TrainConfig
from taskvec.errors import TaskvecError
from taskvec.finetuning.parts import TunedEncoder, WeightSubset
from taskvec.finetuning.penalty import PENALTY_TERMS, EffectivePenalty
from taskvec.kinds import LINEARIZED, TJP
from taskvec.pipeline.context import Roles
from taskvec.task_vector import TaskVector
from taskvec.train import TrainedModel, finetune


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, *, x):
        return self.b(torch.tanh(self.a(x)))


def _official_penalty(model: nn.Module, theta0: dict, tau: dict, datasets: list[torch.Tensor], lam: float) -> torch.Tensor:
    """finetune_reg_strict.py lines 166-196, written out: for each dataset, `dp` = the JVP of the
    model at θ0 along τ (linearize.py LinearizedModel.dp; here torch.autograd.functional.jvp),
    `torch.norm(dp, dim=1)`, its mean over the batch; then the mean over the datasets, × λ."""
    names = list(theta0)
    penalties = []
    for inputs in datasets:

        def f(*values, inputs=inputs):
            return torch.func.functional_call(model, dict(zip(names, values)), args=(), kwargs={"x": inputs})

        _, dp = torch.autograd.functional.jvp(f, tuple(theta0[n] for n in names), tuple(tau[n] for n in names), create_graph=True)
        dp_norms = torch.norm(dp, dim=1)
        penalties.append(dp_norms.mean())
    return lam * torch.stack(penalties).mean()


def _tiny_tjp(tau_scale: float):
    """The Mlp at θ0 in float64, its linearized encoder trained to θ0 + τ, and τ."""
    torch.manual_seed(0)
    model = Mlp().double()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = WeightSubset(dict(model.named_parameters()), list(theta0))
    tau = {n: tau_scale * torch.randn_like(p) for n, p in theta0.items()}
    with torch.no_grad():
        for n in theta0:
            trainable.trained[n].add_(tau[n])
    return model, theta0, trainable, tau


def test_default_penalty_matches_the_official_formula_value_and_gradient():
    settings = TJP.resolve({})
    assert (settings["penalty"], settings["lam"], settings["penalty_batch"]) == ("norm-mean", 0.1, 16)
    model, theta0, trainable, tau = _tiny_tjp(0.1)
    head = taskvec.models.heads.ClassificationHead(torch.randn(2, 3), 1.0)
    step = TrainedModel(TunedEncoder(model, trainable, True), head, settings["lam"], PENALTY_TERMS[settings["penalty"]]).double()
    torch.manual_seed(1)
    datasets = [torch.randn(n, 4, dtype=torch.float64) for n in (6, 3, 5)]  # two other tasks, then the control
    _, penalty = step({"x": torch.randn(2, 4, dtype=torch.float64)}, [{"x": x} for x in datasets])
    leaf = {n: t.clone().requires_grad_(True) for n, t in tau.items()}
    expected = _official_penalty(model, theta0, leaf, datasets, 0.1)
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=1e-13)

    mine = torch.autograd.grad(penalty, [trainable.trained[n] for n in theta0])
    theirs = torch.autograd.grad(expected, [leaf[n] for n in theta0])
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_norm_has_a_zero_gradient_at_tau_zero():
    """The first step has τ = 0, where ‖J τ‖ is not differentiable: torch.norm's gradient is 0 (as in the official code), never NaN."""
    model, theta0, trainable, _ = _tiny_tjp(0.0)
    head = taskvec.models.heads.ClassificationHead(torch.randn(2, 3), 1.0)
    step = TrainedModel(TunedEncoder(model, trainable, True), head, 0.1).double()
    _, penalty = step({"x": torch.randn(2, 4, dtype=torch.float64)}, [{"x": torch.randn(4, 4, dtype=torch.float64)}])
    grads = torch.autograd.grad(penalty, list(trainable.trained.values()))
    assert penalty.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def _cfg(**settings) -> TrainConfig:
    return TrainConfig.for_mode(TJP, steps=3, batch_size=8, lr=1e-2, warmup_steps=1, **settings)


def test_finetune_penalizes_the_control_and_records_the_effective_penalty(tmp_path):
    model, head, inputs, labels = tiny_training_setup()
    others = {"stripes": {"pixels": inputs["pixels"].flip(0)}}
    control = ("noise", {"pixels": torch.rand_like(inputs["pixels"][:40])})
    cfg = _cfg(lam=5.0)
    with_control = finetune(model, head, inputs, labels, mode=TJP, cfg=cfg, progress=False, others=others, control=control)
    without = finetune(model, head, inputs, labels, mode=TJP, cfg=cfg, progress=False, others=others)
    assert any(not torch.equal(with_control.vector[n], without.vector[n]) for n in without.vector)  # the control's batch is read

    path = tmp_path / "v.safetensors"
    with_control.save(path)
    record = TaskVector.load(path).info["penalty"]
    assert record == {
        "form": "norm-mean",
        "lam": 5.0,
        "examples": 16,
        "datasets": ["stripes", "noise"],
        "control": "noise",
        "describe": "λ = 5 · mean over 2 datasets (stripes + control noise) of mean_x ‖J(x;θ0)τ‖, 16 examples each per step",
    }
    assert without.info["penalty"]["control"] is None and "no control" in without.info["penalty"]["describe"]


def test_squared_sum_form_is_recorded_as_such():
    text = EffectivePenalty("squared-sum", 0.5, 8, ("a", "b"), None).describe()
    assert text == "λ = 0.5 · sum over 2 datasets (a, b; no control) of mean_x ‖J(x;θ0)τ‖², 8 examples each per step"


@pytest.mark.parametrize(
    ("control", "others", "message"),
    [
        (
            ("noise", {"image": torch.zeros(4, 3, 8, 8)}),
            {},
            "penalty data 'noise' has inputs \\['image'\\], but the task's are \\['pixels'\\]",
        ),
        (("noise", {"pixels": torch.zeros(0, 3, 8, 8)}), {}, "penalty data 'noise' has no examples"),
        (("noise", {"pixels": torch.zeros(4, 3, 8, 8)}), {"noise": {"pixels": torch.zeros(4, 3, 8, 8)}}, "also among the other tasks"),
    ],
)
def test_bad_penalty_data_is_refused_in_one_line(control, others, message):
    model, head, inputs, labels = tiny_training_setup()
    with pytest.raises(TaskvecError, match=message) as info:
        finetune(model, head, inputs, labels, mode=TJP, cfg=_cfg(), progress=False, others=others, control=control)
    assert "\n" not in str(info.value)


def test_an_unknown_penalty_form_is_refused():
    with pytest.raises(TaskvecError, match="must be one of \\['norm-mean', 'squared-sum'\\]"):
        TJP.resolve({"penalty": "l1"})


def test_roles_penalize_the_configured_control_after_the_other_tasks():
    roles = Roles(tasks=["a", "b", "c"], targets=["a"], controls={"a": "d"}, control="d")
    assert roles.penalty_tasks("a", TJP) == ["b", "c", "d"] and roles.penalty_control("a", TJP) == "d"
    inside = Roles(tasks=["a", "b", "c"], targets=["a"], controls={"a": "b"}, control="b")
    assert inside.penalty_tasks("a", TJP) == ["c", "b"] and inside.penalty_control("a", TJP) == "b"  # once, as the control
    assert inside.penalty_tasks("b", TJP) == ["a", "c"] and inside.penalty_control("b", TJP) is None  # not its own control
    unset = Roles(tasks=["a", "b"], targets=["a"], controls={"a": "b"})
    assert unset.penalty_tasks("a", TJP) == ["b"] and unset.penalty_control("a", TJP) is None
    assert roles.penalty_tasks("a", LINEARIZED) == [] and roles.penalty_control("a", LINEARIZED) is None


CONFIG = """
name = "tjp"
backbone = "tiny-cnn"
tasks = ["toy-squares", "toy-stripes"]
[backbone_options]
image_size = 8
[data]
max_train = 48
max_val = 16
max_test = 16
[negation]
control = "toy-noise"
[train]
modes = ["tjp"]
[train.tjp]
steps = 2
batch_size = 8
warmup_steps = 1
"""


class _Lookups:
    """The dry run's lookups (taskvec.pipeline.plan.Needs), reduced to the names asked for."""

    model: list = []
    device: list = []

    def data(self, names: list[str]) -> list[str]:
        return names


def test_the_graph_reads_the_control_for_a_penalized_fine_tune(tmp_path):
    from taskvec.config.run import read_config
    from taskvec.pipeline.graph import build_graph
    from taskvec.pipeline.rundir import RunDir

    graph = build_graph(read_config(CONFIG, "tjp.toml", "tjp"), RunDir(tmp_path))
    stage = next(s for s in graph if s.title == "fine-tune toy-squares (tjp)")
    assert stage.needs(_Lookups()) == ["toy-squares", "toy-stripes", "toy-noise"]
    assert "penalty on the inputs of toy-stripes + control toy-noise" in stage.detail


def test_finetune_command_takes_the_control_from_the_config_or_refuses_it(tmp_path, capsys):
    from taskvec.cli import main

    config = tmp_path / "tjp.toml"
    config.write_text(CONFIG)
    out = tmp_path / "v.safetensors"
    main(["finetune", "-t", "toy-squares", "-m", "tjp", "--other", "toy-stripes", "-c", str(config), "-o", str(out), "--no-progress"])
    assert "+ control toy-noise" in capsys.readouterr().out
    assert TaskVector.load(out).info["penalty"]["datasets"] == ["toy-stripes", "toy-noise"]
    with pytest.raises(SystemExit):
        main(["finetune", "-t", "toy-squares", "-m", "linear", "--control", "toy-noise", "-c", str(config), "-o", str(tmp_path / "x")])
    assert "mode linear has no penalty" in capsys.readouterr().err
