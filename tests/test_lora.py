"""LoRA and L-LoRA against the official code (tanganke/peta; tanganke/fusion_bench).

* L-LoRA (`linear-lora`, `linearize = "adapters"`): each LoRA layer wrapped in its own first-order
  expansion, the rest of the network non-linear: peta finetune_clip.py `linearize_lora_model`
  (l. 97-112) with peta/models/LinearizedModel.py `LinearizedModelWraper` (l. 120-173); fusion_bench
  fusion_bench/models/linearized/vision_model.py `linearize_lora_model_` and
  linearized_model_utils.py `LinearizedModelWraper`. Re-implemented below (a peft-like LoRA layer,
  B0 = 0, and the wrapper's `jvp` of `functional_call` at params0 with dparams = p − p0).
* LoRA task arithmetic (`arithmetic = "adapters"`): the adapters' state-dict deltas added to the
  pre-trained peft model: peta evaluate_single_task_clip.py l. 150-167 (τ = state_dict_sub) and
  evaluate_multi_task_clip.py `evaluate_task_arithmetic` (l. 244-281, θ0 + λ·Στ).
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_training_setup
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import taskvec
from taskvec.config import TrainConfig
from taskvec.errors import TaskvecError
from taskvec.evaluate import Evaluator
from taskvec.finetuning.parts import LowRank, TunedEncoder
from taskvec.kinds import LINEAR_LORA, LORA
from taskvec.linearization import LinearizedBackbone
from taskvec.models import build_backbone
from taskvec.models.identity import base_identity
from taskvec.task_vector import TaskVector
from taskvec.train import finetune

NAMES = ["embed.weight", "qkv.weight", "out.weight"]
RANK, ALPHA, SEED = 2, 3.0, 7
SCALE = ALPHA / RANK


def tiny_model():
    return build_backbone("tiny-attn").double().eval()


def batch():
    return {"pixels": torch.randn(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))}


def random_adapters(lora: LowRank, seed: int, b_scale: float = 1.0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (ΔA, B)} drawn at random, as a fine-tune could leave them."""
    g = torch.Generator().manual_seed(seed)
    return {
        n: (
            0.3 * torch.randn(lora.a0[n].shape, generator=g, dtype=torch.float64),
            b_scale * torch.randn(lora.b[n].shape, generator=g, dtype=torch.float64),
        )
        for n in lora.names
    }


def set_adapters(lora: LowRank, adapters) -> LowRank:
    with torch.no_grad():
        for n, (delta_a, b) in adapters.items():
            lora.b[n].copy_(b)
            if not lora.linearized:
                lora.a[n].copy_(lora.a0[n] + delta_a)
    return lora


def low_rank(model, *, linearized: bool, adapters: bool = False) -> LowRank:
    return LowRank(dict(model.named_parameters()), NAMES, rank=RANK, alpha=ALPHA, seed=SEED, linearized=linearized, adapters=adapters)


# ----- the official code, re-implemented -----------------------------------------------------------


class RefLoraLinear(nn.Module):
    """peft's LoRA Linear in eval mode: base_layer(x) + lora_B(lora_A(x)) · scaling, B0 = 0."""

    def __init__(self, base: nn.Linear, a0: torch.Tensor, scaling: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Parameter(a0.clone())
        self.lora_B = nn.Parameter(torch.zeros(base.weight.shape[0], a0.shape[0], dtype=a0.dtype))
        self.scaling = scaling

    def forward(self, x):
        return self.base_layer(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling


class RefLinearizedWrapper(nn.Module):
    """peta LinearizedModel.py LinearizedModelWraper: params0 copied at wrapping; forward is
    out + dp of jvp(functional_call(model, ·), params0, params − params0)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        params0 = copy.deepcopy([(k, v.detach()) for k, v in model.named_parameters()])
        self.params0_keys = [k for k, _ in params0]
        self.params0_values = [v for _, v in params0]

    def forward(self, x):
        params = tuple(p for _, p in self.model.named_parameters())
        dparams = tuple(p - p0 for p, p0 in zip(params, self.params0_values))
        out, dp = torch.func.jvp(
            lambda *ps: functional_call(self.model, dict(zip(self.params0_keys, ps)), (x,)), tuple(self.params0_values), dparams
        )
        return out + dp


def official_model(model, a0: dict[str, torch.Tensor], *, linearize: bool) -> nn.Module:
    """get_peft_model on the three Linear layers, then (L-LoRA) linearize_lora_model: each LoRA
    layer replaced by its wrapper."""
    ref = copy.deepcopy(model)
    for n in NAMES:
        module = n.rsplit(".", 1)[0]
        layer = RefLoraLinear(getattr(ref, module), a0[n], SCALE)
        setattr(ref, module, RefLinearizedWrapper(layer) if linearize else layer)
    return ref


def official_task_arithmetic(ref: nn.Module, taus: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], lam: float) -> nn.Module:
    """θ0 + λ·Σ_t τ_t on the adapter parameters (state_dict_add of state_dict_mul)."""
    edited = copy.deepcopy(ref)
    state = edited.state_dict()
    for n in NAMES:
        prefix = n.rsplit(".", 1)[0] + (".model" if isinstance(getattr(edited, n.rsplit(".", 1)[0]), RefLinearizedWrapper) else "")
        for k, which in (("lora_A", 0), ("lora_B", 1)):
            state[f"{prefix}.{k}"] = state[f"{prefix}.{k}"] + lam * sum(tau[n][which] for tau in taus)
    edited.load_state_dict(state)
    return edited


def run(module, inputs):
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return module(**inputs)


# ----- L-LoRA: linearization scope ---------------------------------------------------------------


def test_l_lora_adapters_is_the_official_per_layer_linearization():
    model = tiny_model()
    adapters = random_adapters(low_rank(model, linearized=True), 1)
    lora = set_adapters(low_rank(model, linearized=True), adapters)
    settings = LINEAR_LORA.resolve({"rank": RANK, "alpha": ALPHA})
    assert settings["linearize"] == "adapters" and not LINEAR_LORA.applies_to_f_lin(settings)
    ours = TunedEncoder(copy.deepcopy(model), lora, LINEAR_LORA.applies_to_f_lin(settings))
    ref = official_model(model, lora.a0, linearize=True)
    with torch.no_grad():  # the official wrapper trains A too; with B0 = 0 its change has no first-order effect
        for n, (delta_a, b) in adapters.items():
            layer = getattr(ref, n.rsplit(".", 1)[0]).model
            layer.lora_A.add_(delta_a)
            layer.lora_B.copy_(b)
    torch.testing.assert_close(run(ours, batch()), run(ref, batch()), rtol=1e-10, atol=1e-12)


def test_l_lora_task_arithmetic_is_the_official_adapter_addition_applied_to_f():
    model = tiny_model()
    settings = LINEAR_LORA.resolve({"rank": RANK, "alpha": ALPHA})
    params = dict(model.named_parameters())
    taus, vectors = [], []
    for t in range(2):
        adapters = random_adapters(low_rank(model, linearized=True), 10 + t)
        lora = set_adapters(low_rank(model, linearized=True), adapters)
        taus.append(adapters)
        info = {"settings": settings, "seed": SEED}
        vectors.append(TaskVector(lora.task_vector(params, True), LINEAR_LORA, base_identity(model), (f"t{t}",), info))
    official = official_task_arithmetic(official_model(model, lora.a0, linearize=True), taus, 0.4)
    merged = taskvec.merge(vectors, "task_arithmetic")
    edited = merged.apply_to(model, 0.4)
    assert not isinstance(edited, LinearizedBackbone)  # f at W0 + Σ s·B_t·A0: the conventions coincide (A stays A0)
    torch.testing.assert_close(run(edited, batch()), run(official, batch()), rtol=1e-10, atol=1e-12)


def test_each_lora_layer_is_linear_in_its_adapters_under_per_layer_linearization():
    """Finite difference of each non-linear LoRA layer at (A0, 0) = the linearized layer's change."""
    model = tiny_model()
    lora = low_rank(model, linearized=True)
    adapters = random_adapters(lora, 2)
    x = {n: torch.randn(4, model.get_parameter(n).shape[1], dtype=torch.float64) for n in NAMES}
    h = 1e-4
    for n, (delta_a, b) in adapters.items():
        weight, bias = model.get_parameter(n), model.get_parameter(n.replace("weight", "bias"))

        def layer(a, b_, n=n, weight=weight, bias=bias):  # the non-linear LoRA layer
            return nn.functional.linear(x[n], weight + SCALE * b_ @ a, bias)

        fd = (layer(lora.a0[n] + h * delta_a, h * b) - layer(lora.a0[n] - h * delta_a, -h * b)) / (2 * h)
        with torch.no_grad():
            lora.b[n].copy_(b)
            linear_change = nn.functional.linear(x[n], lora.weights()[n], bias) - layer(lora.a0[n], torch.zeros_like(b))
            lora.b[n].mul_(2.0)
            doubled = nn.functional.linear(x[n], lora.weights()[n], bias) - layer(lora.a0[n], torch.zeros_like(b))
        torch.testing.assert_close(linear_change, fd, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(doubled, 2 * linear_change, rtol=1e-12, atol=1e-12)


def test_whole_network_linearization_is_f_lin_in_the_adapters_and_differs_from_per_layer():
    model = tiny_model()
    adapters = random_adapters(low_rank(model, linearized=True), 3, b_scale=3.0)
    lora = set_adapters(low_rank(model, linearized=True), adapters)
    settings = LINEAR_LORA.resolve({"linearize": "network"})
    assert LINEAR_LORA.applies_to_f_lin(settings)
    f_lin = run(TunedEncoder(copy.deepcopy(model), lora, True), batch())

    def f(h):  # f at W0 + s·(h B)(A0 + h ΔA): the adapters moved by h along (ΔA, B)
        weights = {n: model.get_parameter(n) + SCALE * (h * b) @ (lora.a0[n] + h * a) for n, (a, b) in adapters.items()}
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            return functional_call(model, weights, args=(), kwargs=batch(), strict=False)

    h = 1e-5
    torch.testing.assert_close(f_lin, f(0.0) + (f(h) - f(-h)) / (2 * h), rtol=1e-7, atol=1e-8)
    per_layer = run(TunedEncoder(copy.deepcopy(model), lora, False), batch())
    assert (per_layer - f_lin).abs().max() > 1e-2  # the two scopes are different models


def test_evaluator_and_apply_to_follow_the_vectors_linearize_setting():
    model = tiny_model()
    lora = set_adapters(low_rank(model, linearized=True), random_adapters(low_rank(model, linearized=True), 4))
    params = dict(model.named_parameters())
    vectors = {
        scope: TaskVector(
            lora.task_vector(params, True),
            LINEAR_LORA,
            base_identity(model),
            ("t",),
            {"settings": LINEAR_LORA.resolve({"linearize": scope})},
        )
        for scope in ("adapters", "network")
    }
    assert isinstance(vectors["network"].apply_to(model), LinearizedBackbone)
    assert not isinstance(vectors["adapters"].apply_to(model), LinearizedBackbone)
    for scope, on_f_lin in (("adapters", False), ("network", True)):
        ev = Evaluator(model, {}, {}, {"t": vectors[scope]}, LINEAR_LORA.name)
        assert ev.edits_f_lin is on_f_lin
        torch.testing.assert_close(run(ev.edited_model({"t": 0.5}), batch()), run(vectors[scope].apply_to(model, 0.5), batch()))
    ev = Evaluator(model, {}, {}, {"t": vectors["adapters"]}, LINEAR_LORA.name)
    with pytest.raises(TaskvecError, match=r"^task vector 'u' edits f_lin, the evaluator's other vectors f$"):
        ev.add_vector("u", vectors["network"])
    with pytest.raises(TaskvecError, match="cannot combine linear-lora task vectors of other settings"):
        vectors["adapters"] + vectors["network"]


# ----- LoRA task arithmetic: the adapter convention ---------------------------------------------------


def adapter_vectors(model, seeds=(20, 21)):
    settings = LORA.resolve({"rank": RANK, "alpha": ALPHA, "arithmetic": "adapters"})
    params = dict(model.named_parameters())
    taus, vectors = [], []
    for t, seed in enumerate(seeds):
        adapters = random_adapters(low_rank(model, linearized=False), seed)
        lora = set_adapters(low_rank(model, linearized=False, adapters=True), adapters)
        taus.append(adapters)
        vector = TaskVector(lora.task_vector(params, False), LORA, base_identity(model), (f"t{t}",), {"settings": settings, "seed": SEED})
        vectors.append(vector)
    return taus, vectors, lora.a0


def by_hand(model, a0, taus, lam):
    """W0 + s·(λ Σ_t B_t)(A0 + λ Σ_t ΔA_t) on each adapted matrix, evaluated through f."""
    weights = {
        n: model.get_parameter(n) + SCALE * (lam * sum(t[n][1] for t in taus)) @ (a0[n] + lam * sum(t[n][0] for t in taus)) for n in NAMES
    }
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return functional_call(model, weights, args=(), kwargs=batch(), strict=False)


def test_adapter_convention_task_arithmetic_matches_the_official_and_hand_written_models():
    model = tiny_model()
    taus, vectors, a0 = adapter_vectors(model)
    assert all(v.adapters and set(v.vector) == {f"{n}.lora_{x}" for n in NAMES for x in "AB"} for v in vectors)
    official = official_model(model, a0, linearize=False)
    for lam in (0.3, 1.0):
        merged = taskvec.merge(vectors, "task_arithmetic")
        got = run(merged.apply_to(model, lam), batch())
        torch.testing.assert_close(got, by_hand(model, a0, taus, lam), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got, run(official_task_arithmetic(official, taus, lam), batch()), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(run(sum(vectors).apply_to(model, lam), batch()), got, rtol=1e-12, atol=1e-12)
    negated = run((-vectors[0]).apply_to(model, 0.5), batch())
    torch.testing.assert_close(negated, by_hand(model, a0, taus[:1], -0.5), rtol=1e-10, atol=1e-12)
    # not the weight-convention model: W0 + λ Σ s·B_t·A_t is another edit
    weights = sum(TaskVector(v.weight_change(dict(model.named_parameters())), LORA, v.base, v.tasks) for v in vectors)
    assert (run(weights.apply_to(model, 0.3), batch()) - run(merged.apply_to(model, 0.3), batch())).abs().max() > 1e-3


def test_adapter_vectors_evaluate_point_by_point_on_f():
    model = tiny_model()
    _, vectors, _ = adapter_vectors(model)
    ev = Evaluator(model, {}, {}, {"t0": vectors[0], "t1": vectors[1]}, LORA.name)
    assert not ev.edits_f_lin
    expected = run(taskvec.merge(vectors, "task_arithmetic").apply_to(model, 0.7), batch())
    torch.testing.assert_close(run(ev.edited_model({"t0": 0.7, "t1": 0.7}), batch()), expected, rtol=1e-10, atol=1e-12)


def test_adapter_vector_file_round_trip(tmp_path):
    model = tiny_model()
    _, vectors, _ = adapter_vectors(model)
    vectors[0].save(tmp_path / "a.safetensors")
    loaded = TaskVector.load(tmp_path / "a.safetensors")
    assert loaded.adapters and loaded.info["seed"] == SEED and loaded.settings == vectors[0].settings
    assert all(torch.equal(loaded.vector[k], vectors[0].vector[k]) for k in vectors[0].vector)
    torch.testing.assert_close(run(loaded.apply_to(model, 0.8), batch()), run(vectors[0].apply_to(model, 0.8), batch()), rtol=0, atol=0)


def test_finetuning_under_either_convention_trains_the_same_adapters():
    model, head, inputs, labels = tiny_training_setup()
    got = {}
    for arithmetic in ("weights", "adapters"):
        cfg = TrainConfig(steps=3, batch_size=16, lr=1e-2, warmup_steps=1, seed=5, settings={"rank": 2, "arithmetic": arithmetic})
        got[arithmetic] = finetune(model, head, inputs, labels, mode=LORA, cfg=cfg, task="t", progress=False)
    adapters = got["adapters"]
    assert adapters.adapters and adapters.info["seed"] == 5 and set(adapters.vector) == {"fc.weight.lora_A", "fc.weight.lora_B"}
    change = adapters.weight_change(dict(model.named_parameters()))
    assert set(change) == set(got["weights"].vector) and float(change["fc.weight"].abs().max()) > 0
    for n, t in got["weights"].vector.items():
        torch.testing.assert_close(change[n], t, rtol=1e-5, atol=1e-7)


def test_adapter_convention_errors_are_one_line():
    model = tiny_model()
    _, vectors, _ = adapter_vectors(model)
    with pytest.raises(TaskvecError, match=r"^merge method dare is not implemented for LoRA adapter vectors \(arithmetic = 'adapters'\)"):
        taskvec.merge(vectors, "dare")
    weights = TaskVector(
        vectors[0].weight_change(dict(model.named_parameters())), LORA, vectors[0].base, ("w",), {"settings": LORA.resolve({})}
    )
    with pytest.raises(TaskvecError, match="cannot combine lora task vectors of other settings"):
        vectors[0] + weights
    with pytest.raises(TaskvecError, match="edits f only"):
        vectors[0].apply_to(model, linearized=True)
    seedless = TaskVector(vectors[0].vector, LORA, vectors[0].base, ("t",), {"settings": vectors[0].settings})
    with pytest.raises(TaskvecError, match=r"needs the seed of its A0"):
        seedless.apply_to(model)
    for mode, given in ((LINEAR_LORA, {"linearize": "both"}), (LORA, {"arithmetic": "tensors"})):
        with pytest.raises(TaskvecError, match="must be one of"):
            mode.resolve(given)


RUN = """
name = "lora-adapters"
backbone = "tiny-cnn"
tasks = ["toy-squares", "toy-stripes", "toy-noise"]
[backbone_options]
image_size = 8
[data]
max_train = 48
max_val = 16
max_test = 16
[train]
modes = ["lora"]
[train.lora]
params = "fc.*"
rank = 2
arithmetic = "adapters"
steps = 3
batch_size = 16
lr = 1e-2
warmup_steps = 1
[eval]
alpha_step = 0.5
[merge]
methods = ["task_arithmetic", "ties"]
"""


def test_a_run_merges_and_negates_adapter_vectors_and_reports_the_convention(tmp_path):
    from taskvec.cli import main
    from taskvec.results import RunResults

    config = tmp_path / "run.toml"
    config.write_text(RUN)
    main(["run", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"])
    results = RunResults.load(tmp_path / "out" / "results.json")
    assert set(results.merge["task_arithmetic"]["lora"].per_task) == set(results.merge["ties"]["lora"].per_task) == set(results.tasks)
    assert set(results.negation["lora"].per_task) == set(results.tasks)
    assert set(results.linearity["lora"]) == set(results.tasks)
    assert "arithmetic=adapters" in (tmp_path / "out" / "report.md").read_text()


def test_a_run_config_refuses_other_merges_of_adapter_vectors():
    from taskvec.config import RunConfig
    from taskvec.typed import from_data

    data = {"tasks": ["a", "b"], "train": {"modes": ["lora"], "lora": {"arithmetic": "adapters"}}}
    with pytest.raises(
        TaskvecError,
        match=r"^train.lora.arithmetic = 'adapters' merges by task_arithmetic and ties only; merge.methods also names \['iso_c'",
    ):
        from_data(RunConfig, {**data, "merge": {"methods": ["task_arithmetic", "iso_c"]}})
    assert from_data(RunConfig, {**data, "merge": {"methods": ["ties"]}}).merge.methods == ("ties",)


def official_ties(taus: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], k: float) -> dict[str, torch.Tensor]:
    """peta peta/tasks/ties_merging.py on the adapters' state-dict deltas, as
    evaluate_multi_task_clip.py `ties_merging` (l. 396-423) runs it: flatten in sorted key order,
    keep each task's top-k fraction of magnitudes (`topk_values_mask`), elect the sign of the sum
    (zeros take the majority), mean of the agreeing entries (`disjoint_merge`, "mean")."""
    keys = sorted(f"{n}.lora_{x}" for n in NAMES for x in "AB")
    flat = torch.stack([torch.cat([tau[k_[: -len(".lora_A")]]["AB".index(k_[-1])].reshape(-1) for k_ in keys]) for tau in taus])
    d = flat.shape[1]
    kth = flat.abs().kthvalue(max(d - int(d * k), 1), dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = 1 if torch.sign(sign.sum()) >= 0 else -1
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    merged = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    out, start = {}, 0
    for key in keys:
        n = key[: -len(".lora_A")]
        shape = taus[0][n]["AB".index(key[-1])].shape
        out[key] = merged[start : start + shape.numel()].view(shape)
        start += shape.numel()
    return out


def test_ties_of_adapter_vectors_is_the_official_ties_of_the_adapters():
    model = tiny_model()
    taus, vectors, a0 = adapter_vectors(model, seeds=(30, 31, 32))
    # k = 0.2 of the 208 adapter entries: the official trim keeps int(k·d) + 1 = 42 entries per task
    # and taskvec's round(k·d) = 42 alike (at k = 0.5 they keep 105 vs 104: a TIES convention
    # of taskvec.merging, not of the adapters)
    merged = taskvec.merge(vectors, "ties", k=0.2)
    expected = official_ties(taus, 0.2)
    assert sum(t.numel() for t in expected.values()) == 208
    assert merged.adapters and set(merged.vector) == set(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(merged.vector[key], tensor, rtol=1e-12, atol=1e-12)
    official = official_model(model, a0, linearize=False)
    by_state_dict = [{n: (expected[f"{n}.lora_A"], expected[f"{n}.lora_B"]) for n in NAMES}]
    torch.testing.assert_close(
        run(merged.apply_to(model, 0.6), batch()),
        run(official_task_arithmetic(official, by_state_dict, 0.6), batch()),
        rtol=1e-10,
        atol=1e-12,
    )
