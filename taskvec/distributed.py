"""Several GPUs: DistributedDataParallel fine-tuning under torchrun, and sharding of the
fine-tunes of a run over independent processes.

Two ways to use N GPUs (docs/paper.md):
- `torchrun --nproc-per-node N -m taskvec run ...`: every fine-tune uses all N GPUs at the
  same global batch (train.finetune splits each batch over the ranks). Call
  `init_from_env()` first; rank 0 writes the files (`is_main()`, `main_first()`).
- N independent processes, one per GPU, each running a shard of the (task, mode)
  fine-tunes (`shard_units`), then one process for the evaluation stages, which reuse the
  saved task vectors.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Sequence, TypeVar

import torch

from .errors import TaskvecError

T = TypeVar("T")


def _dist():
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed() and world_size() > 1:
        _dist().barrier()


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group that torchrun (or MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE)
    describes; a no-op returning False for a single process. NCCL when CUDA is there, else gloo."""
    if is_distributed():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    _dist().init_process_group(backend=backend)
    return True


def cleanup() -> None:
    if is_distributed():
        _dist().destroy_process_group()


def device_for(device: str) -> str:
    """The device of this process: 'cuda' becomes 'cuda:<local rank>' under torchrun."""
    if device == "cuda" and is_distributed():
        return f"cuda:{local_rank()}"
    return device


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a cache); the others run it after, reusing it."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise TaskvecError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count <= 0 or not 0 <= index < count:
        raise TaskvecError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_units(units: Sequence[T], index: int, count: int) -> list[T]:
    """Every count-th unit starting at index: shards are disjoint and cover all units."""
    return list(units[index::count])
