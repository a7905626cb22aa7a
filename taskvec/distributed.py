"""Several GPUs: DistributedDataParallel fine-tuning and sharded evaluation under torchrun, and
sharding of the fine-tunes of a run over independent processes.

Two ways to use N GPUs (docs/paper.md):
- `torchrun --nproc-per-node N -m taskvec run ...`: every fine-tune uses all N GPUs at the
  same global batch (train.finetune splits each batch over the ranks), and every evaluation
  splits its examples over the ranks (`Ranks`: each rank takes a contiguous run of whole
  chunks of each evaluation set; counts are summed), so sweeps, merges, negation and the
  analyses use every GPU too. Call `init_from_env()` first; rank 0 writes the files
  (`is_main()`, `main_first()`).
- N independent processes, one per GPU, each running a shard of the (task, mode)
  fine-tunes (`shard_units`), then one process for the evaluation stages, which reuse the
  saved task vectors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

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


def agree(value: T) -> T:
    """Rank 0's value on every rank (a decision all ranks must share, such as whether a stage
    is done); the value itself in a single process."""
    if not is_distributed() or world_size() == 1:
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class Ranks:
    """The processes that share one evaluation, and how they split its examples.

    Rank i takes a contiguous run of whole chunks of each evaluation set (`span`): a row is
    then computed in the same batch, with the same neighbours, as in a single process, so
    every logit is bit for bit the single process's and sharded results equal unsharded
    ones exactly (accuracies are summed as integer counts). Sets with fewer chunks than ranks
    leave some ranks without rows. `Ranks()` is one process alone, where every collective is
    the identity.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def of_process_group(cls) -> Ranks:
        """This process among the torchrun group (one process alone when there is none)."""
        return cls(rank(), world_size())

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def spans(self, n: int, chunk: int) -> list[tuple[int, int]]:
        """Rows [start, stop) of an n-row set that each rank evaluates, in rank order."""
        chunks = -(-n // chunk) if n else 0
        bounds = [min(i * chunks // self.count * chunk, n) for i in range(self.count + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def span(self, n: int, chunk: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of an n-row set."""
        return self.spans(n, chunk)[self.index]

    def _device(self) -> torch.device:
        """Where collectives run: NCCL takes GPU tensors only."""
        return torch.device("cuda", torch.cuda.current_device()) if _dist().get_backend() == "nccl" else torch.device("cpu")

    def total(self, counts: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over the ranks of an integer tensor (exact in any order)."""
        if not self.sharded:
            return counts
        if counts.is_floating_point():
            raise TypeError("Ranks.total sums integer counts; a float sum would depend on the number of ranks")
        summed = counts.to(self._device(), torch.int64, copy=True)
        _dist().all_reduce(summed)
        return summed.cpu()

    def gather(self, part: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Every rank's rows concatenated in rank order; rank q holds `sizes[q]` rows of the
        same trailing shape and dtype (padded to the largest for all_gather, then cut)."""
        if not self.sharded:
            return part
        if len(part) != sizes[self.index]:
            raise ValueError(f"rank {self.index} holds {len(part)} rows, expected {sizes[self.index]}")
        width = max(sizes)
        if width == 0:
            return part
        device = self._device()
        padded = part.new_zeros((width, *part.shape[1:]), device=device)
        padded[: len(part)] = part.to(device)
        pieces = [torch.empty_like(padded) for _ in sizes]
        _dist().all_gather(pieces, padded)
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)]).cpu()

    def broadcast(self, tensors: Mapping[str, torch.Tensor], source: int = 0) -> None:
        """Overwrite each tensor, in place, with rank `source`'s values (same names, shapes)."""
        if not self.sharded:
            return
        device = self._device()
        for name in sorted(tensors):
            tensor = tensors[name]
            buffer = tensor.detach().to(device, copy=True)
            _dist().broadcast(buffer, src=source)
            tensor.data.copy_(buffer)

    def broadcast_tensor(self, tensor: torch.Tensor, source: int) -> torch.Tensor:
        """Rank `source`'s tensor (shape and dtype given by `tensor` on every rank)."""
        if not self.sharded:
            return tensor
        buffer = tensor.to(self._device(), copy=True)
        _dist().broadcast(buffer, src=source)
        return buffer.cpu()
