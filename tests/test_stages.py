"""The stage graph: the run and its dry run walk the same stages; stage files keep typed results,
settings and seconds; a changed setting redoes a stage; unreadable outputs are named."""

import json
from dataclasses import dataclass

import pytest

import taskvec.pipeline.graph as benchmark
from taskvec.config import RunConfig
from taskvec.errors import TaskvecError
from taskvec.pipeline.plan import format_plan
from taskvec.pipeline.stages import Graph, Outcome, Stage, State, execute
from taskvec.protocol import plan_run, run_pipeline
from taskvec.results import SingleTask
from taskvec.typed import from_data

TINY = {
    "name": "tiny",
    "backbone": "tiny-cnn",
    "tasks": ["toy-squares", "toy-stripes"],
    "backbone_options": {"image_size": 8},
    "data": {"max_train": 64, "max_val": 24, "max_test": 24},
    "train": {mode: {"steps": 4, "batch_size": 16, "lr": 1e-2, "warmup_steps": 1} for mode in ("nonlinear", "linear")},
    "eval": {"alpha_step": 0.5},
    "merge": {"methods": ["task_arithmetic"]},
}


@dataclass
class Mean:
    value: float


class Ctx:
    def __init__(self):
        self.outcome, self.lines = Outcome(), []

    def log(self, message):
        self.lines.append(message)


def test_stage_files_keep_typed_results_and_redo_on_changed_settings(tmp_path):
    calls = []

    def graph(step):
        g = Graph()
        g.add(
            Stage(
                "a", "first", [tmp_path / "a.json"], lambda ctx: calls.append("a") or Mean(1.5), settings={"step": step}, result_type=Mean
            )
        )
        g.add(
            Stage(
                "b",
                "second",
                [tmp_path / "b.json"],
                lambda ctx: calls.append("b") or Mean(ctx.outcome.results["a"].value * 2),
                result_type=Mean,
                after=("a",),
            )
        )
        return g

    first = execute(graph(1), Ctx())
    assert calls == ["a", "b"] and first.results["b"] == Mean(3.0) and first.computed == ["a", "b"]
    again = execute(graph(1), Ctx())
    assert calls == ["a", "b"] and again.results == {"a": Mean(1.5), "b": Mean(3.0)} and again.computed == []
    assert again.seconds["a"] is not None  # the seconds the stage took when it was computed
    ctx = Ctx()
    execute(graph(2), ctx)  # a's settings changed: a is redone, b is not (its own settings did not change)
    assert calls == ["a", "b", "a"] and "[redo] a: its settings changed" in ctx.lines
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["settings"] == {"step": 2} and saved["result"] == {"value": 1.5}
    (tmp_path / "b.json").write_text('{"stage": "b", "settings": null, "seconds": 1, "result": {"value": "x"}}')
    with pytest.raises(TaskvecError, match="corrupt stage file .*b.json"):
        execute(graph(2), Ctx())
    with pytest.raises(ValueError, match="after unknown stages"):
        Graph().add(Stage("c", "c", [], lambda ctx: None, after=("nope",)))


def test_a_stage_added_to_the_graph_appears_in_the_plan_and_the_run(tmp_path, monkeypatch):
    original = benchmark.build_graph
    computed = []

    def extended(cfg, run_dir):
        graph = original(cfg, run_dir)
        report = graph.stages.pop()  # keep the report last
        graph.add(
            Stage(
                "extra",
                "extra: mean single-task accuracy",
                [run_dir.stage("extra")],
                lambda ctx: computed.append(1) or Mean(sum(ctx.outcome.results["single_task"].test["linear"].values())),
                result_type=Mean,
                after=("single_task",),
            )
        )
        graph.add(report)
        return graph

    monkeypatch.setattr(benchmark, "build_graph", extended)
    cfg, out = from_data(RunConfig, TINY), tmp_path / "run"
    before = plan_run(cfg, out)
    assert "extra" in [s.key for s in before] and "extra: mean single-task accuracy" in format_plan(cfg, before)
    assert [s.state for s in before] == [State.TODO] * len(before)
    run_pipeline(cfg, out, log=lambda m: None, progress=False)
    assert computed == [1] and (out / "stages" / "extra.json").exists()
    single: SingleTask = SingleTask(**{k: v for k, v in json.loads((out / "stages" / "single_task.json").read_text())["result"].items()})
    assert json.loads((out / "stages" / "extra.json").read_text())["result"]["value"] == pytest.approx(sum(single.test["linear"].values()))
    after = plan_run(cfg, out)
    assert [s.key for s in after] == [s.key for s in before] and all(s.done for s in after)
    run_pipeline(cfg, out, log=lambda m: None, progress=False)
    assert computed == [1]  # done: skipped by the run as the plan said
