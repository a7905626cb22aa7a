"""The report's merge table from typed results: labels from the registries, chosen settings, the
α-at-the-top-of-the-grid marker, and the grouped bar figure."""

from taskvec.config import RunConfig
from taskvec.kinds import LINEARIZED_FT, NONLINEAR_FT, POSTHOC, PRETRAINED
from taskvec.merging import TASK_ARITHMETIC, TIES
from taskvec.report import render_markdown, write_report
from taskvec.results import AlphaPoint, MergeResult, NegationResult, NegationTarget, RunResults, SearchPoint, SingleTask, TaskScore
from taskvec.typed import from_data

TASKS = ["a", "b"]


def _merge(alpha: float, accuracy: float, settings: dict, grid: list[float]) -> MergeResult:
    curve = [
        AlphaPoint(alpha=x, val_per_task={t: 0.5 for t in TASKS}, val_absolute=0.5, val_normalized=0.9 if x == alpha else 0.5) for x in grid
    ]
    return MergeResult(
        alpha=alpha,
        absolute=accuracy,
        normalized=accuracy / 0.9,
        per_task={t: TaskScore(accuracy, accuracy / 0.9) for t in TASKS},
        settings=settings,
        seconds=1.5,
        curve=curve,
        search=[SearchPoint(settings=settings, alpha=alpha, val_normalized=0.9, merge_seconds=0.1)],
    )


def _results() -> RunResults:
    methods = (NONLINEAR_FT, POSTHOC, LINEARIZED_FT)
    single = {m.name: {t: 0.9 for t in TASKS} for m in methods} | {PRETRAINED.name: {t: 0.6 for t in TASKS}}
    negation = {
        m.name: NegationResult(
            target=0.3,
            control=0.6,
            per_task={t: NegationTarget(alpha=0.5, control_task="b" if t == "a" else "a", target=0.3, control=0.6) for t in TASKS},
        )
        for m in (PRETRAINED, *methods)
    }
    return RunResults(
        config=from_data(
            RunConfig,
            {
                "name": "r",
                "backbone": "tiny-cnn",
                "backbone_options": {},
                "init": "pretrained",
                "head": {"kind": "prototype", "scale": 30.0},
                "data": {"seed": 0},
                "negation": {"threshold": 0.95},
                "train": {
                    "nonlinear": {"steps": 4, "lr": 0.01, "batch_size": 8, "warmup_steps": 1},
                    "linear": {"steps": 4, "lr": 0.01, "batch_size": 8, "warmup_steps": 1},
                },
            },
        ),
        tasks=TASKS,
        single_task=SingleTask(val=single, test=single),
        merge={
            TASK_ARITHMETIC.name: {m.name: _merge(0.5, 0.8, {}, [0.0, 0.5, 1.0]) for m in methods},
            TIES.name: {
                NONLINEAR_FT.name: _merge(2.5, 0.85, {"k": 0.1}, [0.8, 1.5, 2.5]),
                POSTHOC.name: _merge(0.8, 0.7, {"k": 0.2}, [0.8, 1.5, 2.5]),
                LINEARIZED_FT.name: _merge(1.5, 0.75, {"k": 0.3}, [0.8, 1.5, 2.5]),
            },
        },
        negation=negation,
    )


def test_merge_table_rows_settings_and_the_grid_edge_marker(tmp_path):
    text = render_markdown(_results())
    section = text.split("## Merge methods")[1].split("## Figures")[0]
    assert "| merge method | Non-linear FT | Post-hoc linearization | Linearized FT |" in section
    assert "| Task Arithmetic | 80.0 / 88.9 | 80.0 / 88.9 | 80.0 / 88.9 |" in section
    assert "| TIES | 85.0 / 94.4 | 70.0 / 77.8 | 75.0 / 83.3 |" in section
    assert "| Task Arithmetic | Non-linear FT | 0.50 | – | 1 | 1.5 |" in section
    assert "| TIES | Non-linear FT | 2.50 ↑ | k=0.1 | 1 | 1.5 |" in section  # α at the top of its grid is marked
    assert "| TIES | Linearized FT | 1.50 | k=0.3 | 1 | 1.5 |" in section
    assert "| TIES | Post-hoc linearization | 0.80 ↓ | k=0.2 | 1 | 1.5 |" in section  # at a bottom above 0
    results = _results()
    del results.merge[TIES.name][POSTHOC.name]
    assert "| TIES | 85.0 / 94.4 | – | 75.0 / 83.3 |" in render_markdown(results)  # a missing result: a dash, not a crash
    assert "| Linearized FT | 80.0 | 88.9 | 0.50 |" in text.split("## Table 1")[1]  # Table 1 is the TA merge
    write_report(_results(), tmp_path)
    assert (tmp_path / "figures" / "merge_methods.png").read_bytes()[:4] == b"\x89PNG"
