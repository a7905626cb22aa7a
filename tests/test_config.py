import pytest

from taskvec.config import RunConfig, load_config, quick
from taskvec.errors import TaskvecError


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_default_and_partial_mode_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, 'tasks = ["mnist", "ising"]\n[train.linear]\nlr = 1e-3\nsteps = 10\nwarmup_steps = 1\n'))
    assert cfg.tasks == ["mnist", "ising"]
    assert cfg.train.linear.lr == 1e-3 and cfg.train.linear.steps == 10
    assert cfg.train.nonlinear == RunConfig().train.nonlinear  # untouched mode keeps its defaults
    assert load_config(None) == RunConfig()


@pytest.mark.parametrize("text, message", [
    ('taskz = ["a", "b"]', "unknown config key 'taskz'"),
    ('[train.nonlinear]\nstep = 3', "unknown config key 'train.nonlinear.step'"),
    ('[train.linear]\nlr = "fast"', "train.linear.lr: expected float"),
    ('[train.linear]\nlr = -1.0', "train.lr must be positive"),
    ('init = "imagenet"', "init: 'imagenet' is not one of"),
    ('tasks = ["mnist"]', "at least two tasks"),
    ('[data]\nval_fraction = 1.5', "val_fraction"),
    ('[negation]\nthreshold = 2.0', "threshold"),
    ('[head]\nkind = "mlp"', "head.kind"),
    ('tasks = "mnist"', "tasks: expected a list"),
    ('tasks = [', "not valid TOML"),
])
def test_bad_values_name_the_problem(tmp_path, text, message):
    with pytest.raises(TaskvecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(TaskvecError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_quick_shrinks_everything():
    from taskvec.config import with_analyses

    q = quick(RunConfig())
    assert q.train.nonlinear.steps < RunConfig().train.nonlinear.steps
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
