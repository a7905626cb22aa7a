"""DistributedDataParallel fine-tuning: 2 gloo processes on the CPU give the single-process
task vector; gradient accumulation and sharding helpers."""

import dataclasses

import _ddp_worker
import pytest
import torch
from conftest import free_port

from taskvec.distributed import parse_shard, shard_units
from taskvec.errors import TaskvecError
from taskvec.task_vector import TaskVector
from taskvec.train import finetune


def _assert_same_vector(a: TaskVector, b: TaskVector, **tol) -> None:
    assert set(a.vector) == set(b.vector)
    for name in a.vector:
        torch.testing.assert_close(a.vector[name], b.vector[name], **tol)


def test_two_process_ddp_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    model, head, inputs, labels = _ddp_worker.setup()
    single = {
        mode: finetune(model, head, inputs, labels, mode=mode, cfg=_ddp_worker.CFG, task="toy-squares", progress=False)
        for mode in ("nonlinear", "linear")
    }
    mp.spawn(_ddp_worker.run, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for mode in ("nonlinear", "linear"):
        ranks = [TaskVector.load(tmp_path / f"{mode}.rank{r}.safetensors") for r in range(2)]
        _assert_same_vector(ranks[0], ranks[1], rtol=0, atol=0)  # every rank returns the same vector
        assert ranks[0].info["processes"] == 2
        _assert_same_vector(ranks[0], single[mode], rtol=1e-4, atol=1e-6)
        assert single[mode].norm() > 0
        assert (tmp_path / f"{mode}.ckpt.safetensors").exists()  # written by rank 0


@pytest.mark.parametrize("mode", ["nonlinear", "linear"])
def test_gradient_accumulation_gives_the_same_update(mode):
    model, head, inputs, labels = _ddp_worker.setup()
    cfg = dataclasses.replace(_ddp_worker.CFG, steps=4, checkpoint_every=50)
    whole = finetune(model, head, inputs, labels, mode=mode, cfg=cfg, progress=False)
    split = finetune(model, head, inputs, labels, mode=mode, cfg=dataclasses.replace(cfg, grad_accumulation=4), progress=False)
    _assert_same_vector(whole, split, rtol=1e-4, atol=1e-6)


def test_batch_must_split_evenly_and_bf16_needs_cuda():
    model, head, inputs, labels = _ddp_worker.setup()
    with pytest.raises(TaskvecError, match="multiple of processes × grad_accumulation"):
        finetune(
            model, head, inputs, labels, mode="nonlinear", cfg=dataclasses.replace(_ddp_worker.CFG, grad_accumulation=3), progress=False
        )
    with pytest.raises(TaskvecError, match="needs a CUDA device"):
        finetune(model, head, inputs, labels, mode="nonlinear", cfg=dataclasses.replace(_ddp_worker.CFG, precision="bf16"), progress=False)


def test_shards_are_disjoint_and_cover_everything():
    units = [(t, m) for t in "abcde" for m in ("nonlinear", "linear")]
    shards = [shard_units(units, i, 3) for i in range(3)]
    assert sorted(u for s in shards for u in s) == sorted(units)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(TaskvecError):
            parse_shard(bad)
