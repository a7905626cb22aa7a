"""Fine-tuning modes beyond the paper's: what each trains, that the rest stays at θ0, partial
linearization against finite differences, the τJp penalty against an explicit Jacobian, LoRA's
vector, TaLoS's selection, and that every mode's vector saves, loads and merges."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_training_setup
from torch import nn

import taskvec
from taskvec.config import RunConfig, TrainConfig
from taskvec.errors import TaskvecError
from taskvec.finetuning.build import FitData
from taskvec.finetuning.cost import CostMeter
from taskvec.finetuning.kfac import compute_factors
from taskvec.finetuning.parts import LowRank, TunedEncoder, WeightSubset
from taskvec.finetuning.penalty import squared_sum
from taskvec.finetuning.subsets import select_parameters
from taskvec.kinds import EVAL_METHODS, FINETUNE_MODES, LINEAR_LORA, LINEAR_SUBSET, LORA, SUBSET, TALOS, TJP, method_for_vector
from taskvec.models import Backbone, build_backbone
from taskvec.task_vector import TaskVector
from taskvec.train import TrainedModel, finetune
from taskvec.typed import from_data, to_data

sys.path.insert(0, str(Path(__file__).parent))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----- which parameters ---------------------------------------------------------------------------


def test_attention_preset_names_exactly_the_attention_projections():
    import clip_tiny

    clip = clip_tiny.build()
    picked = select_parameters(clip, "attention")
    expected = [
        f"visual.transformer.resblocks.{i}.attn.{p}"
        for i in range(2)
        for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    ]
    assert picked == expected
    minilm = build_backbone("minilm")
    picked = select_parameters(minilm, "attention")
    assert len(picked) == 6 * 8  # q, k, v, output dense: weight and bias, six layers
    assert all(".attention.self." in n or ".attention.output.dense." in n for n in picked)
    assert not any("LayerNorm" in n for n in picked)
    with pytest.raises(TaskvecError, match="matches no parameter of backbone 'tiny-cnn'"):
        select_parameters(build_backbone("tiny-cnn"), "attention")


def test_block_norm_bias_and_glob_selections():
    effnet = build_backbone("effnet-lite0", init="random")
    last = select_parameters(effnet, "last-blocks:2")
    assert last and all(n.startswith(("_blocks.14.", "_blocks.15.")) for n in last)
    assert {n for n, _ in effnet._blocks[15].named_parameters()} <= {n.removeprefix("_blocks.15.") for n in last}
    norm_bias = select_parameters(effnet, "norm-bias")
    assert all("_bn" in n or n.endswith("bias") for n in norm_bias) and "_bn0.weight" in norm_bias
    union = select_parameters(effnet, "last-blocks:1, _conv_head.*")
    assert union[-1] == "_conv_head.weight" and union[0].startswith("_blocks.15.")
    with pytest.raises(TaskvecError, match="unknown parameter selection 'atention'"):
        select_parameters(effnet, "atention")
    with pytest.raises(TaskvecError, match="only 16 blocks"):
        select_parameters(effnet, "last-blocks:17")


# ----- what stays at θ0 ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [SUBSET, LINEAR_SUBSET])
def test_subset_modes_train_only_the_subset_and_leave_theta0_untouched(mode):
    model, head, inputs, labels = tiny_training_setup()
    before = _params(model)
    cfg = TrainConfig(steps=5, batch_size=16, lr=1e-2, warmup_steps=1, settings={"params": "fc.*"})
    vector = finetune(model, head, inputs, labels, mode=mode, cfg=cfg, progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # θ0 itself untouched
    assert set(vector.vector) == set(before)
    for name, delta in vector.vector.items():
        if name.startswith("fc."):
            assert delta.abs().sum() > 0, name
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), name  # frozen: exactly zero
    cost = vector.info["cost"]
    assert cost["trained_entries"] == cost["changed_entries"] == sum(before[n].numel() for n in ("fc.weight", "fc.bias"))
    assert vector.info["settings"] == {"params": "fc.*"}


def test_talos_trains_exactly_the_entries_its_mask_chose():
    """The fine-tune moves the entries of the builder's mask and nothing else, bit for bit (the
    score and calibration themselves: tests/test_talos.py)."""
    import copy

    from taskvec.finetuning.build import sparse_least_sensitive

    model, head, inputs, labels = tiny_training_setup()
    settings = TALOS.resolve({"fraction": 0.25, "rounds": 2, "examples": 24})
    fit = FitData(head, inputs, labels, 16, 0, torch.device("cpu"))
    masks = sparse_least_sensitive(copy.deepcopy(model), settings, fit, False).masks
    cfg = TrainConfig(steps=6, batch_size=16, lr=1e-2, warmup_steps=1, settings=dict(settings))
    vector = finetune(model, head, inputs, labels, mode=TALOS, cfg=cfg, progress=False)
    assert vector.info["cost"]["changed_entries"] == sum(int(m.sum()) for m in masks.values())
    for name, delta in vector.vector.items():  # nothing outside the mask moved
        mask = masks.get(name, torch.zeros_like(delta, dtype=torch.bool))
        assert torch.equal(delta[~mask], torch.zeros_like(delta[~mask])), name
    assert sum(int((d != 0).sum()) for d in vector.vector.values()) > 0
    assert vector.info["mask"]["trained"] * vector.info["mask"]["candidates"] == pytest.approx(vector.info["cost"]["changed_entries"])


# ----- linearization ------------------------------------------------------------------------------


def test_partial_linearization_matches_finite_differences_of_the_subset():
    model = build_backbone("tiny-attn").double()
    batch = {"pixels": torch.randn(5, 3, 8, 8, dtype=torch.float64)}
    base = _params(model)
    names = select_parameters(model, "qkv.*")
    subset = WeightSubset(dict(model.named_parameters()), names)
    torch.manual_seed(3)
    delta = {n: 1e-2 * torch.randn_like(base[n]) for n in names}
    with torch.no_grad():
        for n in names:
            subset.trained[n].add_(delta[n])
    tuned = TunedEncoder(model, subset, linearized=True)
    out = tuned(**batch)

    def at(scale: float) -> torch.Tensor:
        weights = {n: base[n] + scale * delta[n] for n in names}
        return torch.func.functional_call(model, weights, args=(), kwargs=batch, strict=False)

    eps = 1e-4
    expected = at(0.0) + (at(eps) - at(-eps)) / (2 * eps)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-8)
    # the same as full linearization with a tangent that is zero outside the subset
    full = taskvec.linearize(model)
    with torch.no_grad():
        for n, p in full.model.named_parameters():
            p.add_(delta.get(n, torch.zeros_like(p)))
    torch.testing.assert_close(out, full(**batch), rtol=1e-10, atol=1e-12)


class Mlp(Backbone):
    """Small enough for an explicit Jacobian."""

    name = "mlp"

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, *, x):
        return self.b(torch.tanh(self.a(x)))


def test_tjp_squared_sum_penalty_equals_an_explicit_jacobian_product():
    """penalty = "squared-sum" reproduces taskvec's earlier τJp term, λ Σ_d mean_x ‖J(x; θ0) τ‖²."""
    torch.manual_seed(0)
    model = Mlp().double()
    params = _params(model)
    names = list(params)
    trainable = WeightSubset(dict(model.named_parameters()), names)
    tau = {n: 0.1 * torch.randn_like(params[n]) for n in names}
    with torch.no_grad():
        for n in names:
            trainable.trained[n].add_(tau[n])
    head = taskvec.models.heads.ClassificationHead(torch.randn(2, 3), 1.0)
    step = TrainedModel(TunedEncoder(model, trainable, linearized=True), head, penalty=0.7, term=squared_sum).double()
    others = [{"x": torch.randn(6, 4, dtype=torch.float64)}, {"x": torch.randn(3, 4, dtype=torch.float64)}]
    _, penalty = step({"x": torch.randn(2, 4, dtype=torch.float64)}, others)

    flat_tau = torch.cat([tau[n].flatten() for n in names])
    expected = 0.0
    for other in others:
        for x in other["x"]:

            def f(*values, x=x):
                return torch.func.functional_call(model, dict(zip(names, values)), args=(), kwargs={"x": x[None]})[0]

            jac = torch.autograd.functional.jacobian(f, tuple(params[n] for n in names))
            matrix = torch.cat([j.reshape(3, -1) for j in jac], dim=1)  # (outputs, parameters)
            expected += (matrix @ flat_tau).pow(2).sum() / len(other["x"])
    torch.testing.assert_close(penalty, 0.7 * expected, rtol=1e-9, atol=1e-12)


def test_tjp_needs_the_other_tasks():
    model, head, inputs, labels = tiny_training_setup()
    with pytest.raises(TaskvecError, match="other tasks' inputs"):
        finetune(
            model, head, inputs, labels, mode=TJP, cfg=TrainConfig.for_mode(TJP, steps=2, batch_size=8, warmup_steps=1), progress=False
        )


# ----- LoRA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("linearized", [False, True])
def test_lora_vector_is_scale_b_a_and_reproduces_the_adapted_model(linearized):
    model = build_backbone("tiny-attn").double()
    names = select_parameters(model, "matrices")
    assert names == ["embed.weight", "qkv.weight", "out.weight"]
    lora = LowRank(dict(model.named_parameters()), names, rank=2, alpha=3.0, seed=0, linearized=linearized)
    torch.manual_seed(1)
    with torch.no_grad():
        for b in lora.b.values():
            b.normal_()
        if not linearized:
            for a in lora.a.values():
                a.add_(0.1 * torch.randn_like(a))
    vector = lora.vector(linearized)
    for n in names:
        torch.testing.assert_close(vector[n], 1.5 * lora.b[n] @ lora.a[n])
        assert torch.linalg.matrix_rank(vector[n]) <= 2
    assert set(lora.trained) == ({f"{n}.lora_B" for n in names} | (set() if linearized else {f"{n}.lora_A" for n in names}))
    batch = {"pixels": torch.randn(4, 3, 8, 8, dtype=torch.float64)}
    adapted = TunedEncoder(model, lora, linearized)(**batch)
    as_vector = TaskVector(
        {n: vector.get(n, torch.zeros_like(p)) for n, p in model.named_parameters()},
        LINEAR_LORA if linearized else LORA,
        taskvec.task_vector.base_identity(model),
        ("t",),
    )
    edited = as_vector.apply_to(model)  # f_lin for the linearized variant
    torch.testing.assert_close(edited(**batch), adapted, rtol=1e-9, atol=1e-10)


# ----- every mode: train, save, load, merge ----------------------------------------------------------


def test_every_mode_saves_loads_and_merges_like_any_other(tmp_path):
    model, head, inputs, labels = tiny_training_setup()
    other = {"pixels": inputs["pixels"].flip(0)}
    factors = [compute_factors(model, other, batch_size=32)]  # TAK's
    settings = {
        SUBSET.name: {"params": "fc.*"},
        LINEAR_SUBSET.name: {"params": "conv.*"},
        LORA.name: {"rank": 2},
        LINEAR_LORA.name: {"rank": 2},
        TALOS.name: {"fraction": 0.3},
    }
    for mode in FINETUNE_MODES:
        vectors = []
        for seed in (0, 1):
            cfg = TrainConfig(steps=3, batch_size=16, lr=1e-2, warmup_steps=1, seed=seed, settings=settings.get(mode.name, {}))
            v = finetune(model, head, inputs, labels, mode=mode, cfg=cfg, task=f"t{seed}", progress=False, others=[other], factors=factors)
            v.save(tmp_path / f"{mode.name}.{seed}.safetensors")
            vectors.append(TaskVector.load(tmp_path / f"{mode.name}.{seed}.safetensors"))
        assert vectors[0].mode is mode and vectors[0].info["cost"]["step_ms"] > 0
        merged = taskvec.merge(vectors, "ties", k=0.5)
        assert merged.mode is mode and merged.tasks == ("t0", "t1")
        edited = merged.apply_to(model, 0.5)
        assert edited(**{"pixels": inputs["pixels"][:4]}).shape == (4, model.embed_dim)
        assert method_for_vector(mode) in EVAL_METHODS and method_for_vector(mode).vectors is mode


# ----- config and cost ---------------------------------------------------------------------------------


def test_modes_and_their_settings_are_one_config_line_each():
    cfg = from_data(RunConfig, {"train": {"modes": ["nonlinear", "lora"], "lora": {"rank": 4, "steps": 70}}})
    assert list(cfg.train.modes) == ["nonlinear", "lora"]
    assert (
        cfg.train["lora"].settings == {"params": "matrices", "rank": 4, "alpha": 16.0, "arithmetic": "weights"}
        and cfg.train["lora"].steps == 70
    )
    assert cfg.train["lora"].lr == LORA.lr
    assert list(RunConfig().train.modes) == ["nonlinear", "linear"]  # new modes are opt-in
    assert from_data(RunConfig, to_data(cfg)) == cfg
    for table, message in [
        ({"modes": ["nonlinear"], "lora": {"rank": 4}}, r"\[train.lora\] configures a mode that train.modes leaves out"),
        ({"modes": ["lora"], "lora": {"rank": 0}}, r"train.lora.rank must be ≥ 1"),
        ({"modes": ["talos"], "talos": {"fraction": 1.5}}, r"train.talos.fraction must be in \[1e-09, 1\]"),
        ({"modes": ["lora"], "lora": {"rnak": 4}}, r"unknown key 'train.lora.rnak'"),
        ({"modes": ["sparse"]}, r"unknown fine-tuning mode 'sparse'"),
    ]:
        with pytest.raises(TaskvecError, match=message):
            from_data(RunConfig, {"train": table})
    shipped = Path(__file__).parents[1] / "configs"
    for name in ("methods.toml", "text-methods.toml"):
        cfg = taskvec.config.load_config(shipped / name)
        assert list(cfg.train.modes) == FINETUNE_MODES.names()


def test_cost_meter_sees_a_known_allocation():
    meter = CostMeter(torch.device("cpu")).start()
    meter.step_begins()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    meter.step_ends()
    summary = meter.summary()
    del block
    assert summary["peak_mib"] is not None  # Linux: /proc/self/clear_refs resets the high-water mark
    assert 60 <= summary["peak_mib"] < 200 and summary["step_ms"] >= 0


# ----- through the command line ------------------------------------------------------------------------

ALL_MODES = """
name = "modes"
backbone = "tiny-cnn"
tasks = ["toy-squares", "toy-stripes", "toy-noise"]
[backbone_options]
image_size = 8
[data]
max_train = 64
max_val = 24
max_test = 24
[train]
modes = ["nonlinear", "linear", "subset", "linear-subset", "lora", "linear-lora", "talos", "tjp", "tak"]
[train.subset]
params = "fc.*"
[train.linear-subset]
params = "conv.*, bn.*"
[train.lora]
rank = 2
[train.linear-lora]
rank = 2
[train.talos]
fraction = 0.2
rounds = 2
examples = 16
[eval]
alpha_step = 0.5
[merge]
methods = ["task_arithmetic", "ties"]
"""


def test_a_run_of_every_mode_reports_accuracy_cost_and_linearity(tmp_path, capsys):
    from taskvec.cli import main
    from taskvec.results import RunResults

    body = ALL_MODES
    for mode in FINETUNE_MODES:  # a short, fast fine-tune for each
        table = f"[train.{mode.name}]\n"
        extra = "steps = 4\nbatch_size = 16\nlr = 1e-2\nwarmup_steps = 1\n"
        body = body.replace(table, table + extra) if table in body else body + f"{table}{extra}"
    config = tmp_path / "modes.toml"
    config.write_text(body)
    out = tmp_path / "out"
    main(["run", "--config", str(config), "--out", str(out), "--dry-run"])
    plan = capsys.readouterr().out
    assert "fine-tune toy-squares (tjp)" in plan and "penalty on the inputs of toy-stripes, toy-noise" in plan
    assert "fine-tune toy-squares (tak)" in plan
    assert "params=fc.*" in plan and "linearity of non-linear fine-tuning" in plan
    main(["run", "--config", str(config), "--out", str(out), "--no-progress"])
    results = RunResults.load(out / "results.json")
    tasks = results.tasks
    for mode in FINETUNE_MODES:
        method = method_for_vector(mode)
        assert set(results.single_task.test[method.name]) == set(tasks), mode
        assert set(results.merge["task_arithmetic"][method.name].per_task) == set(tasks), mode
        assert set(results.negation[method.name].per_task) == set(tasks), mode
        costs = results.cost[mode.name]
        assert set(costs) == set(tasks) and all(c.step_ms > 0 and c.seconds > 0 and c.trained_entries > 0 for c in costs.values())
        assert (mode.name in results.linearity) == (not mode.linearized)
    for gaps in results.linearity.values():
        assert all(0 <= g.relative_gap and 0 <= g.nonlinear <= 1 for g in gaps.values())
    assert results.cost["lora"]["toy-squares"].trained_entries < results.cost["lora"]["toy-squares"].changed_entries
    report = (out / "report.md").read_text()
    section = report.split("## Fine-tuning modes: accuracy and cost")[1].split("\n## ")[0]
    for mode in FINETUNE_MODES:
        assert f"| {mode.label} |" in section
    assert "(1.00×)" in section  # costs relative to non-linear FT
    # τJp's effective penalty, per task (no [negation] control here: the other tasks only)
    assert all(c.penalty is None for m, costs in results.cost.items() if m != "tjp" for c in costs.values())
    expected = "λ = 0.1 · mean over 2 datasets (toy-stripes, toy-noise; no control) of mean_x ‖J(x;θ0)τ‖, 16 examples each per step"
    assert results.cost["tjp"]["toy-squares"].penalty == expected
    assert "Effective penalty of τJp, per fine-tuned task:" in section and f"- toy-squares: {expected}" in section
    tak = results.cost["tak"]["toy-squares"]
    assert tak.factor_seconds is not None and tak.factor_seconds >= 0 and (out / "factors" / "toy-squares.safetensors").exists()
    assert "TAK: each task's KFAC factors at θ0" in section
    # TaLoS's masks: typed in the results (the scoring's own time included), one report row per task
    assert set(results.masks) == {"talos"} and set(results.masks["talos"]) == set(tasks)
    mask = results.masks["talos"]["toy-squares"]
    assert mask.requested == 0.2 and mask.trained >= 0.2 and mask.seconds is not None and mask.seconds >= 0
    masks = report.split("## Sparse masks")[1].split("\n## ")[0]
    assert all(f"| TaLoS | {t} | 20.0 |" in masks for t in tasks)
    assert (out / "figures" / "modes_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_finetunes_a_new_mode_with_its_settings(tmp_path, capsys):
    from taskvec.cli import main

    config = tmp_path / "tiny.toml"
    config.write_text(
        'backbone = "tiny-cnn"\ntasks = ["toy-squares", "toy-stripes"]\n[backbone_options]\nimage_size = 8\n'
        "[data]\nmax_train = 48\nmax_val = 16\nmax_test = 16\n"
    )
    out = tmp_path / "lora.safetensors"
    main(
        [
            "finetune",
            "--task",
            "toy-squares",
            "--mode",
            "lora",
            "--set",
            "rank=3",
            "--set",
            "params=fc.*",
            "--config",
            str(config),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    vector = TaskVector.load(out)
    assert vector.mode is LORA and vector.info["settings"] == {"params": "fc.*", "rank": 3, "alpha": 16.0, "arithmetic": "weights"}
    assert torch.linalg.matrix_rank(vector.vector["fc.weight"]) <= 3 and not vector.vector["conv.weight"].any()
    main(["evaluate", str(out), "--config", str(config)])
    assert "toy-squares" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(out), "--posthoc", "--config", str(config)])
    assert exit_info.value.code == 2 and "no evaluation method applies lora vectors to f_lin" in capsys.readouterr().err
    for args, message in [
        (["--mode", "lora", "--set", "rank=0"], "setting --mode lora.rank must be ≥ 1"),
        (["--mode", "tjp"], "name them with --other TASK"),
        (["--mode", "tak"], "KFAC factors: name them with --other TASK"),
        (["--mode", "talos", "--set", "k=0.1"], "--mode talos has no setting 'k'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["finetune", "--task", "toy-squares", *args, "--config", str(config), "--out", str(tmp_path / "x.safetensors")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    main(
        [
            "finetune",
            "--task",
            "toy-squares",
            "--mode",
            "tjp",
            "--other",
            "toy-stripes",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "tjp.safetensors"),
            "--no-progress",
        ]
    )
    assert TaskVector.load(tmp_path / "tjp.safetensors").mode is TJP
    tak = ["finetune", "--task", "toy-squares", "--mode", "tak", "--other", "toy-stripes", "--config", str(config), "--no-progress"]
    main([*tak, "--out", str(tmp_path / "tak.safetensors")])
    assert "KFAC factors of toy-stripes" in capsys.readouterr().out
    assert TaskVector.load(tmp_path / "tak.safetensors").mode.name == "tak"


class TinyText(Backbone):
    """A token table and a linear layer: TaLoS must not spend its budget on unused rows."""

    name = "tiny-text"
    modality = "text"
    embed_dim = 4

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(50, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, *, ids):
        return self.proj(self.table(ids).mean(1))


def test_talos_leaves_lookup_tables_out_by_default():
    torch.manual_seed(0)
    model = TinyText()
    ids = torch.randint(0, 5, (32, 3))  # only tokens 0..4 appear: rows 5..49 score exactly 0
    labels = torch.randint(0, 2, (32,))
    head = taskvec.models.heads.ClassificationHead(torch.randn(2, 4), 1.0)
    fit = FitData(head, {"ids": ids}, labels, batch_size=16, seed=0, device=torch.device("cpu"))
    default = TALOS.builds(model, TALOS.resolve({"fraction": 0.5}), fit, False)
    assert set(default.names) <= {"proj.weight", "proj.bias"} and default.entries() >= 10  # ties at the threshold all train
    everything = TALOS.builds(model, TALOS.resolve({"fraction": 0.5, "params": "all"}), fit, False)
    assert everything.names == ["table.weight"]  # the 90 unused-row entries of the table win
