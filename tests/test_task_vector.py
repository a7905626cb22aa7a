import pytest
import torch

from taskvec.errors import TaskvecError
from taskvec.linearization import LinearizedBackbone
from taskvec.models import build_backbone
from taskvec.task_vector import TaskVector, base_identity, sum_vectors


def _vector(model, seed, mode="nonlinear", task="t"):
    g = torch.Generator().manual_seed(seed)
    finetuned = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    pretrained = {n: p.detach() for n, p in model.named_parameters()}
    return TaskVector.from_weights(pretrained, finetuned, mode=mode, base=base_identity(model), task=task)


def test_arithmetic(tiny):
    a, b, c = (_vector(tiny, s, task=t) for s, t in [(1, "a"), (2, "b"), (3, "c")])
    name = "conv.weight"
    torch.testing.assert_close((a + b).vector[name], a.vector[name] + b.vector[name])
    torch.testing.assert_close((a - b).vector[name], a.vector[name] - b.vector[name])
    torch.testing.assert_close((-a).vector[name], -a.vector[name])
    torch.testing.assert_close((0.5 * a).vector[name], 0.5 * a.vector[name])
    torch.testing.assert_close((a * 2).vector[name], 2 * a.vector[name])
    total = sum([a, b, c])
    torch.testing.assert_close(total.vector[name], a.vector[name] + b.vector[name] + c.vector[name])
    assert total.tasks == ("a", "b", "c")
    torch.testing.assert_close(sum_vectors([a, b, c]).vector[name], total.vector[name])


def test_incompatible_vectors_are_refused(tiny):
    a = _vector(tiny, 1)
    other_base = build_backbone("tiny-cnn", init="random")
    with pytest.raises(TaskvecError, match="different base"):
        a + _vector(other_base, 2)
    with pytest.raises(TaskvecError, match="linear"):
        a + _vector(tiny, 2, mode="linear")
    partial = _vector(tiny, 2)
    del partial.vector["fc.bias"]
    with pytest.raises(TaskvecError, match="different parameters"):
        a + partial
    with pytest.raises(TaskvecError, match="another|not from this model"):
        a.apply_to(other_base)


def test_apply_gives_model_of_the_right_kind(tiny):
    nl, lin = _vector(tiny, 1), _vector(tiny, 2, mode="linear")
    edited = nl.apply_to(tiny, alpha=0.5)
    assert not isinstance(edited, LinearizedBackbone)
    torch.testing.assert_close(edited.conv.weight, tiny.conv.weight + 0.5 * nl.vector["conv.weight"])
    lin_model = lin.apply_to(tiny)
    assert isinstance(lin_model, LinearizedBackbone)
    torch.testing.assert_close(lin_model.delta()["fc.weight"], lin.vector["fc.weight"])
    posthoc = nl.apply_to(tiny, linearized=True)
    assert isinstance(posthoc, LinearizedBackbone)
    torch.testing.assert_close(posthoc.params0["conv.weight"], tiny.conv.weight.detach())
    with pytest.raises(TaskvecError, match="tangent space"):
        lin.apply_to(tiny, linearized=False)
    # The base is untouched.
    assert base_identity(tiny) == nl.base


def test_save_load_roundtrip_with_metadata(tiny, tmp_path):
    v = _vector(tiny, 1, mode="linear", task="mnist")
    v.info["steps"] = 7
    path = tmp_path / "v.safetensors"
    v.save(path)
    loaded = TaskVector.load(path)
    assert (loaded.mode.name, loaded.tasks, loaded.base, loaded.info) == ("linear", ("mnist",), v.base, {"steps": 7})
    for n in v.vector:
        assert torch.equal(loaded.vector[n], v.vector[n])


def test_corrupt_or_missing_file_is_a_clear_error(tiny, tmp_path):
    path = tmp_path / "v.safetensors"
    _vector(tiny, 1).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TaskvecError, match="corrupt"):
        TaskVector.load(path)
    with pytest.raises(TaskvecError, match="not found"):
        TaskVector.load(tmp_path / "missing.safetensors")


def test_failed_save_keeps_previous_file(tiny, tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"
    v = _vector(tiny, 1)
    v.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        _vector(tiny, 2).save(path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_identity_follows_in_place_changes_of_the_base(tiny):
    before = base_identity(tiny)
    assert base_identity(tiny) == before
    with torch.no_grad():
        tiny.fc.bias.add_(1.0)
    assert base_identity(tiny)["fingerprint"] != before["fingerprint"]
