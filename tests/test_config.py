import pytest

from taskvec.config import RunConfig, TrainConfig, load_config, quick
from taskvec.errors import TaskvecError
from taskvec.kinds import FINETUNE_MODES, LINEARIZED, NONLINEAR
from taskvec.merging import MERGE_METHODS
from taskvec.typed import from_data, to_data


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_default_and_partial_mode_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, 'tasks = ["mnist", "ising"]\n[train.linear]\nlr = 1e-3\nsteps = 10\nwarmup_steps = 1\n'))
    assert cfg.tasks == ["mnist", "ising"]
    assert cfg.train[LINEARIZED].lr == 1e-3 and cfg.train[LINEARIZED].steps == 10
    assert cfg.train[NONLINEAR] == TrainConfig(lr=NONLINEAR.lr)  # a mode the [train] table leaves untouched keeps its registry defaults
    assert from_data(RunConfig, to_data(cfg)) == cfg  # config.json reads back as the same config


def test_the_default_benchmark_differs_from_the_defaults_only_in_the_rates_it_chose_and_breadcrumbs_ranking():
    """`taskvec run` without --config reads the shipped default.toml: the settings' own defaults
    except the learning rates tuned for it, written there, not hidden in a default."""
    default, plain = load_config(None), RunConfig()
    assert default.train[NONLINEAR].lr == 3e-4 and default.train[LINEARIZED].lr == 3e-4
    assert plain.train[NONLINEAR].lr == NONLINEAR.lr == 3e-5 and plain.train[LINEARIZED].lr == LINEARIZED.lr
    assert to_data(default)["train"] != to_data(plain)["train"]
    # and Breadcrumbs ranks whole tensors: the official rows of a convolution are too short
    assert default.merge.grids == {"breadcrumbs": {"ranking": ["tensor"]}} and plain.merge.grids == {}
    assert {k: v for k, v in to_data(default).items() if k not in ("train", "merge")} == {
        k: v for k, v in to_data(plain).items() if k not in ("train", "merge")
    }


@pytest.mark.parametrize(
    "table",
    [
        "",
        "[train]\nepochs = { mnist = 2 }\n",
        "[train.linear]\nbatch_size = 16\n",
        "[train.nonlinear]\nsteps = 20\n",
        '[train]\nmodes = ["nonlinear", "linear", "lora"]\n',
    ],
)
def test_an_unrelated_train_key_changes_no_learning_rate(tmp_path, table):
    """Each rate has one default, the mode's own: a [train] table that leaves lr out, or no
    table at all, gives every mode the same rate (before, any [train] table dropped non-linear
    FT from the default benchmark's 3e-4 to 3e-5)."""
    cfg = load_config(_write(tmp_path, 'tasks = ["mnist", "ising"]\n' + table))
    assert {name: t.lr for name, t in cfg.train.modes.items()} == {name: FINETUNE_MODES.get(name).lr for name in cfg.train.modes}
    assert TrainConfig.for_mode(NONLINEAR).lr == NONLINEAR.lr and TrainConfig.for_mode(NONLINEAR, lr=1e-2).lr == 1e-2


def test_a_mode_setting_named_like_a_loop_field_and_a_merge_setting_named_alphas_are_refused(tmp_path, monkeypatch):
    import dataclasses

    from taskvec.config import LOOP_FIELDS
    from taskvec.registry import Setting

    for mode in FINETUNE_MODES:  # every registered mode and merge method is clean
        assert not {s.name for s in mode.settings} & LOOP_FIELDS, mode.name
    assert all("alphas" not in {s.name for s in m.settings} for m in MERGE_METHODS)
    clash = dataclasses.replace(FINETUNE_MODES.get("lora"), settings=(Setting("lr", float, 1e-3, "a rate of its own"),))
    monkeypatch.setattr(FINETUNE_MODES, "_items", {**FINETUNE_MODES._items, "lora": clash})
    with pytest.raises(TaskvecError, match="declares setting 'lr', a name the training loop uses"):
        TrainConfig.for_mode("lora")
    with pytest.raises(TaskvecError, match="declares setting 'lr'"):
        load_config(_write(tmp_path, '[train]\nmodes = ["lora"]\n'))
    ties = MERGE_METHODS.get("ties")
    monkeypatch.setattr(
        MERGE_METHODS,
        "_items",
        {
            **MERGE_METHODS._items,
            "ties": dataclasses.replace(
                ties,
                settings=(
                    *ties.settings,
                    Setting("alphas", float, 0.5, "clashes with the α grid's key"),
                ),
            ),
        },
    )
    with pytest.raises(TaskvecError, match="declares a setting named 'alphas'"):
        load_config(_write(tmp_path, '[merge]\nmethods = ["ties"]\n'))


@pytest.mark.parametrize(
    "text, message",
    [
        ('taskz = ["a", "b"]', "config c.toml: unknown key 'taskz'"),
        ("[train.nonlinear]\nstep = 3", "unknown key 'train.nonlinear.step'"),
        ("[train.sparse]\nlr = 1e-3", "unknown key 'train.sparse'; allowed: modes, epochs, steps, nonlinear, linear, subset"),
        ("[train.lora]\nrank = 4", "[train.lora] configures a mode that train.modes leaves out (nonlinear, linear)"),
        ('[merge]\nmethods = ["ties", "magic"]', "unknown merge method 'magic'; available: task_arithmetic, ties"),
        ("[merge]\nmethods = []", "merge.methods is empty"),
        ("[merge.ties]\nkk = [0.1]", "ties has no setting 'kk'; its settings: k"),
        ("[merge.ties]\nk = [0.1, 1.5]", "merge.ties.k must be in [0"),
        ('[merge.ties]\nk = "all"', "merge.ties.k must be a number"),
        ("[merge.ties]\nalphas = [0.5, nan]", "merge.ties.alphas.1 must be a finite number, got nan"),
        ('[merge]\nmethods = ["ties"]\n[merge.dare]\np = [0.5]', "[merge.dare] sets a grid for a method that merge.methods leaves out"),
        ("[merge.magic]\nk = 1", "unknown key 'merge.magic'"),
        ('[train.linear]\nlr = "fast"', "train.linear.lr: expected float"),
        ("[train.linear]\nlr = -1.0", "train.lr must be positive"),
        ('init = "imagenet"', "init: 'imagenet' is not one of"),
        ('tasks = ["mnist"]', "at least two tasks"),
        ("[data]\nval_fraction = 1.5", "val_fraction"),
        ("[negation]\nthreshold = 2.0", "threshold"),
        ('[head]\nkind = "mlp"', "head.kind"),
        ('tasks = "mnist"', "tasks: expected a list"),
        ("tasks = [", "not valid TOML"),
    ],
)
def test_bad_values_name_the_problem(tmp_path, text, message):
    import re

    with pytest.raises(TaskvecError, match=re.escape(message)):
        load_config(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(TaskvecError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_quick_shrinks_everything():
    from taskvec.config import with_analyses

    q = quick(RunConfig())
    assert q.train[NONLINEAR].steps < RunConfig().train[NONLINEAR].steps
    assert q.data.max_train <= 128 and q.eval.alpha_step > RunConfig().eval.alpha_step
    full, small = with_analyses(RunConfig()).analysis, quick(with_analyses(RunConfig())).analysis
    assert small.ntk and small.disentanglement and small.random_init  # still on, only smaller
    assert small.ntk_examples < full.ntk_examples and small.disentanglement_examples < full.disentanglement_examples
    assert small.disentanglement_step > full.disentanglement_step
    assert not quick(RunConfig()).analysis.ntk  # and still off when off


def test_bundled_configs_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.toml"))
    assert configs, "no configs shipped"
    for path in configs:
        load_config(path)


def test_analyses_are_opt_in():
    from taskvec.config import with_analyses

    a = RunConfig().analysis
    assert not (a.disentanglement or a.ntk or a.random_init)
    b = with_analyses(RunConfig()).analysis
    assert b.disentanglement and b.ntk and b.random_init


def test_merge_table_sets_methods_and_grids(tmp_path):
    cfg = load_config(_write(tmp_path, '[merge]\nmethods = ["task_arithmetic", "ties"]\n[merge.ties]\nk = [0.1, 0.3]\nalphas = [1, 2]\n'))
    ta, ties = MERGE_METHODS.get("task_arithmetic"), MERGE_METHODS.get("ties")
    assert cfg.merge.methods == ("task_arithmetic", "ties")
    assert cfg.merge.settings_grid(ties) == [{"k": 0.1}, {"k": 0.3}]
    assert cfg.merge.alphas(ties, [0.0, 1.0]) == [1.0, 2.0]
    assert cfg.merge.alphas(ta, [0.0, 0.5]) == (list(ta.alphas) or [0.0, 0.5])  # the method's own grid, else the run's
    assert cfg.merge.settings_grid(ta) == [{}]
    assert from_data(RunConfig, to_data(cfg)) == cfg
    assert RunConfig().merge.methods == tuple(MERGE_METHODS.names())  # every registered method by default
    q = quick(cfg).merge  # quick: each setting at the config's first value (else its default), a coarse α grid
    assert q.settings_grid(ties) == [{"k": 0.1}] and len(q.alphas(ties, [])) <= 6
    plain = quick(RunConfig()).merge
    assert plain.settings_grid(ties) == [{s.name: s.default for s in ties.settings}]


def test_the_built_in_default_is_configs_image_toml():
    """`taskvec run` without --config runs the shipped default benchmark, tuned rates included."""
    from pathlib import Path

    from taskvec.models.registry import backbone_kind

    shipped = to_data(load_config(Path(__file__).parent.parent / "configs" / "image.toml"))
    default = to_data(load_config(None))
    assert default["head"]["kind"] == "auto"
    default["head"]["kind"] = backbone_kind("effnet-lite0").default_head.name  # what "auto" resolves to for effnet-lite0
    ignore = {"name", "tune"}  # the file names itself and carries the grid its rates were tuned on
    assert {k: v for k, v in shipped.items() if k not in ignore} == {k: v for k, v in default.items() if k not in ignore}
