"""End to end through the command line, on the tiny test backbone and synthetic tasks."""

import json

import pytest

from taskvec.cli import main
from taskvec.kinds import EVAL_METHODS
from taskvec.merging import MERGE_METHODS
from taskvec.results import RunResults
from taskvec.task_vector import TaskVector
from taskvec.typed import to_data

CONFIG = """
name = "tiny"
backbone = "tiny-cnn"
tasks = ["toy-squares", "toy-stripes", "toy-noise"]
[backbone_options]
image_size = 8
[data]
max_train = 96
max_val = 32
max_test = 32
[train.nonlinear]
steps = 8
batch_size = 16
lr = 1e-2
warmup_steps = 1
[train.linear]
steps = 8
batch_size = 16
lr = 1e-2
warmup_steps = 1
[eval]
alpha_step = 0.25
[analysis]
disentanglement = true
ntk = true
random_init = true
disentanglement_step = 1.5
disentanglement_examples = 32
ntk_examples = 12
ntk_eigenfunctions = 8
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    out = root / "out"
    main(["run", "--config", str(config), "--out", str(out), "--no-progress"])
    return config, out


def test_run_writes_results_report_and_figures(finished_run):
    _, out = finished_run
    results = json.loads((out / "results.json").read_text())
    tasks = ["toy-squares", "toy-stripes", "toy-noise"]
    paper = [m for m in EVAL_METHODS if m.vectors is None or m.vectors.paper]  # the modes a config trains by default
    for method in paper:
        assert set(results["single_task"]["test"][method.name]) >= set(tasks)
        assert {"target", "control", "per_task"} <= set(results["negation"][method.name])
    assert list(results["merge"]) == MERGE_METHODS.names()  # every registered merge method, by default
    for name, by_method in results["merge"].items():
        assert set(by_method) == {m.name for m in paper if m.edits}, name
        for r in by_method.values():
            assert {"alpha", "absolute", "normalized", "per_task", "settings", "seconds", "curve", "search"} <= set(r)
            assert r["settings"] in [p["settings"] for p in r["search"]]  # the chosen settings were among those tried
    for name, convention in (("tsv_m", "conv"), ("iso_c", "conv"), ("iso_cts", "conv"), ("breadcrumbs", "ranking")):
        assert all(convention in r["settings"] for r in results["merge"][name].values()), name  # conventions are recorded
    loaded = RunResults.load(out / "results.json")  # typed, and it round-trips
    assert to_data(loaded) == results
    report = (out / "report.md").read_text()
    for row in ("Pre-trained", "Post-hoc linearization"):
        assert report.count(f"| {row} |") >= 3  # addition, negation and single-task tables
    for section in ("Table 1", "Table 2", "Single-task", "Merge methods", "disentanglement (Fig. 3)", "localization (Fig. 6)", "Table 3"):
        assert section in report
    for method in MERGE_METHODS:
        assert f"| {method.label} |" in report
    assert "Heads: prototype heads on the model's own features." in report  # Table 3 says what its heads were built from
    for fig in (
        "single_task",
        "addition_alpha",
        "negation_alpha",
        "nonlinear_advantage",
        "merge_methods",
        "disentanglement_toy-squares_toy-stripes",
        "ntk_localization",
    ):
        assert (out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
    xi = results["disentanglement"]["toy-squares+toy-stripes"]
    assert set(xi) == {"nonlinear", "posthoc", "linear"} and len(xi["linear"]["xi"]) == 5
    assert set(results["ntk"]["models"]) == {"pre-trained", "random init"}
    assert set(results["random_init"]["multi_task"]) == {"nonlinear", "linear"}
    assert (out / "random_init" / "results.json").exists()
    assert len(list((out / "vectors").glob("*.safetensors"))) == 6
    assert not list((out / "checkpoints").glob("*"))


def test_second_run_reuses_every_stage(finished_run, capsys):
    config, out = finished_run
    before = {p: p.stat().st_mtime_ns for p in (out / "vectors").iterdir()}
    first = json.loads((out / "results.json").read_text())["timing"]
    main(["run", "--config", str(config), "--out", str(out), "--no-progress"])
    printed, err = capsys.readouterr()
    assert err.count("[skip] finetune/") == 6 and "[skip] merge/task_arithmetic" in err and "[skip] report" in err
    assert "[done]" not in err  # nothing computed, the report included
    assert {p: p.stat().st_mtime_ns for p in (out / "vectors").iterdir()} == before
    for line in (
        "ξ toy-squares+toy-stripes (mean over the grid): Non-linear FT",
        "NTK localization: pre-trained",
        "from random init: single-task",
        "merge TIES: Non-linear FT",
    ):
        assert line in printed
    again = json.loads((out / "results.json").read_text())["timing"]
    stages = [
        "single_task",
        "linearity",
        *(f"merge/{m}" for m in MERGE_METHODS.names()),
        "negation",
        "disentanglement",
        "ntk",
        "random_init",
    ]
    assert list(first["stages"]) == stages and all(first["stages"][s] >= 0 for s in stages)
    assert again["stages"] == first["stages"] and again["finetune"] == first["finetune"]  # the times of the run that did the work
    assert len(first["finetune"]) == 6 and "| random_init |" in (out / "report.md").read_text()


def test_run_with_changed_config_refuses_and_keeps_results(finished_run, tmp_path, capsys):
    config, out = finished_run
    changed = tmp_path / "changed.toml"
    changed.write_text(CONFIG.replace("steps = 8", "steps = 9", 1))
    results = (out / "results.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(changed), "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    assert "different config (differs in: train)" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == results


def test_dry_run_refuses_a_directory_of_another_config_exactly_as_the_run_does(finished_run, tmp_path, capsys):
    """Before, the dry run never compared configs: on a directory made with another train.lr it
    listed the fine-tunes as done and exited 0 while `run` refused."""
    import shutil

    config, out = finished_run
    changed = tmp_path / "other-lr.toml"
    changed.write_text(CONFIG.replace("lr = 1e-2", "lr = 3e-2", 1))
    results = (out / "results.json").read_bytes()
    outcomes = []
    for extra in (["--dry-run"], ["--no-progress"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--config", str(changed), "--out", str(out), *extra])
        outcomes.append((exit_info.value.code, capsys.readouterr().err))
    assert outcomes[0] == outcomes[1]
    code, err = outcomes[0]
    assert code == 2 and err.count("\n") == 1 and "holds a run of a different config (differs in: train)" in err
    assert (out / "results.json").read_bytes() == results
    # the random-init sub-run's directory is checked by both as well
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    saved = json.loads((copy / "random_init" / "config.json").read_text())
    saved["eval"]["alpha_step"] = 0.5
    (copy / "random_init" / "config.json").write_text(json.dumps(saved))
    for extra in (["--dry-run"], ["--no-progress"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--config", str(config), "--out", str(copy), *extra])
        assert (
            exit_info.value.code == 2
            and f"{copy / 'random_init'} holds a run of a different config (differs in: eval)" in capsys.readouterr().err
        )


def test_changed_analysis_settings_redo_only_that_analysis(finished_run, tmp_path, capsys):
    import shutil

    config, out = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed = tmp_path / "coarser.toml"
    changed.write_text(CONFIG.replace("disentanglement_step = 1.5", "disentanglement_step = 3.0"))
    vectors = {p.name: p.stat().st_mtime_ns for p in (copy / "vectors").iterdir()}
    main(["run", "--config", str(changed), "--out", str(copy), "--no-progress"])
    err = capsys.readouterr().err
    assert "[redo] disentanglement" in err and "[skip] ntk" in err and "[skip] random_init" in err
    assert "[skip] merge/task_arithmetic" in err and err.count("[skip] finetune/") == 6
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "vectors").iterdir()} == vectors
    xi = json.loads((copy / "results.json").read_text())["disentanglement"]["toy-squares+toy-stripes"]
    assert xi["linear"]["alphas1"] == [-3.0, 0.0, 3.0]
    assert json.loads((copy / "config.json").read_text())["analysis"]["disentanglement_step"] == 3.0


def test_analyses_can_be_switched_off_on_a_finished_run(finished_run, tmp_path, capsys):
    import shutil

    config, out = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    plain = tmp_path / "plain.toml"
    plain.write_text(CONFIG.split("[analysis]")[0])
    main(["run", "--config", str(plain), "--out", str(copy), "--no-progress"])
    results = json.loads((copy / "results.json").read_text())
    assert results["disentanglement"] is None and "[skip] negation" in capsys.readouterr().err
    assert "Table 1" in (copy / "report.md").read_text()


def test_corrupt_vector_is_a_one_line_error_and_nothing_is_lost(finished_run, tmp_path, capsys):
    config, out = finished_run
    copy = tmp_path / "out"
    import shutil

    shutil.copytree(out, copy)
    victim = copy / "vectors" / "toy-noise.linear.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    results = (copy / "results.json").read_bytes()
    with pytest.raises(SystemExit):
        main(["run", "--config", str(config), "--out", str(copy), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("taskvec: error: corrupt") and "toy-noise.linear" in err
    assert (copy / "results.json").read_bytes() == results


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--task", "no-such-task"], "unknown task 'no-such-task'"),
        (["info", "missing.safetensors"], "file not found"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_backbone_in_config(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.replace('"tiny-cnn"', '"resnet-9000"'))
    with pytest.raises(SystemExit):
        main(["run", "--config", str(config), "--out", str(tmp_path / "o"), "--no-progress"])
    assert "unknown backbone 'resnet-9000'" in capsys.readouterr().err


def test_vector_commands(finished_run, tmp_path, capsys):
    config, out = finished_run
    a, b = out / "vectors" / "toy-squares.nonlinear.safetensors", out / "vectors" / "toy-stripes.nonlinear.safetensors"
    main(["add", str(a), str(b), "--alpha", "0.5", "--out", str(tmp_path / "sum.safetensors")])
    total = TaskVector.load(tmp_path / "sum.safetensors")
    va, vb = TaskVector.load(a), TaskVector.load(b)
    assert total.tasks == ("toy-squares", "toy-stripes")
    name = next(iter(va.vector))
    assert total.vector[name].allclose(0.5 * (va.vector[name] + vb.vector[name]))
    main(["negate", str(a), "--out", str(tmp_path / "neg.safetensors")])
    assert TaskVector.load(tmp_path / "neg.safetensors").vector[name].equal(-va.vector[name])
    capsys.readouterr()
    main(["evaluate", str(a), "--config", str(config), "--task", "toy-squares"])
    via_cli = json.loads(capsys.readouterr().out)["accuracy"]["toy-squares"]
    results = json.loads((out / "results.json").read_text())
    assert via_cli == pytest.approx(results["single_task"]["test"]["nonlinear"]["toy-squares"])
    # Vectors of different modes do not add.
    lin = out / "vectors" / "toy-squares.linear.safetensors"
    with pytest.raises(SystemExit):
        main(["add", str(a), str(lin), "--out", str(tmp_path / "bad.safetensors")])
    assert "cannot combine a nonlinear task vector with a linear one" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
    # A vector from another base is refused.
    va.base = {**va.base, "parameters": va.base.get("parameters", 0) + 1}
    va.save(tmp_path / "other-base.safetensors")
    with pytest.raises(SystemExit):
        main(["add", str(tmp_path / "other-base.safetensors"), str(b), "--out", str(tmp_path / "bad.safetensors")])
    assert "task vectors come from different base models" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()


def test_finetune_command_matches_pipeline(finished_run, tmp_path):
    config, out = finished_run
    target = tmp_path / "v.safetensors"
    main(["finetune", "--task", "toy-noise", "--mode", "linear", "--config", str(config), "--out", str(target), "--no-progress"])
    mine, theirs = TaskVector.load(target), TaskVector.load(out / "vectors" / "toy-noise.linear.safetensors")
    assert all(mine.vector[n].equal(theirs.vector[n]) for n in mine.vector)


def test_dry_run_of_paper_config_names_what_is_missing(tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).parent.parent / "configs" / "paper-vit-b-32.toml"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(config), "--dry-run", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    for stage in ("fine-tune Cars (nonlinear)", "fine-tune SVHN (linear)", "task addition of 8 tasks", "task negation"):
        assert stage in captured.out
    assert "missing" in captured.err and "ViT-B-32/openai" in captured.err and "Cars" in captured.err
    assert not (tmp_path / "o" / "config.json").exists()  # a dry run writes nothing


def test_dry_run_of_finished_run_reports_every_stage_done(finished_run, capsys):
    from taskvec.config import load_config
    from taskvec.protocol import plan_run

    config, out = finished_run
    main(["run", "--config", str(config), "--dry-run", "--out", str(out)])
    printed = capsys.readouterr().out
    stages = [line for line in printed.splitlines() if line[:5].strip().rstrip(".").isdigit()]
    planned = plan_run(load_config(config), out)
    assert len(stages) == len(planned) and all(line.endswith("[done, skipped]") for line in stages)
    keys = [s.key for s in planned]
    for key in ("heads", "single_task", "negation", "disentanglement", "ntk", "random_init", "report"):
        assert key in keys  # the analyses and the report included
    assert all(s.done for s in planned)


def test_changed_merge_settings_redo_only_that_merge(finished_run, tmp_path, capsys):
    import shutil

    config, out = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed = tmp_path / "ties.toml"
    changed.write_text(CONFIG + "[merge.ties]\nk = [0.5]\n")
    main(["run", "--config", str(changed), "--out", str(copy), "--no-progress"])
    err = capsys.readouterr().err
    assert "[redo] merge/ties" in err and "[skip] merge/task_arithmetic" in err and "[skip] negation" in err
    assert err.count("[skip] finetune/") == 6 and "[done] report" in err
    results = json.loads((copy / "results.json").read_text())
    assert all(r["settings"] == {"k": 0.5} for r in results["merge"]["ties"].values())
    assert results["merge"]["dare"] == json.loads((out / "results.json").read_text())["merge"]["dare"]


def test_merge_command_writes_a_merged_direction_with_its_recipe(finished_run, tmp_path, capsys):
    import taskvec

    _, out = finished_run
    vectors = [out / "vectors" / f"{t}.linear.safetensors" for t in ("toy-squares", "toy-stripes", "toy-noise")]
    target = tmp_path / "ties.safetensors"
    main(["merge", *map(str, vectors), "--method", "ties", "--set", "k=0.3", "--alpha", "0.5", "--out", str(target)])
    assert "TIES of toy-squares + toy-stripes + toy-noise (linear)" in capsys.readouterr().out
    merged = TaskVector.load(target)
    expected = 0.5 * taskvec.merge([TaskVector.load(p) for p in vectors], method="ties", k=0.3)
    assert merged.mode.name == "linear" and merged.tasks == ("toy-squares", "toy-stripes", "toy-noise")
    assert all(merged.vector[n].equal(expected.vector[n]) for n in merged.vector)
    recipe = merged.info["merge"]
    assert (recipe["method"], recipe["settings"], recipe["alpha"]) == ("ties", {"k": 0.3}, 0.5)
    assert recipe["inputs"] == [["toy-squares"], ["toy-stripes"], ["toy-noise"]] and recipe["files"] == list(map(str, vectors))
    before = target.read_bytes()
    nonlinear = out / "vectors" / "toy-squares.nonlinear.safetensors"
    for argv, message in [
        (["--method", "ties", "--set", "k=0.3"], "exists; pass --force"),
        (["--method", "magic", "--force"], "unknown merge method 'magic'"),
        (["--method", "ties", "--set", "kk=1", "--force"], "ties has no setting 'kk'; its settings: k"),
        (["--method", "ties", "--set", "k=2", "--force"], "must be in [0"),
        (["--method", "ties", "--set", "k", "--force"], "--set takes name=value"),
        (["--method", "dare", "--set", "combine=mean", "--force"], "must be one of ['sum', 'ties']"),
        (["--method", "ties", "--alpha", "nan", "--force"], "--alpha must be a finite number"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["merge", *map(str, vectors), *argv, "--out", str(target)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, (argv, err)
    with pytest.raises(SystemExit):
        main(["merge", str(vectors[0]), str(nonlinear), "--method", "iso_c", "--out", str(target), "--force"])
    assert "cannot combine a linear task vector with a nonlinear one" in capsys.readouterr().err
    assert target.read_bytes() == before  # refused merges leave the file as it was


def test_list_shows_modes_methods_and_merge_settings(capsys):
    from taskvec.kinds import FINETUNE_MODES

    main(["list"])
    printed = capsys.readouterr().out
    for kind in [*FINETUNE_MODES, *EVAL_METHODS, *MERGE_METHODS]:
        assert f"  {kind.name:<18} {kind.label}" in printed
    for method in MERGE_METHODS:
        for setting in method.settings:
            assert setting.describe() in printed
    assert "k=0.2 (float in [0, 1]; grid 0.1, 0.2, 0.3)" in printed


def test_sharded_fine_tuning_fills_one_run_directory(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.replace("disentanglement = true\nntk = true\nrandom_init = true", ""))
    out = tmp_path / "out"
    main(["run", "--config", str(config), "--out", str(out), "--no-progress", "--shard", "0/2"])
    first = sorted(p.name for p in (out / "vectors").iterdir())
    assert len(first) == 3 and not (out / "results.json").exists()
    main(["run", "--config", str(config), "--out", str(out), "--no-progress", "--shard", "1/2"])
    assert len(list((out / "vectors").iterdir())) == 6
    capsys.readouterr()
    main(["run", "--config", str(config), "--out", str(out), "--no-progress"])
    assert capsys.readouterr().err.count("[skip] finetune/") == 6
    assert (out / "results.json").exists()


def test_analyses_flag_adds_the_analysis_stages(capsys, tmp_path):
    main(["run", "--dry-run", "--out", str(tmp_path / "a")])
    plain = capsys.readouterr().out
    main(["run", "--dry-run", "--analyses", "--out", str(tmp_path / "b")])
    full = capsys.readouterr().out
    for stage in ("weight disentanglement", "NTK eigenfunction localization", "random initialization"):
        assert stage not in plain and stage in full


# --- the analyses as their own commands --------------------------------------------------------


def _vectors(out, mode):
    return [str(out / "vectors" / f"{t}.{mode}.safetensors") for t in ("toy-squares", "toy-stripes")]


def test_disentanglement_command_matches_the_pipeline(finished_run, tmp_path, capsys):
    config, out = finished_run
    dest = tmp_path / "xi"
    main(
        [
            "disentanglement",
            *_vectors(out, "nonlinear"),
            *_vectors(out, "linear"),
            "--posthoc",
            "--alpha-step",
            "1.5",
            "--examples",
            "32",
            "--config",
            str(config),
            "--out",
            str(dest),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert "nonlinear: mean ξ" in printed and "posthoc: mean ξ" in printed and "linear: mean ξ" in printed
    results = json.loads((dest / "disentanglement.json").read_text())
    pipeline = json.loads((out / "results.json").read_text())["disentanglement"]["toy-squares+toy-stripes"]
    assert set(results) == {"nonlinear", "posthoc", "linear"}
    for method in results:  # same grid, same seeded examples: the same numbers as `taskvec run`
        assert results[method]["xi"] == pipeline[method]["xi"]
    assert (dest / "disentanglement_toy-squares_toy-stripes.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "pick, message",
    [
        (lambda out: _vectors(out, "linear")[:1], "exactly two tasks per mode"),
        (lambda out: _vectors(out, "linear") + [str(out / "vectors" / "toy-noise.linear.safetensors")], "exactly two tasks per mode"),
        (
            lambda out: (
                _vectors(out, "linear")
                + [str(out / "vectors" / "toy-squares.nonlinear.safetensors"), str(out / "vectors" / "toy-noise.nonlinear.safetensors")]
            ),
            "different tasks",
        ),
        (lambda out: [str(out / "random_init" / "vectors" / p.split("/")[-1]) for p in _vectors(out, "linear")], "was made from base"),
    ],
)
def test_disentanglement_command_bad_vectors(finished_run, tmp_path, capsys, pick, message):
    config, out = finished_run
    with pytest.raises(SystemExit) as exit_info:
        main(["disentanglement", *pick(out), "--config", str(config), "--out", str(tmp_path / "xi"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "xi").exists()


def test_ntk_command_matches_the_pipeline(finished_run, tmp_path, capsys):
    config, out = finished_run
    pipeline = json.loads((out / "results.json").read_text())["ntk"]
    dest = tmp_path / "ntk"
    main(
        [
            "ntk",
            "--task",
            pipeline["train_task"],
            "--control",
            pipeline["control_task"],
            "--examples",
            "12",
            "--eigenfunctions",
            "8",
            "--config",
            str(config),
            "--out",
            str(dest),
        ]
    )
    assert "random init: localization" in capsys.readouterr().out
    result = json.loads((dest / "ntk.json").read_text())
    for model in ("pre-trained", "random init"):
        assert result["models"][model]["eigenvalues"] == pytest.approx(pipeline["models"][model]["eigenvalues"], rel=1e-5)
    assert (dest / "ntk_localization.png").read_bytes()[:4] == b"\x89PNG"
    main(
        [
            "ntk",
            "--task",
            "toy-squares",
            "--control",
            "toy-noise",
            "--examples",
            "6",
            "--eigenfunctions",
            "3",
            "--no-random-init",
            "--config",
            str(config),
            "--out",
            str(dest),
        ]
    )
    alone = json.loads((dest / "ntk.json").read_text())
    assert list(alone["models"]) == ["pre-trained"] and len(alone["models"]["pre-trained"]["energy_train"]) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["ntk", "--task", "toy-squares", "--control", "toy-squares", "--config", str(config), "--out", str(dest)])
    assert exit_info.value.code == 2 and "must differ" in capsys.readouterr().err


def test_report_command_redraws_report_and_figures(finished_run, tmp_path, capsys):
    import shutil

    _, out = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.md").unlink()
    main(["report", str(copy)])
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert sorted(p.name for p in (copy / "figures").iterdir()) == sorted(p.name for p in (out / "figures").iterdir())
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "nothing")])
    assert "no results.json" in capsys.readouterr().err


def test_linear_vector_of_another_base_is_refused_by_evaluate(finished_run, capsys):
    config, out = finished_run
    foreign = out / "random_init" / "vectors" / "toy-squares.linear.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(foreign), "--config", str(config)])
    assert exit_info.value.code == 2 and "was made from base" in capsys.readouterr().err


def test_run_init_option(finished_run, tmp_path, capsys):
    config, out = finished_run
    plain = tmp_path / "plain.toml"
    plain.write_text(CONFIG.split("[analysis]")[0])
    main(["run", "--config", str(plain), "--init", "random", "--out", str(tmp_path / "r"), "--no-progress"])
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["init"] == "random"
    assert results["single_task"] == json.loads((out / "random_init" / "results.json").read_text())["single_task"]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--init", "imagenet", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "unknown init 'imagenet'" in capsys.readouterr().err
