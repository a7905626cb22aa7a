"""The README's Python example, on the tiny test backbone: both modes, addition, evaluation."""

import torch

import taskvec as tv


def test_readme_example_runs_in_both_modes():
    base = tv.build_backbone("tiny-cnn")
    tasks = {n: tv.setup_task(base, n, max_train=96, max_val=32, max_test=64) for n in ("toy-squares", "toy-stripes")}
    for mode in ("nonlinear", "linear"):
        vectors = {
            n: tv.finetune_task(base, t, mode=mode, steps=20, batch_size=16, lr=1e-2, warmup_steps=2, progress=False)
            for n, t in tasks.items()
        }
        edited = (0.5 * sum(vectors.values())).apply_to(base)
        assert isinstance(edited, tv.LinearizedBackbone) == (mode == "linear")
        weights = dict((edited.model if mode == "linear" else edited).named_parameters())
        for name, theta0 in base.named_parameters():  # θ0 + ½(τ1 + τ2), on f or on f_lin
            expected = theta0 + 0.5 * (vectors["toy-squares"].vector[name] + vectors["toy-stripes"].vector[name])
            torch.testing.assert_close(weights[name], expected, rtol=0, atol=1e-6)
        for name, task in tasks.items():
            single = vectors[name].apply_to(base)
            assert task.accuracy(single) >= task.accuracy(base)
        # merge methods, as in the README: a direction with its recipe, applied like any vector
        d = tv.merge(list(vectors.values()), method="ties", k=0.2)
        assert d.info["merge"] == {"method": "ties", "settings": {"k": 0.2}, "inputs": [["toy-squares"], ["toy-stripes"]]}
        merged = (1.2 * d).apply_to(base)
        assert isinstance(merged, tv.LinearizedBackbone) == (mode == "linear")
        assert "ties" in [m.name for m in tv.MERGE_METHODS]


def test_finetune_task_defaults_to_the_modes_learning_rate(monkeypatch):
    import taskvec.api

    seen = []
    monkeypatch.setattr(taskvec.api, "finetune", lambda *args, mode, cfg, **kw: seen.append((mode, cfg.lr)))
    base = tv.build_backbone("tiny-cnn")
    task = tv.setup_task(base, "toy-squares", max_train=32, max_val=16, max_test=16)
    for mode in tv.FINETUNE_MODES:
        tv.finetune_task(base, task, mode=mode.name, steps=2, warmup_steps=1, progress=False)
    tv.finetune_task(base, task, mode="linear", lr=1e-3, steps=2, warmup_steps=1, progress=False)
    assert seen == [(m, m.lr) for m in tv.FINETUNE_MODES] + [(tv.FINETUNE_MODES.get("linear"), 1e-3)]
    assert len({lr for _, lr in seen[:-1]}) > 1  # the modes' rates differ: the default is the mode's


def test_finetune_task_penalizes_the_control_it_is_given():
    """The Python API's τJp takes a control task as the run and the CLI do: it is penalized
    beside the other tasks and named in the vector's effective penalty."""
    base = tv.build_backbone("tiny-cnn")
    tasks = {n: tv.setup_task(base, n, max_train=32, max_val=16, max_test=16) for n in ("toy-squares", "toy-stripes", "toy-noise")}
    train = dict(steps=2, warmup_steps=1, batch_size=8, progress=False)
    plain = tv.finetune_task(base, tasks["toy-squares"], mode="tjp", others=[tasks["toy-stripes"]], **train)
    with_control = tv.finetune_task(
        base, tasks["toy-squares"], mode="tjp", others=[tasks["toy-stripes"]], control=tasks["toy-noise"], **train
    )
    assert plain.info["penalty"]["control"] is None and with_control.info["penalty"]["control"] == "toy-noise"
    assert any(not torch.equal(plain.vector[n], with_control.vector[n]) for n in plain.vector)
