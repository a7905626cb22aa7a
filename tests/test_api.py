"""The README's Python example, on the tiny test backbone: both modes, addition, evaluation."""
import taskvec as tv


def test_readme_example_runs_in_both_modes():
    base = tv.build_backbone("tiny-cnn")
    tasks = {n: tv.setup_task(base, n, max_train=96, max_val=32, max_test=64) for n in ("toy-squares", "toy-stripes")}
    for mode in ("nonlinear", "linear"):
        vectors = {n: tv.finetune_task(base, t, mode=mode, steps=20, batch_size=16, lr=1e-2, warmup_steps=2, progress=False)
                   for n, t in tasks.items()}
        edited = (0.5 * sum(vectors.values())).apply_to(base)
        assert isinstance(edited, tv.LinearizedBackbone) == (mode == "linear")
        for name, task in tasks.items():
            single = vectors[name].apply_to(base)
            assert task.accuracy(single) >= task.accuracy(base)
            assert 0.0 <= task.accuracy(edited) <= 1.0
