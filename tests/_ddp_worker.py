"""Worker of the DDP test: one process of a 2-process gloo group on the CPU.

Spawned processes do not run conftest as a plugin; importing it registers the tiny-cnn
backbone and the toy tasks here too.
"""

from __future__ import annotations

import os

import conftest  # noqa: F401  (registers tiny-cnn and the toy tasks)
import torch

from taskvec.config import TrainConfig
from taskvec.train import finetune

CFG = TrainConfig(steps=6, batch_size=16, lr=1e-2, warmup_steps=2, checkpoint_every=3)


setup = conftest.tiny_training_setup


def run(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from taskvec.distributed import init_from_env, is_main

    assert init_from_env(backend="gloo") and is_main() == (rank == 0)
    try:
        model, head, inputs, labels = setup()
        for mode in ("nonlinear", "linear"):
            vector = finetune(
                model,
                head,
                inputs,
                labels,
                mode=mode,
                cfg=CFG,
                task="toy-squares",
                progress=False,
                checkpoint=os.path.join(out, f"{mode}.ckpt.safetensors"),
            )
            vector.save(os.path.join(out, f"{mode}.rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
