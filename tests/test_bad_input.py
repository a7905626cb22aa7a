"""Malformed input through the command line, as a new user would type it: every case ends with
exit status 2, one line on stderr naming the problem, no traceback, and earlier files untouched."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from test_cli import CONFIG as CLI_CONFIG

from taskvec.cli import main
from taskvec.io import load_tensors, save_tensors
from taskvec.models import build_backbone
from taskvec.pipeline.rundir import RunDir
from taskvec.task_vector import TaskVector, base_identity

# The CLI tests' tiny benchmark, without analyses, task addition the only merge method.
CONFIG = CLI_CONFIG.split("[analysis]")[0] + '[merge]\nmethods = ["task_arithmetic"]\n'


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A config, two valid tiny-cnn task vectors and a set of broken files derived from them."""
    root = tmp_path_factory.mktemp("bad")
    (root / "tiny.toml").write_text(CONFIG)
    base = build_backbone("tiny-cnn")
    torch.manual_seed(0)
    params = {n: 0.01 * torch.randn_like(p) for n, p in base.named_parameters()}
    for task in ("toy-squares", "toy-stripes"):
        TaskVector(params, "nonlinear", base_identity(base), (task,)).save(root / f"{task}.safetensors")
    good = root / "toy-squares.safetensors"
    tensors, meta = load_tensors(good)
    name = next(iter(tensors))

    def write(path, tensors, meta):
        save_tensors(root / path, tensors, meta)

    write("nan.safetensors", {**tensors, name: tensors[name].clone().fill_(math.nan)}, meta)
    write("inf.safetensors", {**tensors, name: tensors[name].clone().fill_(math.inf)}, meta)
    write("missing.safetensors", {k: v for k, v in tensors.items() if k != name}, meta)
    write("extra.safetensors", {**tensors, "surplus.weight": torch.zeros(3)}, meta)
    write("shape.safetensors", {**tensors, name: torch.zeros(2, 2)}, meta)
    write("mode.safetensors", tensors, {**meta, "mode": "sideways"})
    write("base.safetensors", tensors, {**meta, "base": {**meta["base"], "parameters": 1}})
    save_file({"w": torch.zeros(2)}, str(root / "foreign.safetensors"))
    (root / "empty.safetensors").write_bytes(b"")
    (root / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    (root / "truncated.safetensors").write_bytes(good.read_bytes()[:-40])
    (root / "existing.safetensors").write_bytes(b"an earlier result")
    (root / "a-directory").mkdir()
    (root / "bad-option.toml").write_text(CONFIG.replace("image_size = 8", "image_size = 8\ncolour = true"))
    (root / "latin1.toml").write_bytes('name = "caf\xe9"'.encode("latin-1"))
    (root / "a-run").mkdir()
    (root / "a-run" / "results.json").mkdir()
    (root / "nan.toml").write_text(CONFIG.replace("alpha_step = 0.25", "alpha_step = nan"))
    return root


CASES = [
    # (arguments, with {d} for the files' folder; what stderr must name)
    ("add {d}/toy-squares.safetensors {d}/toy-stripes.safetensors --alpha nan --out {d}/o.safetensors", "--alpha must be a finite number"),
    ("add {d}/toy-squares.safetensors --alpha inf --out {d}/o.safetensors", "--alpha must be a finite number"),
    ("add {d}/toy-squares.safetensors --alpha abc --out {d}/o.safetensors", "Invalid value for '--alpha'"),
    (
        "merge {d}/toy-squares.safetensors {d}/toy-stripes.safetensors --method ties --alpha -inf --out {d}/o.safetensors",
        "--alpha must be a finite number",
    ),
    ("evaluate {d}/toy-squares.safetensors --alpha inf --config {d}/tiny.toml", "--alpha must be a finite number"),
    ("evaluate {d}/nan.safetensors --config {d}/tiny.toml", "holds non-finite values"),
    ("add {d}/inf.safetensors {d}/toy-stripes.safetensors --out {d}/o.safetensors", "holds non-finite values"),
    ("evaluate {d}/missing.safetensors --config {d}/tiny.toml", "different parameters"),
    ("evaluate {d}/extra.safetensors --config {d}/tiny.toml", "different parameters"),
    ("evaluate {d}/shape.safetensors --config {d}/tiny.toml", "shape"),
    ("add {d}/toy-squares.safetensors {d}/shape.safetensors --out {d}/o.safetensors", "shape"),
    ("info {d}/mode.safetensors", "unknown fine-tuning mode 'sideways'"),
    ("evaluate {d}/base.safetensors --config {d}/tiny.toml", "was made from base"),
    ("info {d}/foreign.safetensors", "is not a taskvec task vector"),
    ("info {d}/empty.safetensors", "corrupt or unreadable"),
    ("info {d}/garbage.safetensors", "corrupt or unreadable"),
    ("info {d}/truncated.safetensors", "corrupt or unreadable"),
    ("info {d}/absent.safetensors", "file not found"),
    ("add {d}/toy-squares.safetensors --out {d}/existing.safetensors", "exists; pass --force"),
    ("negate {d}/toy-squares.safetensors --out {d}/existing.safetensors", "exists; pass --force"),
    ("merge {d}/toy-squares.safetensors {d}/toy-stripes.safetensors --method ties --out {d}/existing.safetensors", "exists; pass --force"),
    ("finetune --task toy-squares --config {d}/tiny.toml --out {d}/existing.safetensors", "exists; pass --force"),
    ("add {d}/toy-squares.safetensors --out {d}/a-directory", "is a directory"),
    ("run --config {d}/bad-option.toml --out {d}/run --dry-run", "unknown key 'backbone_options.colour'"),
    ("run --config {d}/nan.toml --out {d}/run --dry-run", "eval.alpha_step must be a finite number, got nan"),
    ("run --config {d}/absent.toml --out {d}/run", "config file not found"),
    ("report {d}/no-such-run", "no results.json"),
    ("report {d}/a-run", "cannot read {d}/a-run/results.json: Is a directory"),
    ("run --config {d}/a-directory --out {d}/run --dry-run", "cannot read config file {d}/a-directory: Is a directory"),
    ("run --config {d}/latin1.toml --out {d}/run --dry-run", "is not valid TOML"),
    ("run --shard 3/2 --out {d}/run --dry-run", "--shard"),
    ("run --seeds 0 --out {d}/run --dry-run", "--seeds must be a positive number"),
    ("run --seeds x --out {d}/run --dry-run", "Invalid value for '--seeds'"),
    ("evaluate --task toy-nothing --config {d}/tiny.toml", "unknown task 'toy-nothing'"),
    ("bogus", "No such command 'bogus'"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[c[0].split()[0] + ":" + c[1][:30] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(files, args, message, capsys):
    before = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exit_info:
        main(args.format(d=files).split())
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("taskvec: error: "), err
    assert message.format(d=files) in lines[0] and "Traceback" not in err
    after = {p.name: p.read_bytes() for p in files.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing destroyed
    assert not (files / "o.safetensors").exists()


def test_force_overwrites_an_existing_vector(files, tmp_path):
    out = tmp_path / "sum.safetensors"
    out.write_bytes(b"old")
    main(["add", str(files / "toy-squares.safetensors"), "--out", str(out), "--force"])
    assert TaskVector.load(out).tasks == ("toy-squares",)


def test_a_second_run_on_a_held_directory_stops_at_once_naming_the_first(files, tmp_path, capsys):
    out = RunDir(tmp_path / "run")
    with out.locked():
        holder = (out.root / ".lock").read_text()
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--config", str(files / "tiny.toml"), "--out", str(out.root), "--no-progress"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "is in use by another taskvec run" in err and holder in err
        assert not (out.root / "config.json").exists()  # it did nothing
        with pytest.raises(SystemExit):  # nor may a fine-tuning shard join a full run
            main(["run", "--config", str(files / "tiny.toml"), "--out", str(out.root), "--shard", "0/2", "--no-progress"])
    with out.locked(shared=True), out.locked(shared=True):  # shards share the directory
        pass


def test_a_run_removes_the_half_written_files_a_killed_run_left(files, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    leftovers = [out / "figures" / ".single_task.png.x1y2.tmp", out / ".results.json.abc.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    keep = out / "figures" / "notes.txt"
    keep.write_text("mine")
    main(["run", "--config", str(files / "tiny.toml"), "--out", str(out), "--no-progress"])
    assert not any(p.exists() for p in leftovers) and keep.read_text() == "mine"
    assert json.loads((out / "results.json").read_text())["format"]
