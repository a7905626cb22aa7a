"""One fine-tuning loop for both modes: non-linear (train f) and linearized (train f_lin).

AdamW, cosine schedule with linear warm-up, gradient clipping. Batches are a pure function of
(seed, step), and checkpoints hold θ, the optimizer moments and the step, so a run that is
interrupted and resumed ends with exactly the task vector of an uninterrupted run.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .errors import TaskvecError
from .io import load_tensors, save_tensors
from .linearize import LinearizedBackbone
from .models.base import Backbone, Batch
from .models.heads import ClassificationHead, Classifier
from .task_vector import Mode, TaskVector, base_identity

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

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
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


def _trainable(encoder: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    module = encoder.model if isinstance(encoder, LinearizedBackbone) else encoder
    return dict(module.named_parameters())


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
    mode: Mode,
    cfg: TrainConfig,
    task: str = "",
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TaskVector:
    """Fine-tune a copy of `base` (θ0) on one task and return its task vector.

    mode "nonlinear" trains f; mode "linear" trains f_lin = linearize(f). `checkpoint` makes the
    run resumable; `stop_after` ends the run early after that many steps (an interruption).
    """
    if mode not in ("nonlinear", "linear"):
        raise TaskvecError(f"unknown fine-tuning mode {mode!r}; expected 'nonlinear' or 'linear'")
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) == 0:
        raise TaskvecError(f"task {task!r} has no training examples")
    identity = base_identity(base)
    pretrained = {n: p.detach().clone() for n, p in base.named_parameters()}

    encoder: torch.nn.Module = copy.deepcopy(base)
    if mode == "linear":
        encoder = LinearizedBackbone(encoder)
    model = Classifier(encoder, head).to(device)
    model.train()
    params = _trainable(encoder)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"mode": mode, "task": task, "base": identity, "config": asdict(cfg)}

    start = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        start = load_checkpoint(checkpoint, params, optimizer, meta)

    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    started = time.perf_counter()
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"{mode:>9} {task}", disable=not progress, leave=False)
    for step in bar:
        index = batch_indices(len(labels), cfg.batch_size, step, cfg.seed)
        batch = take(inputs, index, device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        loss = F.cross_entropy(model(**batch), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_step is not None:
            on_step(step, loss.item())
        done = step + 1
        if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == end):
            save_checkpoint(checkpoint, done, params, optimizer, meta)
    bar.close()
    finetuned = {n: p.detach().cpu() for n, p in params.items()}
    info = {"steps": cfg.steps, "seconds": round(time.perf_counter() - started, 2), "last_loss": round(float(loss.item()), 4) if end > start else None}
    return TaskVector.from_weights(pretrained, finetuned, mode=mode, base=identity, task=task, info=info)
