"""The paper configs validate; per-task epochs resolve to steps; the dry-run plan lists every
stage and names what is missing (fake data root with some datasets present, others not)."""

import dataclasses
from pathlib import Path

import clip_tiny
import fake_paper_data
import pytest

from taskvec.config import RunConfig, TrainConfig, TrainModes, load_config, quick, steps_for_epochs
from taskvec.errors import TaskvecError
from taskvec.kinds import FINETUNE_MODES, LINEARIZED, NONLINEAR
from taskvec.pipeline.plan import check_plan, format_plan
from taskvec.pipeline.stages import State
from taskvec.protocol import plan_run
from taskvec.typed import from_data

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("paper-vit-*.toml"))
B32 = Path(__file__).resolve().parents[1] / "configs" / "paper-vit-b-32.toml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_have_the_papers_protocol(path):
    assert len(CONFIGS) == 3
    cfg = load_config(path)
    assert cfg.tasks == ["Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN"]
    assert cfg.backbone.startswith("openclip:ViT-") and cfg.backbone.endswith("/openai")
    assert cfg.negation.control == "ImageNet" and cfg.negation.threshold == 0.95
    assert cfg.head.kind == "zeroshot" and cfg.device == "cuda"
    assert (cfg.data.max_train, cfg.data.max_val, cfg.data.max_test) == (None, None, None)
    assert (cfg.data.val_fraction, cfg.data.val_cap, cfg.data.seed) == (0.1, 5000, 0)
    assert [FINETUNE_MODES.get(m) for m in cfg.train.modes] == [NONLINEAR, LINEARIZED]  # the paper's two modes
    for mode in cfg.train.modes:
        t = cfg.train[mode]
        assert (t.lr, t.weight_decay, t.batch_size, t.warmup_steps, t.grad_clip) == (1e-5, 0.1, 128, 500, 1.0)
    assert cfg.train.epochs == {"Cars": 35, "DTD": 76, "EuroSAT": 12, "GTSRB": 11, "MNIST": 5, "RESISC45": 15, "SUN397": 14, "SVHN": 4}
    assert (cfg.eval.alpha_start, cfg.eval.alpha_stop, cfg.eval.alpha_step) == (0.0, 1.0, 0.05)
    assert quick(cfg).train.epochs == {}  # smoke runs use their own short schedule


def test_epochs_resolve_to_about_2000_steps_per_task():
    modes = TrainModes(
        modes={NONLINEAR.name: TrainConfig.for_mode(NONLINEAR, batch_size=128, warmup_steps=500, steps=2000)},
        epochs={"MNIST": 5, "Cars": 35},
        steps={"Cars": 10_000},
    )
    assert modes.for_task(NONLINEAR, "MNIST", 55_000).steps == 5 * 430 == 2150
    assert modes.for_task(NONLINEAR, "Cars", 7330).steps == 10_000  # steps win over epochs
    assert modes.for_task(NONLINEAR, "SVHN", 10).steps == 2000
    assert steps_for_epochs(76, 3384, 128) == 76 * 27
    with pytest.raises(TaskvecError, match="fewer than warmup_steps"):
        modes.for_task(NONLINEAR, "MNIST", 100)
    assert TrainModes()[LINEARIZED].lr == LINEARIZED.lr  # a mode without a table keeps its registered defaults
    with pytest.raises(TaskvecError, match="mode 'linear' is not among this run's train.modes: nonlinear"):
        modes[LINEARIZED]


def test_config_validation_of_the_new_keys():
    with pytest.raises(TaskvecError, match="train.epochs names tasks that are not in tasks"):
        from_data(RunConfig, {"tasks": ["a", "b"], "train": {"epochs": {"c": 3}}})
    with pytest.raises(TaskvecError, match="train.steps.a must be an integer"):
        from_data(RunConfig, {"tasks": ["a", "b"], "train": {"steps": {"a": 2.5}}})
    with pytest.raises(TaskvecError):
        from_data(RunConfig, {"data": {"max_train": "some"}})
    with pytest.raises(TaskvecError, match="precision"):
        from_data(RunConfig, {"train": {"linear": {"precision": "fp16"}}})
    cfg = from_data(RunConfig, {"data": {"max_val": "all", "root": "/d"}, "train": {"linear": {"grad_accumulation": 2}}})
    assert cfg.data.max_val is None and cfg.data.root == "/d" and cfg.train[LINEARIZED].grad_accumulation == 2
    assert cfg.train[LINEARIZED].lr == TrainModes()[LINEARIZED].lr == LINEARIZED.lr  # mode tables override the mode's defaults
    with pytest.raises(TaskvecError, match="unknown key 'train.lienar'; allowed: modes, epochs, steps, nonlinear, linear, subset"):
        from_data(RunConfig, {"train": {"lienar": {"lr": 1e-3}}})


def test_dry_run_plan_lists_every_stage_and_names_what_is_missing(tmp_path):
    present = ("DTD", "EuroSAT", "MNIST", "SVHN")
    fake_paper_data.make(tmp_path, present)
    clip_tiny.register()
    cfg = dataclasses.replace(
        load_config(B32),
        device="cpu",
        init="random",
        backbone=f"openclip:{clip_tiny.TINY_CLIP}",
        data=dataclasses.replace(load_config(B32).data, root=str(tmp_path)),
    )
    stages = plan_run(cfg)
    names = [s.title for s in stages]
    assert sum(s.key.startswith("finetune/") for s in stages) == 16 == len(cfg.tasks) * len(cfg.train.modes)
    assert "fine-tune DTD (linear)" in names and names[0].startswith("heads (zeroshot)")
    merges = [f"merge/{m}" for m in cfg.merge.methods]
    assert [s.key for s in stages if not s.key.startswith("finetune/")] == [
        "heads",
        "single_task",
        "linearity",
        *merges,
        "negation",
        "report",
    ]
    assert all(s.state is None for s in stages)  # no run directory given: nothing is looked up
    ready = {s.title for s in stages if s.ready}
    assert "fine-tune EuroSAT (nonlinear)" in ready and "fine-tune Cars (nonlinear)" not in ready
    missing = check_plan(stages)
    assert len(missing) == 5  # Cars, GTSRB, RESISC45, SUN397, ImageNet
    assert any("stanford_cars" in m for m in missing) and any("imagenet/train" in m for m in missing)
    assert not any(m.startswith(p) for m in missing for p in present)
    text = format_plan(cfg, stages)
    assert "MISSING INPUTS" in text and "missing (5):" in text and "76 epochs" in text

    fake_paper_data.make(tmp_path, ("Cars", "GTSRB", "RESISC45", "SUN397", "ImageNet"))
    stages = plan_run(cfg, out=tmp_path / "run")
    assert check_plan(stages) == [] and all(s.ready for s in stages)
    assert "everything the run needs is present" in format_plan(cfg, stages)


def test_plan_names_missing_weights_and_gpu(tmp_path):
    cfg = dataclasses.replace(load_config(B32), data=dataclasses.replace(load_config(B32).data, root=str(tmp_path)))
    stages = plan_run(cfg)
    missing = check_plan(stages)
    weights = [m for m in missing if m.startswith("weights ViT-B-32/openai")]
    assert len(weights) == 1 and "open_clip.create_model('ViT-B-32', pretrained='openai')" in weights[0]
    import torch

    if not torch.cuda.is_available():
        assert any(m.startswith("CUDA device") for m in missing)
    run = tmp_path / "run"
    (run / "vectors").mkdir(parents=True)
    import torch

    from taskvec.task_vector import TaskVector

    TaskVector({"w": torch.zeros(2)}, LINEARIZED, {"backbone": "x"}, ("DTD",)).save(run / "vectors" / "DTD.linear.safetensors")
    planned = plan_run(cfg, out=run)
    assert [s.title for s in planned if s.done] == ["fine-tune DTD (linear)"]
    assert {s.state for s in planned if not s.done} == {State.TODO}
    (run / "vectors" / "DTD.linear.safetensors").write_bytes(b"\x00" * 10)  # truncated: not done, and said so
    broken = [s for s in plan_run(cfg, out=run) if s.problem]
    assert [s.title for s in broken] == ["fine-tune DTD (linear)"] and "DTD.linear" in broken[0].problem
    assert any("DTD.linear" in m for m in check_plan(plan_run(cfg, out=run)))


def test_results_table_puts_ours_beside_the_papers():
    from taskvec.paper_results import comparison_tables, paper_model

    assert paper_model("openclip:ViT-L-14/openai") == "ViT-L-14" and paper_model("openclip:ViT-B-32/laion2b_s34b_b79k") is None
    from taskvec.kinds import LINEARIZED_FT, PRETRAINED
    from taskvec.merging import MERGE_METHODS
    from taskvec.results import MergeResult, NegationResult, RunResults, SingleTask

    tasks = list(load_config(B32).tasks)
    single = SingleTask(val={}, test={PRETRAINED.name: {t: 0.48 for t in tasks}, LINEARIZED_FT.name: {t: 0.9 for t in tasks}})
    ta = next(iter(MERGE_METHODS))
    added = MergeResult(alpha=0.5, absolute=0.77, normalized=0.86, per_task={}, settings={}, seconds=0.0, curve=[])
    from taskvec.kinds import NONLINEAR_FT

    ties = MERGE_METHODS.get("ties")
    results = RunResults(
        config=from_data(RunConfig, {"backbone": "openclip:ViT-B-32/openai", "backbone_options": {}}),
        tasks=tasks,
        single_task=single,
        merge={ta.name: {LINEARIZED_FT.name: added}, ties.name: {NONLINEAR_FT.name: added}},
        negation={LINEARIZED_FT.name: NegationResult(target=0.1, control=0.6, per_task={})},
    )
    table = comparison_tables(results)
    assert "| Linearized FT | 77.0 / 86.0 | 76.5 / 85.4 | +0.5 |" in table
    assert "| Pre-trained | 48.0 / – | 48.4 / – | -0.4 |" in table
    assert "| Linearized FT | 10.0 / 60.0 | 10.9 / 60.8 | -0.9 |" in table
    assert "| TIES | 77.0 | ≈72 |" in table  # a merge method beside its published ViT-B/32 number
    assert "| Task Arithmetic |" not in table.split("Merge methods")[1]  # no non-linear TA result: no row
    other = RunResults(config=RunConfig(), tasks=tasks, single_task=single, merge={}, negation={})
    assert comparison_tables(other) == ""
