"""`taskvec run` under torchrun with 2 gloo processes: every evaluation stage shares its examples
between the ranks and writes the single process's results exactly; a failure on one rank ends
the whole run with its error and leaves the earlier results as they were."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port

HERE = Path(__file__).parent
CONFIG = """
name = "tiny-sharded"
backbone = "tiny-cnn"
tasks = ["toy-squares", "toy-stripes", "toy-noise"]
threads = 1
[backbone_options]
image_size = 8
[data]
max_train = 64
max_val = 45
max_test = 38
[train.nonlinear]
steps = 6
batch_size = 16
lr = 1e-2
warmup_steps = 1
[train.linear]
steps = 6
batch_size = 16
lr = 1e-2
warmup_steps = 1
[eval]
alpha_step = 0.5
chunk = 8
[merge]
methods = ["task_arithmetic", "ties"]
[merge.ties]
k = [0.2, 0.5]
[analysis]
disentanglement = true
ntk = true
random_init = true
disentanglement_step = 1.5
disentanglement_examples = 19
ntk_examples = 12
ntk_eigenfunctions = 6
"""
EVALUATIONS = ("single_task", "linearity", "merge/task_arithmetic", "merge/ties", "negation", "disentanglement", "ntk")


def _taskvec(args: list[str], ranks: int = 1, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(ranks),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ]
        if ranks > 1
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, str(HERE / "_run_cli.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _without_seconds(data):
    if isinstance(data, dict):
        return {k: _without_seconds(v) for k, v in data.items() if k not in ("seconds", "merge_seconds")}
    if isinstance(data, list):
        return [_without_seconds(v) for v in data]
    return data


def _evaluations(run: Path) -> dict:
    """Every evaluation stage's result (the run's and its random-init run's), without timings."""
    files = [run / "stages" / f"{key}.json" for key in EVALUATIONS] + [
        run / "random_init" / "stages" / f"{key}.json" for key in ("single_task", "merge/task_arithmetic", "negation")
    ]
    return {str(f.relative_to(run)): _without_seconds(json.loads(f.read_text())["result"]) for f in files}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded-run")
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    out = root / "single"
    done = _taskvec(["run", "--config", str(config), "--out", str(out), "--no-progress"])
    assert done.returncode == 0, done.stderr
    return config, out


def _copy_without_evaluations(out: Path, target: Path) -> Path:
    """The run with its fine-tuned vectors and heads, its evaluation stages to do again."""
    shutil.copytree(out, target)
    for key in EVALUATIONS + ("random_init", "report"):
        (target / "stages" / f"{key}.json").unlink()
    for key in ("single_task", "linearity", "merge/task_arithmetic", "negation", "report"):
        (target / "random_init" / "stages" / f"{key}.json").unlink(missing_ok=True)
    for run in (target, target / "random_init"):
        (run / "results.json").unlink()
        (run / "report.md").unlink()
    return target


def test_two_ranks_write_the_single_process_results(single_run, tmp_path):
    config, out = single_run
    copy = _copy_without_evaluations(out, tmp_path / "sharded")
    done = _taskvec(["run", "--config", str(config), "--out", str(copy), "--no-progress"], ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    for key in EVALUATIONS:
        assert f"[done] {key}" in done.stderr  # recomputed, by both ranks together
    # the run's and the random-init run's vectors were kept (its stages are included under random_init/)
    assert done.stderr.count("[skip] finetune/") == 6 and done.stderr.count("[skip] random_init/finetune/") == 6
    assert _evaluations(copy) == _evaluations(out)
    single, sharded = (json.loads((d / "results.json").read_text()) for d in (out, copy))
    assert _without_seconds({k: v for k, v in sharded.items() if k != "timing"}) == _without_seconds(
        {k: v for k, v in single.items() if k != "timing"}
    )
    assert not list(copy.rglob("*.tmp"))


def test_a_failure_on_one_rank_ends_every_rank_with_the_error(single_run, tmp_path):
    config, out = single_run
    copy = _copy_without_evaluations(out, tmp_path / "failing")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    started = time.monotonic()
    done = _taskvec(
        ["run", "--config", str(config), "--out", str(copy), "--no-progress"],
        ranks=2,
        env={"TASKVEC_TEST_FAIL": "1:negation_stage"},
        timeout=240,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 200  # nobody waits for a collective that never comes
    assert "injected failure in negation_stage on rank 1" in done.stderr
    assert "taskvec: error (rank 1 of 2): injected failure" in done.stderr  # one line naming the rank
    assert "injected failure" in done.stderr.split("Root Cause")[-1]  # and torchrun's summary names it too
    # the stages before were written by rank 0; the failing stage and everything after were not
    assert (copy / "stages" / "merge" / "ties.json").exists()
    assert not (copy / "stages" / "negation.json").exists() and not (copy / "results.json").exists()
    for path, data in before.items():
        assert path.read_bytes() == data, path  # nothing that was there was touched or half-written


TUNE_CONFIG = """
name = "tiny-tune"
backbone = "tiny-cnn"
tasks = ["toy-squares", "toy-stripes"]
threads = 1
[backbone_options]
image_size = 8
[data]
max_train = 48
max_val = 30
max_test = 30
[train]
modes = ["nonlinear"]
[train.nonlinear]
steps = 4
batch_size = 16
lr = 1e-2
warmup_steps = 1
[eval]
alpha_step = 0.5
chunk = 8
[merge]
methods = ["task_arithmetic"]
[tune.lr]
nonlinear = [3e-3, 1e-2]
"""


def test_tune_under_torchrun_shares_the_work_and_writes_once(tmp_path):
    config = tmp_path / "tune.toml"
    config.write_text(TUNE_CONFIG)
    done = _taskvec(["tune", "--config", str(config), "--out", str(tmp_path / "tune"), "--no-progress"], ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]  # one process group: no second run refused by the lock
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("by single-task") == 1  # rank 0 alone reports
    assert done.stderr.count("[done] nonlinear/lr0.01-4/merge/task_arithmetic") == 1
    result = json.loads((tmp_path / "tune" / "tune.json").read_text())["result"]
    assert [p["lr"] for p in result["modes"]["nonlinear"]["points"]] == [3e-3, 1e-2]


def test_evaluate_disentanglement_and_ntk_commands_share_the_work_with_the_same_results(single_run, tmp_path):
    config, out = single_run
    vectors = [str(out / "vectors" / f"{t}.linear.safetensors") for t in ("toy-squares", "toy-stripes")]
    commands = {
        "evaluate": ["evaluate", vectors[0], "--alpha", "0.5", "--split", "val"],
        "disentanglement": ["disentanglement", *vectors, "--examples", "19", "--alpha-step", "1.5", "--no-progress"],
        "ntk": ["ntk", "--task", "toy-squares", "--control", "toy-stripes", "--examples", "12", "--eigenfunctions", "6", "--no-progress"],
    }
    for name, args in commands.items():
        outputs = {}
        for ranks in (1, 2):
            target = tmp_path / f"{name}-{ranks}"
            done = _taskvec([*args, "--config", str(config), *([] if name == "evaluate" else ["--out", str(target)])], ranks=ranks)
            assert done.returncode == 0, done.stderr[-3000:]
            if name == "evaluate":
                outputs[ranks] = json.loads(done.stdout)  # printed once, by rank 0
            else:
                outputs[ranks] = _without_seconds(json.loads((target / f"{name}.json").read_text()))
                assert done.stdout.count("wrote ") == 1  # one process group: rank 0 alone writes and reports
        assert outputs[2] == outputs[1], name


def test_finetune_command_under_torchrun_trains_once_over_both_ranks(single_run, tmp_path):
    from taskvec.task_vector import TaskVector

    config, _ = single_run
    vectors = {}
    for ranks in (1, 2):
        target = tmp_path / f"squares-{ranks}.safetensors"
        done = _taskvec(
            ["finetune", "--task", "toy-squares", "--mode", "linear", "--out", str(target), "--config", str(config), "--no-progress"],
            ranks=ranks,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("wrote ") == 1
        vectors[ranks] = TaskVector.load(target)
    assert vectors[2].info["processes"] == 2 and vectors[1].info["processes"] == 1  # DistributedDataParallel, same global batch
    for name, tensor in vectors[1].vector.items():
        torch.testing.assert_close(vectors[2].vector[name], tensor, rtol=1e-4, atol=1e-6)
