"""The commands that need no model start without importing torch (issue 11: `taskvec --help`,
`list` and `info` in about a second), and deferring the imports changes no answer."""

import json
import subprocess
import sys

import pytest
import torch

from taskvec.task_vector import TaskVector, base_identity, summarize

RUN = """
import json, sys
from taskvec.cli import main
sys.argv = ["taskvec", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
heavy = sorted(m for m in ("torch", "open_clip", "transformers") if m in sys.modules)
print(json.dumps({"code": code, "imported": heavy}), file=sys.stderr)
"""


def _cli_in_fresh_process(*argv: str) -> tuple[str, dict]:
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(argv)], capture_output=True, text=True, timeout=120)
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def _vector(model, seed=1, dtype=torch.float32) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    pretrained = {n: p.detach() for n, p in model.named_parameters()}
    finetuned = {n: p + 0.01 * torch.randn(p.shape, generator=g) for n, p in pretrained.items()}
    vector = TaskVector.from_weights(pretrained, finetuned, mode="linear", base=base_identity(model), task="toy-squares")
    return TaskVector({n: t.to(dtype) for n, t in vector.vector.items()}, vector.mode, vector.base, vector.tasks, {"steps": 3})


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["run", "--help"], ["finetune", "--help"]])
def test_commands_without_a_model_do_not_import_torch(argv):
    out, status = _cli_in_fresh_process(*argv)
    assert status == {"code": 0, "imported": []}, status
    assert out.strip()


def test_info_does_not_import_torch_and_agrees_with_load(tiny, tmp_path):
    path = tmp_path / "v.safetensors"
    vector = _vector(tiny)
    vector.save(path)
    out, status = _cli_in_fresh_process("info", str(path))
    assert status == {"code": 0, "imported": []}, status
    shown = json.loads(out)
    loaded = TaskVector.load(path)
    assert shown["mode"] == loaded.mode.name and shown["tasks"] == list(loaded.tasks) and shown["base"] == loaded.base
    assert shown["info"] == loaded.info and shown["parameters"] == len(loaded.vector)
    assert shown["norm"] == pytest.approx(loaded.norm(), rel=1e-9)


def test_info_reads_bfloat16_vectors_through_torch(tiny, tmp_path):
    path = tmp_path / "v.safetensors"
    _vector(tiny, dtype=torch.bfloat16).save(path)
    summary = summarize(path)
    assert summary.parameters == len(TaskVector.load(path).vector)
    assert summary.norm == pytest.approx(TaskVector.load(path).norm(), rel=1e-9)


def test_summarize_refuses_what_load_refuses(tiny, tmp_path):
    from taskvec.errors import TaskvecError

    vector = _vector(tiny)
    name = next(iter(vector.vector))
    vector.vector[name][0] = float("nan")
    vector.save(tmp_path / "nan.safetensors")
    for reader in (summarize, TaskVector.load):
        with pytest.raises(TaskvecError, match=f"non-finite values .* in '{name}'"):
            reader(tmp_path / "nan.safetensors")


def test_import_taskvec_is_light_and_keeps_its_names():
    code = (
        "import sys, taskvec; light = 'torch' not in sys.modules; import taskvec.linearization; "
        "print(light, callable(taskvec.linearize), taskvec.TaskVector.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[:3] == ["True", "True", "TaskVector"], done.stderr
