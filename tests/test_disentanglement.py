"""Weight disentanglement error ξ(α1, α2) against a brute-force computation, and its figure."""

import dataclasses

import numpy as np
import pytest
import torch

from taskvec.analysis import disentanglement_error, disentanglement_grid, plot_disentanglement
from taskvec.config import TrainConfig
from taskvec.errors import TaskvecError
from taskvec.evaluate import EvalSet, Evaluator, encode
from taskvec.models import build_backbone
from taskvec.models.heads import prototype_head
from taskvec.task_vector import TaskVector
from taskvec.tasks import load_task_data
from taskvec.train import finetune

T1, T2 = "toy-squares", "toy-stripes"
MODE = {"nonlinear": "nonlinear", "posthoc": "nonlinear", "linear": "linear"}
# asymmetric grids so a transposed result cannot pass
A1 = [-2.0, 0.0, 0.5, 3.0]
A2 = [-1.0, 0.0, 2.0]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_backbone("tiny-cnn")
    sets, heads, vectors = {}, {}, {"nonlinear": {}, "linear": {}}
    for name in (T1, T2):
        data = load_task_data(name, max_train=96, max_val=40, max_test=8)
        train = EvalSet(model.prepare(data.train.inputs), torch.as_tensor(data.train.labels))
        sets[(name, "val")] = EvalSet(model.prepare(data.val.inputs), torch.as_tensor(data.val.labels))
        heads[name] = prototype_head(encode(model, train.inputs), train.labels, data.task.num_classes)
        for mode in vectors:
            cfg = TrainConfig(steps=6, batch_size=16, lr=5e-2, warmup_steps=1)
            vectors[mode][name] = finetune(model, heads[name], train.inputs, train.labels, mode=mode, cfg=cfg, task=name, progress=False)
    return model, heads, sets, vectors


def evaluator(setup, method, **replace):
    model, heads, sets, vectors = setup
    vecs = {**vectors[MODE[method]], **replace}
    return Evaluator(model, heads, sets, vecs, method)


def brute_force(ev: Evaluator, alphas1, alphas2, rows=None):
    """ξ from edited models built one by one, without the evaluator's logits or caches."""

    def preds(model, tasks):
        out = {}
        for task in tasks:
            inputs = ev.sets[(task, "val")].inputs
            if rows is not None:
                inputs = {k: v[rows[task]] for k, v in inputs.items()}
            out[task] = ev.heads[task](encode(model, inputs)).argmax(-1)
        return out

    own1 = [preds(ev.edited_model({T1: a}), [T1])[T1] for a in alphas1]
    own2 = [preds(ev.edited_model({T2: b}), [T2])[T2] for b in alphas2]
    xi = np.zeros((len(alphas1), len(alphas2)))
    for i, a in enumerate(alphas1):
        for j, b in enumerate(alphas2):
            both = preds(ev.edited_model({T1: a, T2: b}), [T1, T2])
            xi[i, j] = int((own1[i] != both[T1]).sum()) / len(own1[i]) + int((own2[j] != both[T2]).sum()) / len(own2[j])
    return xi


@pytest.mark.parametrize("method", ["nonlinear", "posthoc", "linear"])
def test_xi_matches_brute_force(setup, method):
    ev = evaluator(setup, method)
    result = disentanglement_error(ev, T1, T2, A1, A2)
    assert result.method == method and result.task1 == T1 and result.task2 == T2
    assert result.alphas1 == A1 and result.alphas2 == A2
    xi = np.array(result.xi)
    assert xi.shape == (len(A1), len(A2))
    np.testing.assert_array_equal(xi, brute_force(ev, A1, A2))
    np.testing.assert_allclose(xi, np.array(result.xi_terms[T1]) + np.array(result.xi_terms[T2]))
    assert xi[A1.index(0.0), A2.index(0.0)] == 0.0
    assert xi.max() > 0  # the vectors do interfere somewhere on this grid: the test is not vacuous


@pytest.mark.parametrize("method", ["nonlinear", "linear"])
def test_xi_at_origin_is_zero(setup, method):
    result = disentanglement_error(evaluator(setup, method), T1, T2, [0.0], [0.0])
    assert result.xi == [[0.0]]


@pytest.mark.parametrize("method", ["nonlinear", "posthoc", "linear"])
def test_zero_second_vector(setup, method):
    """τ2 = 0: task 1's term vanishes everywhere; task 2's term is how τ1 alone moves task 2's
    predictions away from θ0's, whatever α2 (so it is 0 only on the α1 = 0 row)."""
    model, _, _, vectors = setup
    tau1 = vectors[MODE[method]][T1]
    zero = TaskVector({n: torch.zeros_like(t) for n, t in tau1.vector.items()}, tau1.mode, tau1.base, (T2,))
    ev = evaluator(setup, method, **{T2: zero})
    result = disentanglement_error(ev, T1, T2, A1, A2)
    np.testing.assert_array_equal(result.xi_terms[T1], 0.0)
    xi = np.array(result.xi)
    np.testing.assert_array_equal(xi, xi[:, :1].repeat(len(A2), axis=1))  # constant in α2
    np.testing.assert_array_equal(xi[A1.index(0.0)], 0.0)
    assert xi.max() > 0  # τ1 does move task 2's predictions somewhere: the check is not vacuous
    # both vectors zero: nothing moves anywhere
    ev0 = evaluator(setup, method, **{T1: zero, T2: zero})
    np.testing.assert_array_equal(disentanglement_error(ev0, T1, T2, A1, A2).xi, 0.0)


@pytest.mark.parametrize("method", ["nonlinear", "linear"])
def test_max_examples_subsets_and_reuses_caches(setup, method):
    ev = evaluator(setup, method)
    full_xi = disentanglement_error(ev, T1, T2, A1, A2, max_examples=None)  # fills ev's caches
    passes = ev.forward_passes
    sizes = {t: len(ev.sets[(t, "val")]) for t in (T1, T2)}
    assert min(sizes.values()) > 10
    result = disentanglement_error(ev, T1, T2, A1, A2, max_examples=10, seed=3)
    assert result.examples == {T1: 10, T2: 10}
    assert result.forward_passes == 0  # everything sliced from the full-set caches
    assert ev.forward_passes == passes
    rows = {t: torch.from_numpy(np.sort(np.random.default_rng(3).permutation(sizes[t])[:10])) for t in (T1, T2)}
    np.testing.assert_array_equal(result.xi, brute_force(ev, A1, A2, rows))
    assert full_xi.examples == sizes
    # a fresh evaluator computes the same subset from scratch
    fresh = disentanglement_error(evaluator(setup, method), T1, T2, A1, A2, max_examples=10, seed=3)
    assert fresh.xi == result.xi and fresh.forward_passes > 0


def test_linear_cost_does_not_grow_with_the_grid(setup):
    result = disentanglement_error(evaluator(setup, "linear"), T1, T2)  # default 13 × 13 grid
    assert result.alphas1 == result.alphas2 == disentanglement_grid() == [x / 2 for x in range(-6, 7)]
    assert np.array(result.xi).shape == (13, 13)
    assert result.forward_passes == 2 + 4  # θ0 per eval set + one JVP per (vector, eval set)


def test_bad_arguments(setup):
    ev = evaluator(setup, "linear")
    with pytest.raises(TaskvecError, match="two different"):
        disentanglement_error(ev, T1, T1)
    with pytest.raises(TaskvecError, match="no task vector"):
        disentanglement_error(ev, T1, "toy-noise")


def test_plot_is_a_png(setup, tmp_path):
    results = {m: disentanglement_error(evaluator(setup, m), T1, T2, A1, A2) for m in ("linear", "nonlinear", "posthoc")}
    path = plot_disentanglement(results, tmp_path / "fig" / "xi.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["xi.png"]  # no temporary file left
    zero = {"linear": dataclasses.replace(results["linear"], xi=np.zeros((4, 3)).tolist())}
    plot_disentanglement(zero, tmp_path / "zero.png", search_box=None)  # all-zero map, no box
    assert (tmp_path / "zero.png").read_bytes()[:4] == b"\x89PNG"


def test_mean_xi_over_the_grid_and_inside_the_box():
    from taskvec.analysis import mean_xi
    from taskvec.results import Disentanglement

    result = Disentanglement(
        task1="a",
        task2="b",
        alphas1=[-1.0, 0.0, 1.0],
        alphas2=[0.0, 2.0],
        xi=[[0.9, 0.8], [0.0, 0.6], [0.2, 0.4]],
        method="linear",
        split="val",
        xi_terms={},
        examples={},
        seconds=0.0,
        forward_passes=0,
    )
    assert mean_xi(result) == pytest.approx(2.9 / 6)
    assert mean_xi(result, box=(0.0, 1.0)) == pytest.approx(0.1)  # cells (0, 0) and (1, 0)
