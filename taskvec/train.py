"""One fine-tuning loop for both modes: non-linear (train f) and linearized (train f_lin).

AdamW, cosine schedule with linear warm-up, gradient clipping. Batches are a pure function of
(seed, step), and checkpoints hold θ, the optimizer moments and the step, so a run that is
interrupted and resumed ends with exactly the task vector of an uninterrupted run.

Scale: under `torchrun` (torch.distributed initialized) each of the W processes takes
`index[rank::W]` of the step's global batch and DistributedDataParallel averages the
gradients, so the update equals the single-process one at the same global batch (up to
floating-point rounding); rank 0 writes checkpoints and every rank returns the same vector.
`grad_accumulation` splits each process's share into equal micro-batches (same update, less
memory); `precision = "bf16"` runs forward and backward under CUDA bf16 autocast (weights,
optimizer state and task vectors stay float32). The next batch is loaded in a background
thread while the current step runs.
"""
from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import TaskvecError
from .io import load_tensors, save_tensors
from .finetuning.build import PENALTY_BATCH, PENALTY_WEIGHT, FitData
from .finetuning.cost import CostMeter
from .finetuning.parts import TunedEncoder
from .kinds import FINETUNE_MODES, FinetuneMode
from .models.base import Backbone, Batch
from .models.heads import ClassificationHead
from .results import FinetuneCost
from .task_vector import TaskVector, base_identity
from .typed import to_data

CHECKPOINT_FORMAT = "taskvec.checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 150
    batch_size: int = 32
    lr: float = 3e-5
    weight_decay: float = 0.1
    warmup_steps: int = 15
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    grad_accumulation: int = 1  # equal micro-batches per (process's share of a) step
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: CUDA autocast for forward and backward
    settings: dict[str, Any] = field(default_factory=dict)  # the mode's own (FinetuneMode.settings)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise TaskvecError(f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "grad_accumulation"):
            if getattr(self, name) <= 0:
                raise TaskvecError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise TaskvecError(f"train.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise TaskvecError(f"train.warmup_steps must be in [0, steps], got {self.warmup_steps}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * progress))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The examples of a step: consecutive slices of seeded per-epoch permutations."""
    start = step * batch_size
    out: list[torch.Tensor] = []
    while len(out) == 0 or sum(len(o) for o in out) < batch_size:
        taken = sum(len(o) for o in out)
        epoch, offset = divmod(start + taken, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(perm[offset : offset + batch_size - taken])
    return torch.cat(out)


def take(batch: Batch, index: torch.Tensor, device: torch.device | str = "cpu") -> Batch:
    return {key: value[index].to(device) for key, value in batch.items()}


def _distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    if device.type != "cuda":
        raise TaskvecError(f"train.precision = {precision!r} needs a CUDA device (device is {device}); use \"fp32\"")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class TrainedModel(torch.nn.Module):
    """The model a step differentiates: the tuned encoder, its frozen head and, for a mode with a
    penalty, λ Σ_{t'} mean_x ‖J(x; θ0) τ‖² over batches of the other tasks (one JVP each)."""

    def __init__(self, encoder: TunedEncoder, head: ClassificationHead, penalty: float = 0.0):
        super().__init__()
        self.encoder, self.head, self.penalty = encoder, head, penalty
        for p in self.head.parameters():
            p.requires_grad_(False)

    def forward(self, batch: Batch, others: Sequence[Batch] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encoder(**batch))
        term = logits.new_zeros(())
        for other in others:
            tangent = self.encoder.tangent_features(other)[1]
            term = term + tangent.to(torch.promote_types(tangent.dtype, torch.float32)).pow(2).sum(-1).mean()
        return logits, self.penalty * term


def save_checkpoint(path: Path, step: int, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        tensors[f"param/{name}"] = p
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"{key}/{name}"] = torch.as_tensor(state[key])
    save_tensors(path, tensors, {"format": CHECKPOINT_FORMAT, "step": step, **meta})


def load_checkpoint(path: Path, params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, meta: dict) -> int:
    """Restore θ and AdamW moments in place; returns the step to continue from."""
    tensors, saved = load_tensors(path)
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise TaskvecError(f"{path} is not a taskvec checkpoint")
    for key in ("mode", "task", "base", "config"):
        if saved.get(key) != meta.get(key):
            raise TaskvecError(f"checkpoint {path} was written for a different run ({key}: {saved.get(key)} vs {meta.get(key)}); delete it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"param/{name}"])
            if f"exp_avg/{name}" in tensors:
                optimizer.state[p] = {
                    "step": tensors[f"step/{name}"].clone(),
                    "exp_avg": tensors[f"exp_avg/{name}"].to(p.device).clone(),
                    "exp_avg_sq": tensors[f"exp_avg_sq/{name}"].to(p.device).clone(),
                }
    return int(saved["step"])


def finetune(
    base: Backbone,
    head: ClassificationHead,
    inputs: Batch,
    labels: torch.Tensor,
    *,
    mode: FinetuneMode | str,
    cfg: TrainConfig,
    task: str = "",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    others: Sequence[Batch] = (),
) -> TaskVector:
    """Fine-tune a copy of `base` (θ0) on one task and return its task vector.

    `mode` (a registered fine-tuning mode or its name) says what is trained: f itself, or
    f_lin = linearize(f) for a linearized mode. `checkpoint` makes the run resumable;
    `stop_after` ends the run early after that many steps (an interruption). `others`: the other
    tasks' training inputs, for a mode with a penalty on them (τJp).
    """
    mode = FINETUNE_MODES.get(mode)
    settings = mode.resolve(cfg.settings)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) == 0:
        raise TaskvecError(f"task {task!r} has no training examples")
    others = list(others) if mode.penalty else []
    if mode.penalty and not others:
        raise TaskvecError(f"mode {mode.name} penalizes τ on the other tasks' inputs: give their training inputs (others=...)")
    identity = base_identity(base)

    rank, world = _distributed()
    per_process, rest = divmod(cfg.batch_size, world * cfg.grad_accumulation)
    if rest or per_process == 0:
        raise TaskvecError(f"train.batch_size = {cfg.batch_size} must be a multiple of processes × grad_accumulation = "
                           f"{world} × {cfg.grad_accumulation}")
    device = torch.device(device)
    _autocast(device, cfg.precision)  # refuse bf16 off CUDA before any work

    backbone = copy.deepcopy(base)
    fit = FitData(head, inputs, labels, cfg.batch_size, cfg.seed, device)
    trainable = mode.builds(backbone, settings, fit, mode.linearized)
    weight = settings[PENALTY_WEIGHT.name] if mode.penalty else 0.0
    model = TrainedModel(TunedEncoder(backbone, trainable, mode.linearized), head, weight).to(device)
    model.train()
    params = trainable.trained
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"mode": mode.name, "task": task, "base": identity, "config": asdict(cfg)}
    forward: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
                                          if device.type == "cuda" else None, broadcast_buffers=False)

    start = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        start = load_checkpoint(checkpoint, params, optimizer, meta)

    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)

    def parts(step: int) -> list[torch.Tensor]:
        """This process's micro-batches of the step's global batch."""
        index = batch_indices(len(labels), cfg.batch_size, step, cfg.seed)
        return list(index[rank::world].chunk(cfg.grad_accumulation))

    def penalty_batches(step: int) -> list[Batch]:
        """This process's share of each other task's penalty batch of the step (seeded)."""
        out = []
        for k, other in enumerate(others):
            n = len(next(iter(other.values())))
            index = batch_indices(n, settings[PENALTY_BATCH.name], step, cfg.seed + 1 + k)[rank::world]
            out.append({key: value[index] for key, value in other.items()})
        return out

    def load(step: int) -> tuple[list[tuple[Batch, torch.Tensor]], list[Batch]]:
        return ([({key: value[part] for key, value in inputs.items()}, labels[part]) for part in parts(step)],
                penalty_batches(step))

    meter = CostMeter(device).start()
    loss = torch.zeros(())
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"{mode.name:>9} {task}", disable=not progress or rank != 0, leave=False)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskvec-prefetch") as prefetch:
        upcoming = prefetch.submit(load, start) if start < end else None
        for step in bar:
            micro, penalized = upcoming.result()  # type: ignore[union-attr]
            upcoming = prefetch.submit(load, step + 1) if step + 1 < end else None
            meter.step_begins()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for k, (cpu_batch, part_labels) in enumerate(micro):
                batch = {key: value.to(device, non_blocking=True) for key, value in cpu_batch.items()}
                sync = k == len(micro) - 1 or world == 1
                others_k = [{key: value.to(device) for key, value in o.items()} for o in penalized] if k == 0 else []
                with (nullcontext() if sync else forward.no_sync()), _autocast(device, cfg.precision):  # type: ignore[operator]
                    logits, penalty = forward(batch, others_k)
                    part_loss = F.cross_entropy(logits.float(), part_labels.to(device)) / len(micro) + penalty  # penalty: first micro-batch only
                part_loss.backward()
                total += part_loss.detach()
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
            optimizer.step()
            meter.step_ends()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(total)
                total /= world
            loss = total.cpu()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if on_step is not None:
                on_step(step, loss.item())
            done = step + 1
            if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == end):
                if rank == 0:
                    save_checkpoint(checkpoint, done, params, optimizer, meta)
                _barrier(world)
    bar.close()
    changed = {n: t.detach().cpu() for n, t in trainable.vector(mode.linearized).items()}
    vector = {n: changed[n] if n in changed else torch.zeros_like(p, device="cpu") for n, p in backbone.named_parameters()}
    cost = FinetuneCost(**meter.summary(), trained_entries=sum(p.numel() for p in params.values()), changed_entries=trainable.entries())
    info = {"steps": cfg.steps, "seconds": cost.seconds, "last_loss": round(float(loss.item()), 4) if end > start else None,
            "processes": world, "precision": cfg.precision, "settings": settings, "cost": to_data(cost)}
    return TaskVector(vector, mode, identity, (task,), info)
