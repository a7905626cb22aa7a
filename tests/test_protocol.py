"""The honest protocol: learning rates chosen on validation (`taskvec tune`), runs repeated over
seeds with mean ± std, and the paper's claims checked against the spreads."""

import json
import statistics

import pytest
from test_cli import CONFIG as CLI_CONFIG  # noqa: E402

from taskvec.claims import CLAIMS, FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, Spread, check_claims, verdict
from taskvec.cli import main
from taskvec.config import RunConfig, load_config, seed_config
from taskvec.errors import TaskvecError
from taskvec.kinds import LINEARIZED_FT, NONLINEAR_FT
from taskvec.merging import TASK_ARITHMETIC
from taskvec.pipeline.plan import format_plan
from taskvec.pipeline.rundir import RunDir
from taskvec.protocol import plan_run
from taskvec.results import RunResults
from taskvec.seeds import SeedResults
from taskvec.tuning import ADDITION, SINGLE_TASK, TunePoint, TuneResult, choose, config_lines, shared_rates, tune_modes
from taskvec.typed import from_data

# The CLI tests' tiny benchmark, without analyses and with task addition as its only merge method.
CONFIG = CLI_CONFIG.split("[analysis]")[0] + '[merge]\nmethods = ["task_arithmetic"]\n'


TUNE = """
[tune]
criterion = "addition"
[tune.lr]
nonlinear = [1e-3, 1e-2]
linear = [1e-2, 3e-2]
"""


def point(lr, single, addition, steps=10):
    return TunePoint(lr=lr, steps=steps, single_task=single, per_task={"a": single}, addition=addition, addition_alpha=0.5, run_dir="x")


# ----- selection ---------------------------------------------------------------------------------


def test_each_criterion_chooses_its_best_point_and_ties_go_to_the_smaller_rate():
    points = [point(3e-4, 0.80, 0.60), point(1e-5, 0.70, 0.75), point(1e-4, 0.80, 0.70)]
    assert choose(points, SINGLE_TASK) == 2  # 0.80 twice: the smaller rate, 1e-4, wins over 3e-4
    assert choose(points, ADDITION) == 1
    points[0].test_single_task, points[0].test_addition = 1.0, 1.0  # test accuracy is never what chooses
    assert (choose(points, SINGLE_TASK), choose(points, ADDITION)) == (2, 1)
    tied = [point(1e-4, 0.5, 0.5, steps=200), point(1e-4, 0.5, 0.5, steps=100)]
    assert choose(tied, SINGLE_TASK) == 1  # then the fewer steps
    with pytest.raises(TaskvecError, match="empty"):
        choose([], SINGLE_TASK)


def test_the_addition_criterion_scores_the_alpha_the_benchmark_picks(tmp_path):
    """`taskvec tune` and the benchmark choose α by one rule (best mean normalized validation
    accuracy); the grid point is then scored by that model's absolute validation accuracy."""
    from types import SimpleNamespace

    from taskvec.protocol import GridPoint, score_point
    from taskvec.results import AlphaPoint, MergeResult, SingleTask

    finetuned = {"a": 0.9, "b": 0.5}  # single-task validation accuracies: normalization divides by them

    def at(alpha, a, b):
        return AlphaPoint(alpha, {"a": a, "b": b}, (a + b) / 2, (a / finetuned["a"] + b / finetuned["b"]) / 2)

    curve = [at(0.3, 0.85, 0.20), at(0.6, 0.60, 0.40)]  # absolute prefers 0.3 (0.525 > 0.5); normalized 0.6
    assert max(curve, key=lambda p: p.val_absolute).alpha == 0.3
    merged = MergeResult(alpha=0.6, absolute=0.4, normalized=0.6, per_task={}, settings={}, seconds=0.0, curve=curve)
    single = SingleTask(val={NONLINEAR_FT.name: finetuned}, test={NONLINEAR_FT.name: {"a": 1.0, "b": 1.0}})
    run_dir = SimpleNamespace(root=tmp_path)
    grid_point = GridPoint(mode="nonlinear", lr=1e-3, steps=10, run=SimpleNamespace(dir=SimpleNamespace(root=tmp_path / "p")))
    scored = score_point(single, {NONLINEAR_FT.name: merged}, grid_point, ["a", "b"], run_dir)
    assert scored.addition_alpha == 0.6 == merged.alpha
    assert scored.addition == pytest.approx(0.5)  # absolute accuracy at the benchmark's α


def test_shared_rates_and_config_lines():
    modes = tune_modes(
        {"nonlinear": [point(1e-5, 0.5, 0.5), point(3e-5, 0.6, 0.4)], "linear": [point(3e-5, 0.7, 0.3), point(1e-4, 0.6, 0.6)]}
    )
    result = TuneResult(criterion="single-task", seed=0, modes=modes)
    assert shared_rates(result) == [3e-5]
    assert config_lines(result, SINGLE_TASK) == [
        "[train.nonlinear]",
        "lr = 3e-05",
        "steps = 10",
        "[train.linear]",
        "lr = 3e-05",
        "steps = 10",
    ]
    assert config_lines(result, ADDITION)[1::3] == ["lr = 1e-05", "lr = 0.0001"]


def test_tune_config_validation(tmp_path):
    path = tmp_path / "c.toml"
    for bad, message in [
        ('[tune]\ncriterion = "test-accuracy"', "unknown tuning criterion 'test-accuracy'"),
        ("[tune.lr]\nlora = [1e-3]", "tune.lr.lora tunes a mode that train.modes leaves out"),
        ("[tune.lr]\nlinear = [-1e-3]", "tune.lr.linear must hold positive finite numbers"),
        ("[tune.lr]\nlinear = []", "tune.lr.linear is empty"),
        ("[tune]\nsteps = [0]", "tune.steps must hold positive integers"),
        ("seeds = []", "seeds is empty"),
        ("seeds = [1, 1]", "seeds has duplicates"),
    ]:
        path.write_text((bad + "\n" + CONFIG) if bad.startswith("seeds") else CONFIG + bad)
        with pytest.raises(TaskvecError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load_config(path)


def test_default_grid_is_a_third_to_three_times_the_configured_rate():
    cfg = load_config(None)
    assert cfg.tune.rates("nonlinear", 3e-5) == [1e-5, 3e-5, 9e-5]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    config = root / "tiny.toml"
    config.write_text(CONFIG + TUNE)
    out = root / "out"
    main(["tune", "--config", str(config), "--out", str(out), "--no-progress"])
    return config, out


def test_tune_scores_every_grid_point_on_validation_and_chooses_the_best(tuned):
    _, out = tuned
    result = json.loads((out / "tune.json").read_text())["result"]
    assert result["criterion"] == "addition"
    for mode, rates, method in (("nonlinear", [1e-3, 1e-2], NONLINEAR_FT), ("linear", [1e-2, 3e-2], LINEARIZED_FT)):
        points = result["modes"][mode]["points"]
        assert [p["lr"] for p in points] == rates
        for p in points:  # each score recomputed from the grid point's own stage files
            stages = out / p["run_dir"] / "stages"
            single = json.loads((stages / "single_task.json").read_text())["result"]["val"][method.name]
            assert p["single_task"] == pytest.approx(statistics.fmean(single.values()))
            curve = json.loads((stages / "merge" / "task_arithmetic.json").read_text())["result"][method.name]["curve"]
            assert p["addition"] == pytest.approx(max(c["val_absolute"] for c in curve))
            assert json.loads((out / p["run_dir"] / "config.json").read_text())["train"]["modes"] == [mode]
            merged = json.loads((stages / "merge" / "task_arithmetic.json").read_text())["result"][method.name]
            assert p["test_addition"] == merged["absolute"]  # reported beside the shared rates, never chosen by
        for criterion, key in (("single-task", "single_task"), ("addition", "addition")):
            best = max(p[key] for p in points)
            chosen = points[result["modes"][mode]["chosen"][criterion]]
            assert chosen[key] == best and chosen["lr"] == min(p["lr"] for p in points if p[key] == best)
    report = (out / "tune.md").read_text()
    assert "| 0.01 |" in report and "One learning rate for every mode" in report  # 1e-2 is shared by both modes
    assert "[train.linear]" in report
    for mode in ("nonlinear", "linear"):  # a choice at the end of a two-rate grid is marked as such
        for criterion, index in result["modes"][mode]["chosen"].items():
            assert f"{criterion} {'↑' if index == 1 else '↓'}" in report


def test_tune_reuses_finished_points(tuned, capsys):
    config, out = tuned
    before = (out / "tune.json").stat().st_mtime_ns
    main(["tune", "--config", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert "[done]" not in err and "[skip] tune: done" in err
    assert (out / "tune.json").stat().st_mtime_ns == before


# ----- seeds -------------------------------------------------------------------------------------


def test_spread_is_the_mean_and_sample_std_of_the_known_values():
    s = Spread.of([0.5, 0.7, None, 0.6])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))
    assert s.values == [0.5, 0.7, None, 0.6] and s.count == 3
    one = Spread.of([0.4])
    assert one.std is None and one.interval() is None


def test_seed_config_moves_every_seed_but_nothing_else():
    cfg = from_data(RunConfig, {"seeds": [0, 3], "train": {"linear": {"seed": 9}}})
    sub = seed_config(cfg, 3)
    assert sub.seeds is None and sub.data.seed == 3 and all(t.seed == 3 for t in sub.train.modes.values())
    assert sub.train["linear"].lr == cfg.train["linear"].lr and sub.tasks == cfg.tasks


def test_each_seed_draws_its_own_dare_masks():
    """--seeds varies DARE's drop masks as it varies the splits: a seeded setting is offset by the
    run's seed, given or default, and a method without one is left as configured."""
    from taskvec.merging import DARE, TIES

    cfg = from_data(RunConfig, {"seeds": [0, 1, 2], "merge": {"methods": ["dare", "ties"], "dare": {"p": [0.5]}}})
    grids = [seed_config(cfg, s).merge.settings_grid(DARE) for s in (0, 1, 2)]
    assert [[g["seed"] for g in grid] for grid in grids] == [[0], [1], [2]]
    assert all(g["p"] == 0.5 for grid in grids for g in grid)
    assert seed_config(cfg, 2).merge.settings_grid(TIES) == cfg.merge.settings_grid(TIES)
    given = from_data(RunConfig, {"merge": {"methods": ["dare"], "dare": {"p": [0.9], "seed": [5, 7]}}})
    assert [g["seed"] for g in seed_config(given, 1).merge.settings_grid(DARE)] == [6, 8]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    out = root / "out"
    main(["run", "--config", str(config), "--out", str(out), "--seeds", "2", "--no-progress"])
    return config, out


def test_a_seeded_run_is_one_full_run_per_seed_with_its_own_split_and_order(seeded):
    _, out = seeded
    runs = [RunResults.load(out / f"seed-{s}" / "results.json") for s in (0, 1)]
    assert [r.config.data.seed for r in runs] == [0, 1]
    assert [r.config.train.modes["linear"].seed for r in runs] == [0, 1]
    assert (out / "seed-0" / "report.md").exists() and (out / "seed-1" / "vectors" / "toy-noise.linear.safetensors").exists()
    from taskvec.task_vector import TaskVector

    a, b = (TaskVector.load(out / f"seed-{s}" / "vectors" / "toy-noise.linear.safetensors") for s in (0, 1))
    assert any(not (a.vector[k] == b.vector[k]).all() for k in a.vector)  # another split and data order: another vector


def perturbed(run: RunResults, shift: float) -> RunResults:
    """A copy of a run with every accuracy it reports moved by `shift` (distinct seeds' numbers)."""
    import copy

    r = copy.deepcopy(run)
    for split in (r.single_task.val, r.single_task.test):
        for by_task in split.values():
            for t in by_task:
                by_task[t] -= shift
    for by_method in r.merge.values():
        for m in by_method.values():
            m.absolute -= shift
            m.normalized -= 2 * shift
            for p in m.curve:
                p.val_normalized -= shift
    for n in r.negation.values():
        n.target = None if n.target is None else n.target - shift
    return r


def test_aggregate_gives_each_seeds_value_with_mean_and_sample_std(seeded):
    from taskvec.seeds import aggregate

    _, out = seeded
    base = RunResults.load(out / "seed-0" / "results.json")
    shifts = [0.0, 0.1, 0.3]
    runs = [perturbed(base, s) for s in shifts]
    results = aggregate(load_config(None), {s: (f"seed-{s}", r) for s, r in zip((4, 5, 6), runs)})
    assert results.seeds == [4, 5, 6] and results.runs == {"4": "seed-4", "5": "seed-5", "6": "seed-6"}
    add = results.merge[TASK_ARITHMETIC.name][LINEARIZED_FT.name]
    values = [r.merge[TASK_ARITHMETIC.name][LINEARIZED_FT.name].absolute for r in runs]
    assert add.absolute.values == values and add.absolute.mean == pytest.approx(statistics.fmean(values))
    assert add.absolute.std == pytest.approx(statistics.stdev(shifts))
    assert add.normalized.std == pytest.approx(2 * statistics.stdev(shifts))
    assert results.single_task_mean[NONLINEAR_FT.name].values == [r.mean_single(NONLINEAR_FT) for r in runs]
    assert results.negation[LINEARIZED_FT.name].target.values == [r.negation[LINEARIZED_FT.name].target for r in runs]
    curve = results.addition_curve[NONLINEAR_FT.name]
    assert curve.val_normalized[2].std == pytest.approx(statistics.stdev(shifts))
    adds = {c.claim: c for c in results.claims}["adds-better"]
    assert adds.better.values == values


def test_seed_results_json_holds_each_seeds_run(seeded):
    _, out = seeded
    runs = [RunResults.load(out / f"seed-{s}" / "results.json") for s in (0, 1)]
    results = SeedResults.load(out / "results.json")
    assert results.seeds == [0, 1] and results.runs == {"0": "seed-0", "1": "seed-1"}
    linear = results.merge[TASK_ARITHMETIC.name][LINEARIZED_FT.name]
    assert linear.alpha.values == [r.merge[TASK_ARITHMETIC.name][LINEARIZED_FT.name].alpha for r in runs]
    assert [c.claim for c in results.claims] == CLAIMS.names()


def test_the_seeds_report_gives_spreads_claims_and_error_bar_figures(seeded):
    _, out = seeded
    report = (out / "report.md").read_text()
    assert "2 seeds" in report and "## The paper's claims, checked" in report
    assert " ± " in report and "[seed-1](seed-1/report.md)" in report
    for claim in CLAIMS:
        assert f"| {claim.label} |" in report
    assert "**not measured**" in report  # no analyses in this config: ξ, NTK and random init rows
    for fig in ("single_task", "merge_methods", "addition_alpha"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
    main(["report", str(out)])  # redrawn from results.json alone
    assert (out / "report.md").read_text() == report
    single = (out / "seed-0" / "report.md").read_text()  # a one-seed report has the claims too, never judged
    verdicts = [
        line.rstrip(" |").split(" | ")[-1]
        for line in single.split("## The paper's claims, checked")[1].split("##")[0].splitlines()
        if line.startswith("| ") and "verdict" not in line
    ]
    assert len(verdicts) == len(CLAIMS) and all(v.startswith(("**inconclusive**", "**not measured**")) for v in verdicts)
    assert "**inconclusive** (one seed: no spread to judge a difference by)" in single


def test_a_seeded_run_resumes_and_its_dry_run_walks_the_same_graph(seeded, capsys):
    config, out = seeded
    main(["run", "--config", str(config), "--out", str(out), "--seeds", "2", "--no-progress"])
    assert "[done]" not in capsys.readouterr().err
    cfg = from_data(RunConfig, {**json.loads((out / "config.json").read_text())})
    plan = plan_run(cfg, out)
    assert plan[-1].key == "seeds" and all(p.done for p in plan)
    assert any(p.key == "seed-1/finetune/toy-noise.linear" for p in plan)
    assert "[seed-1] fine-tune toy-noise (linear)" in format_plan(cfg, plan)


def test_a_single_run_directory_cannot_become_a_seeded_one(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    cfg = load_config(config)
    RunDir(tmp_path / "out").root.mkdir()
    RunDir(tmp_path / "out").made_for(cfg).stamp()
    from taskvec.config import with_seeds

    with pytest.raises(TaskvecError, match="differs in: name, seeds|differs in: seeds"):
        RunDir(tmp_path / "out").made_for(with_seeds(cfg, 2)).verify()


# ----- claims ------------------------------------------------------------------------------------


def test_verdicts_follow_the_spreads():
    high, low = Spread.of([0.80, 0.82, 0.81]), Spread.of([0.70, 0.71, 0.72])
    assert verdict(high, low, higher_is_better=True)[0] == HOLDS
    assert verdict(low, high, higher_is_better=True)[0] == FAILS
    assert verdict(low, high, higher_is_better=False)[0] == HOLDS  # lower is better (negation target, ξ)
    assert verdict(Spread.of([0.75, 0.80]), Spread.of([0.74, 0.78]), True)[0] == INCONCLUSIVE  # overlapping
    one = verdict(Spread.of([0.9]), Spread.of([0.1]), True)
    assert one[0] == INCONCLUSIVE and "one seed" in one[1]  # a huge gap, but no spread to judge it by
    assert verdict(Spread.of([None, None]), low, True)[0] == NOT_MEASURED


def test_claims_read_their_quantities_from_the_runs(seeded):
    _, out = seeded
    runs = [RunResults.load(out / f"seed-{s}" / "results.json") for s in (0, 1)]
    checks = {c.claim: c for c in check_claims(runs)}
    adds = checks["adds-better"]
    assert adds.better.values == [r.merge[TASK_ARITHMETIC.name][LINEARIZED_FT.name].absolute for r in runs]
    assert adds.other.values == [r.merge[TASK_ARITHMETIC.name][NONLINEAR_FT.name].absolute for r in runs]
    assert adds.verdict == verdict(adds.better, adds.other, True)[0]
    single = checks["nonlinear-advantage"]
    assert single.better.values == [r.mean_single(NONLINEAR_FT) for r in runs]
    assert checks["ntk-localized"].verdict == NOT_MEASURED and checks["random-init-fails"].verdict == NOT_MEASURED


def test_a_tuning_directory_stays_valid_when_the_config_takes_up_its_choice(tuned, tmp_path, capsys):
    config, out = tuned
    chosen = CONFIG.replace("lr = 1e-2", "lr = 3e-2", 1)  # e.g. the non-linear rate the tuning chose
    assert chosen != CONFIG
    changed = tmp_path / "chosen.toml"
    changed.write_text(chosen + TUNE)
    main(["tune", "--config", str(changed), "--out", str(out), "--no-progress"])
    assert "[done]" not in capsys.readouterr().err  # every grid point and the choice reused
    other = tmp_path / "other.toml"
    other.write_text(chosen.replace("max_val = 32", "max_val = 24") + TUNE)
    with pytest.raises(SystemExit):  # anything else still refuses the directory
        main(["tune", "--config", str(other), "--out", str(out), "--no-progress"])
    assert "differs in: data" in capsys.readouterr().err
