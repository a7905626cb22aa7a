"""The fast linear sweep against direct evaluation of the edited model, and α selection."""

import pytest
import torch
from plain_addition import task_addition

from taskvec.config import TrainConfig, alpha_grid
from taskvec.edits import negation_control, task_negation
from taskvec.errors import TaskvecError
from taskvec.evaluate import EvalSet, Evaluator, encode
from taskvec.models import build_backbone
from taskvec.models.heads import prototype_head
from taskvec.tasks import load_task_data
from taskvec.train import finetune

TASKS = ["toy-squares", "toy-stripes", "toy-noise"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_backbone("tiny-cnn")
    sets, heads, vectors = {}, {}, {"nonlinear": {}, "linear": {}}
    for name in TASKS:
        data = load_task_data(name, max_train=96, max_val=40, max_test=40)
        train = EvalSet(model.prepare(data.train.inputs), torch.as_tensor(data.train.labels))
        for split in ("val", "test"):
            raw = data.split(split)
            sets[(name, split)] = EvalSet(model.prepare(raw.inputs), torch.as_tensor(raw.labels))
        heads[name] = prototype_head(encode(model, train.inputs), train.labels, data.task.num_classes)
        for mode in vectors:
            cfg = TrainConfig(steps=15, batch_size=16, lr=3e-2, warmup_steps=2)
            vectors[mode][name] = finetune(model, heads[name], train.inputs, train.labels, mode=mode, cfg=cfg, task=name, progress=False)
    return model, heads, sets, vectors


@pytest.mark.parametrize("method", ["posthoc", "linear"])
def test_fast_sweep_equals_direct_evaluation(setup, method):
    model, heads, sets, vectors = setup
    vecs = vectors["linear" if method == "linear" else "nonlinear"]
    fast = Evaluator(model, heads, sets, vecs, method)
    for alpha in alpha_grid(0, 1, 0.25) + [-0.75]:
        coeffs = {t: alpha for t in TASKS}
        direct_model = fast.edited_model(coeffs)
        for task in TASKS:
            inputs = sets[(task, "val")].inputs
            direct = heads[task](encode(direct_model, inputs))
            torch.testing.assert_close(fast.logits(task, "val", coeffs), direct, rtol=1e-4, atol=1e-4)
            assert torch.equal(fast.logits(task, "val", coeffs).argmax(-1), direct.argmax(-1))
    # one pre-trained encoding per evaluation set (α = 0 came first) and one JVP of the summed
    # vector per evaluation set: the other grid points cost no pass through the network
    assert fast.forward_passes == 2 * len(TASKS)


def test_single_vector_products_are_reused_for_sums(setup):
    model, heads, sets, vectors = setup
    fast = Evaluator(model, heads, sets, vectors["linear"], "linear")
    for t in TASKS:  # J τ_t on every set: 9 products
        fast.logits("toy-squares", "val", {t: 0.5})
    passes = fast.forward_passes
    combined = fast.logits("toy-squares", "val", {t: 0.3 for t in TASKS})  # summed from cache
    mixed = fast.logits("toy-squares", "val", {"toy-squares": 0.2, "toy-noise": -0.4})
    assert fast.forward_passes == passes
    direct = heads["toy-squares"](encode(fast.edited_model({t: 0.3 for t in TASKS}), sets[("toy-squares", "val")].inputs))
    torch.testing.assert_close(combined, direct, rtol=1e-4, atol=1e-4)
    direct = heads["toy-squares"](encode(fast.edited_model({"toy-squares": 0.2, "toy-noise": -0.4}), sets[("toy-squares", "val")].inputs))
    torch.testing.assert_close(mixed, direct, rtol=1e-4, atol=1e-4)


def test_restricted_evaluator_reuses_and_matches(setup):
    model, heads, sets, vectors = setup
    for method, mode in (("nonlinear", "nonlinear"), ("linear", "linear")):
        full = Evaluator(model, heads, sets, vectors[mode], method)
        coeffs = {"toy-squares": 0.7, "toy-stripes": -0.3}
        whole = full.logits_many(["toy-squares", "toy-stripes"], "val", coeffs)
        rows = {"toy-squares": torch.tensor([0, 3, 5]), "toy-stripes": None}
        sub = full.restricted(rows, "val")
        part = sub.logits_many(["toy-squares", "toy-stripes"], "val", coeffs)
        assert sub.forward_passes == 0  # everything was sliced from the full evaluator
        torch.testing.assert_close(part["toy-squares"], whole["toy-squares"][rows["toy-squares"]])
        torch.testing.assert_close(part["toy-stripes"], whole["toy-stripes"])


class DirectEvaluator(Evaluator):
    """Evaluates every edit by building the edited model: the independent reference."""

    def logits_many(self, tasks, split, coeffs):
        model = self.edited_model(coeffs)
        self.forward_passes += len(tasks)
        return {t: self.heads[t](encode(model, self._set(t, split).inputs)) for t in tasks}


@pytest.mark.parametrize("method", ["nonlinear", "posthoc", "linear"])
def test_sweeps_choose_the_same_alpha_as_direct_evaluation(setup, method):
    model, heads, sets, vectors = setup
    vecs = vectors["linear" if method == "linear" else "nonlinear"]
    fast = Evaluator(model, heads, sets, vecs, method)
    direct = DirectEvaluator(model, heads, sets, vecs, method)
    alphas = alpha_grid(0, 1, 0.1)
    finetuned = {s: {t: fast.accuracy(t, s, {t: 1.0}) for t in TASKS} for s in ("val", "test")}
    a, b = (task_addition(ev, TASKS, finetuned, alphas) for ev in (fast, direct))
    assert direct.forward_passes >= len(alphas) * len(TASKS)  # really evaluated directly
    assert a.alpha == b.alpha
    assert a.curve == b.curve
    assert a.absolute == b.absolute
    control_val = fast.accuracy("toy-noise", "val", {})
    n1, n2 = (task_negation(ev, "toy-squares", "toy-noise", control_val, alphas) for ev in (fast, direct))
    assert n1 == n2


def test_addition_picks_best_validation_alpha():
    class Fake:
        def accuracies(self, tasks, split, coeffs):
            alpha = next(iter(coeffs.values()))
            return {t: 1 - abs(alpha - 0.6) if split == "val" else 0.5 for t in tasks}

    finetuned = {"val": {"a": 1.0, "b": 1.0}, "test": {"a": 1.0, "b": 0.5}}
    result = task_addition(Fake(), ["a", "b"], finetuned, alpha_grid())
    assert result.alpha == 0.6
    assert result.absolute == 0.5 and result.normalized == 0.75


def test_negation_respects_control_threshold():
    class Fake:
        def accuracies(self, tasks, split, coeffs):
            alpha = -coeffs["t"]
            return {task: 1 - alpha if task == "t" else 0.8 - 0.2 * alpha for task in tasks}  # control falls with α

    result = task_negation(Fake(), "t", "c", control_pretrained_val=0.8, alphas=alpha_grid(), threshold=0.95)
    # control ≥ 0.76 ⇔ 0.8 − 0.2α ≥ 0.76 ⇔ α ≤ 0.2
    assert result.alpha == 0.2
    assert result.target == pytest.approx(0.8)
    # a grid that starts past the last feasible α: no α keeps the control, and none is reported
    late = task_negation(Fake(), "t", "c", control_pretrained_val=0.8, alphas=[0.5, 0.75, 1.0], threshold=0.95)
    assert not late.feasible and late.alpha is None and late.target is None and late.control is None
    assert [p.alpha for p in late.curve] == [0.5, 0.75, 1.0]  # the sweep is still recorded


def test_negation_table_averages_feasible_targets_and_names_the_others():
    from taskvec.pipeline.context import Roles
    from taskvec.pipeline.evaluations import negation_table
    from taskvec.report import render_markdown
    from taskvec.results import NegationTarget, SingleTask

    roles = Roles(tasks=["a", "b"], targets=["a", "b"], controls={"a": "b", "b": "a"})
    single = SingleTask(val={"pretrained": {"a": 0.9, "b": 0.8}}, test={"pretrained": {"a": 0.9, "b": 0.8}})
    per_method = {
        "nonlinear": {
            "a": NegationTarget(alpha=0.5, control_task="b", target=0.3, control=0.78),
            "b": NegationTarget(alpha=None, control_task="a", target=None, control=None),
        }
    }
    table = negation_table(single, per_method, roles)
    row = table["nonlinear"]
    assert row.infeasible == ["b"] and row.target == 0.3 and row.control == 0.78
    assert table["pretrained"].infeasible == [] and table["pretrained"].target == pytest.approx(0.85)
    from taskvec.config import RunConfig
    from taskvec.results import RunResults
    from taskvec.typed import from_data

    results = RunResults(
        config=from_data(
            RunConfig,
            {
                "name": "t",
                "backbone": "x",
                "init": "pretrained",
                "head": {"kind": "prototype", "scale": 30.0},
                "data": {"seed": 0},
                "train": {},
                "negation": {"threshold": 0.95},
            },
        ),
        tasks=["a", "b"],
        single_task=single,
        merge={},
        negation=table,
    )
    report = render_markdown(results)
    assert "| Non-linear FT | 30.0 (1 of 2 targets) | 78.0 | 30.0 (0.50) | no feasible α |" in report


def test_negation_control_choice():
    assert negation_control("a", ["a", "b", "c"], "c") == "c"
    assert negation_control("c", ["a", "b", "c"], "c") == "a"
    assert negation_control("c", ["a", "b", "c"], None) == "a"
    assert negation_control("a", ["a", "b", "c"], None) == "b"
    with pytest.raises(TaskvecError):
        task_negation(None, "a", "a", 1.0, [0.0])


def test_evaluator_refuses_wrong_vector_mode(setup):
    model, heads, sets, vectors = setup
    with pytest.raises(TaskvecError, match="needs linear"):
        Evaluator(model, heads, sets, vectors["nonlinear"], "linear")


# ----- merged directions: one JVP per evaluation set, every α exact -------------------------------


def test_merged_linear_vector_fast_path_equals_direct_evaluation_at_every_alpha(setup):
    from taskvec.merging import MERGE_METHODS

    model, heads, sets, vectors = setup
    linear = [vectors["linear"][t] for t in TASKS]
    for method in MERGE_METHODS:
        merged = method(linear)
        fast = Evaluator(model, heads, sets, {}, "linear")
        fast.add_vector("merged", merged)
        fast.pretrained_features("toy-squares", "val")
        passes = fast.forward_passes
        for alpha in method.alpha_grid(alpha_grid(0, 1, 0.25)):
            direct_model = merged.apply_to(model, alpha)  # f_lin at θ0 + α d, built and run directly
            direct = heads["toy-squares"](encode(direct_model, sets[("toy-squares", "val")].inputs))
            got = fast.logits("toy-squares", "val", {"merged": alpha})
            torch.testing.assert_close(
                got, direct, rtol=1e-4, atol=1e-4, msg=lambda m, method=method, alpha=alpha: f"{method.name} α={alpha}: {m}"
            )
        assert fast.forward_passes == passes + 1, method.name  # one JVP of d for the whole α grid


def _normalizers(evaluators):
    return {s: {m.name: {t: ev.accuracy(t, s, {t: 1.0}) for t in TASKS} for m, ev in evaluators.items()} for s in ("val", "test")}


def test_select_merge_chooses_as_direct_evaluation_and_task_arithmetic_is_addition(setup):
    from taskvec.edits import select_merge
    from taskvec.kinds import LINEARIZED, LINEARIZED_FT, NONLINEAR, NONLINEAR_FT, POSTHOC
    from taskvec.merging import MERGE_METHODS

    model, heads, sets, vectors = setup
    modes = {NONLINEAR: [vectors["nonlinear"][t] for t in TASKS], LINEARIZED: [vectors["linear"][t] for t in TASKS]}
    alphas = alpha_grid(0, 1, 0.25)
    picks = {}
    for kind in (Evaluator, DirectEvaluator):
        evaluators = {
            m: kind(model, heads, sets, {t: vectors[m.vectors.name][t] for t in TASKS}, m) for m in (NONLINEAR_FT, POSTHOC, LINEARIZED_FT)
        }
        finetuned = _normalizers(evaluators)
        ties = MERGE_METHODS.get("ties")
        grid = [{"k": 0.2}, {"k": 1.0}]
        picks[kind] = {
            name: select_merge(evaluators, modes, MERGE_METHODS.get(name), grid if name == "ties" else [{}], alphas, TASKS, finetuned)
            for name in ("task_arithmetic", "ties")
        }
        for ev in evaluators.values():  # merged directions are dropped once chosen
            assert set(ev.vectors) == set(TASKS) and not any("ties" in str(k) for k in ev._jvps)
        ta = picks[kind]["task_arithmetic"]
        for m, ev in evaluators.items():  # the task-arithmetic merge is plain addition
            plain = task_addition(ev, TASKS, {s: finetuned[s][m.name] for s in ("val", "test")}, alphas)
            assert (ta[m.name].alpha, ta[m.name].absolute) == (plain.alpha, plain.absolute)
            assert [p.val_normalized for p in ta[m.name].curve] == pytest.approx([p.val_normalized for p in plain.curve], abs=1e-9)
        assert [p.settings for p in picks[kind]["ties"][LINEARIZED_FT.name].search] == grid
        for chosen in picks[kind]["ties"].values():  # the setting with the best validation score (first on a tie)
            best = max(chosen.search, key=lambda p: p.val_normalized)
            assert (chosen.settings, chosen.alpha) == (best.settings, best.alpha)
            assert max(p.val_normalized for p in chosen.curve) == best.val_normalized
        assert ties.name in picks[kind] and picks[kind]["ties"][NONLINEAR_FT.name].settings in grid
    for name in ("task_arithmetic", "ties"):
        for m in (NONLINEAR_FT.name, POSTHOC.name, LINEARIZED_FT.name):
            fast, direct = picks[Evaluator][name][m], picks[DirectEvaluator][name][m]
            assert (fast.settings, fast.alpha, fast.absolute, fast.normalized) == (
                direct.settings,
                direct.alpha,
                direct.absolute,
                direct.normalized,
            )


def test_evaluator_refuses_a_merged_vector_of_another_mode(setup):
    from taskvec.merging import merge

    model, heads, sets, vectors = setup
    ev = Evaluator(model, heads, sets, {}, "linear")
    with pytest.raises(TaskvecError, match="needs linear task vectors"):
        ev.add_vector("m", merge([vectors["nonlinear"][t] for t in TASKS]))
    ev.add_vector("m", merge([vectors["linear"][t] for t in TASKS]))
    with pytest.raises(TaskvecError, match="already holds"):
        ev.add_vector("m", merge([vectors["linear"][t] for t in TASKS]))


def test_select_merge_picks_the_best_settings_and_alpha_on_validation():
    """A fake evaluator whose validation score peaks at k = 0.2, α = 1.5 (and whose test score
    says which edit was evaluated): selection must find that peak for every method."""
    from taskvec.edits import select_merge
    from taskvec.kinds import LINEARIZED, LINEARIZED_FT, NONLINEAR, NONLINEAR_FT, POSTHOC
    from taskvec.merging import MERGE_METHODS
    from taskvec.task_vector import TaskVector

    class Fake:
        def __init__(self):
            self.vectors, self.dropped = {}, []

        def add_vector(self, key, vector):
            self.vectors[key] = vector

        def drop_vector(self, key):
            self.dropped.append(key)
            del self.vectors[key]

        def accuracies(self, tasks, split, coeffs):
            ((key, alpha),) = coeffs.items()
            k = self.vectors[key].info["merge"]["settings"]["k"]
            score = 1 - abs(k - 0.2) - abs(alpha - 1.5) / 10 if split == "val" else k + alpha
            return {t: score for t in tasks}

    base = {"backbone": "fake"}
    vectors = {mode: [TaskVector({"w": torch.randn(5)}, mode, base, (t,)) for t in ("a", "b")] for mode in (NONLINEAR, LINEARIZED)}
    evaluators = {m: Fake() for m in (NONLINEAR_FT, POSTHOC, LINEARIZED_FT)}
    finetuned = {s: {m.name: {"a": 1.0, "b": 1.0} for m in evaluators} for s in ("val", "test")}
    grid = [{"k": 0.1}, {"k": 0.2}, {"k": 0.3}]
    results = select_merge(evaluators, vectors, MERGE_METHODS.get("ties"), grid, [1.0, 1.5, 2.0], ["a", "b"], finetuned)
    for m in evaluators:
        r = results[m.name]
        assert (r.settings, r.alpha) == ({"k": 0.2}, 1.5)
        assert r.absolute == pytest.approx(0.2 + 1.5)  # the test set saw the chosen edit
        assert [p.settings for p in r.search] == grid and [p.alpha for p in r.search] == [1.5, 1.5, 1.5]
        assert not evaluators[m].vectors  # every merged direction is dropped once used
