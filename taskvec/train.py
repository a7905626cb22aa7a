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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import TrainConfig
from .errors import TaskvecError
from .finetuning.build import FitData
from .finetuning.cost import CostMeter
from .finetuning.kfac import KfacPenalty, TaskFactors, combine
from .finetuning.parts import TunedEncoder
from .finetuning.penalty import PENALTY_TERMS, EffectivePenalty, PenaltyTerm, norm_mean, penalty_data
from .finetuning.settings import PENALTY_BATCH, PENALTY_FORM, PENALTY_WEIGHT, TAK_WEIGHT
from .io import load_tensors, save_tensors
from .kinds import FINETUNE_MODES, FinetuneMode
from .models.base import Backbone, Batch
from .models.heads import ClassificationHead
from .results import FinetuneCost
from .task_vector import TaskVector, base_identity
from .typed import to_data

CHECKPOINT_FORMAT = "taskvec.checkpoint/1"


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
        raise TaskvecError(f'train.precision = {precision!r} needs a CUDA device (device is {device}); use "fp32"')
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class TrainedModel(torch.nn.Module):
    """The model a step differentiates: the tuned encoder, its frozen head and, for a mode with a
    penalty, `penalty` · `term`(encoder, batches of the penalized datasets) (taskvec.finetuning.
    penalty; τJp: mean over the datasets of mean_x ‖J(x; θ0) τ‖, one JVP per dataset), or
    `curvature`'s term of the trained tangent (TAK: the other tasks' KFAC factors), added when
    `regularize` (once per step)."""

    def __init__(
        self,
        encoder: TunedEncoder,
        head: ClassificationHead,
        penalty: float = 0.0,
        term: PenaltyTerm = norm_mean,
        curvature: Callable[[Callable], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.encoder, self.head, self.penalty, self.term, self.curvature = encoder, head, penalty, term, curvature
        for p in self.head.parameters():
            p.requires_grad_(False)

    def forward(self, batch: Batch, others: Sequence[Batch] = (), regularize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encoder(**batch))
        term = self.penalty * self.term(self.encoder, others) if others else logits.new_zeros(())
        if regularize and self.curvature is not None:  # λ inside: the factors' own weight
            term = term + self.curvature(self.encoder.trainable.tangent_of)
        return logits, term


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
            raise TaskvecError(
                f"checkpoint {path} was written for a different run ({key}: {saved.get(key)} vs {meta.get(key)}); delete it to start over"
            )
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
    others: Sequence[Batch] | Mapping[str, Batch] = (),
    control: tuple[str, Batch] | None = None,
    factors: Sequence[TaskFactors] = (),
) -> TaskVector:
    """Fine-tune a copy of `base` (θ0) on one task and return its task vector.

    `mode` (a registered fine-tuning mode or its name) says what is trained: f itself, or
    f_lin = linearize(f) for a linearized mode. `checkpoint` makes the run resumable;
    `stop_after` ends the run early after that many steps (an interruption). `others`: the other
    tasks' training inputs (by name, or in a list), and `control`: (name, training inputs) of the
    control data, one more penalized dataset, for a mode with a penalty on them (τJp); the
    vector's info["penalty"] records the effective penalty. `factors`: the other tasks' KFAC
    factors at θ0, for a mode with a curvature penalty (TAK).
    """
    mode = FINETUNE_MODES.get(mode)
    settings = mode.resolve(cfg.settings)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) == 0:
        raise TaskvecError(f"task {task!r} has no training examples")
    if mode.penalty and not others and control is None:
        raise TaskvecError(f"mode {mode.name} penalizes τ on the other tasks' inputs: give their training inputs (others=...)")
    names, penalized, control_name = penalty_data(inputs, others, control) if mode.penalty else ((), [], None)
    effective = (
        EffectivePenalty(settings[PENALTY_FORM.name], settings[PENALTY_WEIGHT.name], settings[PENALTY_BATCH.name], names, control_name)
        if mode.penalty
        else None
    )
    if mode.curvature and not factors:
        raise TaskvecError(f"mode {mode.name} penalizes τ with the other tasks' KFAC factors: give them (factors=...)")
    identity = base_identity(base)

    rank, world = _distributed()
    per_process, rest = divmod(cfg.batch_size, world * cfg.grad_accumulation)
    if rest or per_process == 0:
        raise TaskvecError(
            f"train.batch_size = {cfg.batch_size} must be a multiple of processes × grad_accumulation = {world} × {cfg.grad_accumulation}"
        )
    device = torch.device(device)
    _autocast(device, cfg.precision)  # refuse bf16 off CUDA before any work

    run = _Training(base, head, inputs, labels, mode, settings, cfg, device, rank, world, list(factors) if mode.curvature else [])
    start = run.resume(checkpoint, {"mode": mode.name, "task": task, "base": identity, "config": asdict(cfg)})
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    load = _batch_loader(inputs, labels, penalized, settings, cfg, rank, world)
    meter = CostMeter(device).start()
    bar = tqdm(
        range(start, end), initial=start, total=cfg.steps, desc=f"{mode.name:>9} {task}", disable=not progress or rank != 0, leave=False
    )
    loss = run.steps(bar, load, meter, start, end, on_step)
    bar.close()
    vector = run.task_vector(identity, task, meter, loss, end > start)
    if effective is not None:
        vector.info["penalty"] = {**to_data(effective), "describe": effective.describe()}
    return vector


def _batch_loader(
    inputs: Batch, labels: torch.Tensor, others: list[Batch], settings: dict[str, Any], cfg: TrainConfig, rank: int, world: int
) -> Callable[[int], tuple[list[tuple[Batch, torch.Tensor]], list[Batch]]]:
    """step -> (this process's micro-batches of the step, its share of the other tasks' penalty
    batches): a pure function of (seed, step), so a resumed run sees the same batches."""

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
        return ([({key: value[part] for key, value in inputs.items()}, labels[part]) for part in parts(step)], penalty_batches(step))

    return load


def _curvature(factors: list[TaskFactors], settings: dict[str, Any], trainable, identity_of: Backbone, device: torch.device) -> KfacPenalty:
    """TAK's penalty from the other tasks' factors, which must be of this base model and layers."""
    identity = base_identity(identity_of)
    for f in factors:
        if f.meta.get("base") not in (None, identity):
            raise TaskvecError(f"the KFAC factors of task {f.meta.get('task')!r} were computed on another base model")
    shapes = {n: p.shape for n, p in trainable.pretrained.items()}
    return KfacPenalty(combine(factors), settings[TAK_WEIGHT.name], shapes).to(device)


class _Training:
    """One fine-tune's state: a copy of the backbone, what the mode trains in it, the model
    (under torchrun, wrapped in DistributedDataParallel), the optimizer and the checkpoint."""

    def __init__(
        self,
        base: Backbone,
        head: ClassificationHead,
        inputs: Batch,
        labels: torch.Tensor,
        mode: FinetuneMode,
        settings: dict[str, Any],
        cfg: TrainConfig,
        device: torch.device,
        rank: int,
        world: int,
        factors: list[TaskFactors],
    ):
        self.mode, self.settings, self.cfg, self.device, self.rank, self.world = mode, settings, cfg, device, rank, world
        self.backbone = copy.deepcopy(base)
        fit = FitData(head, inputs, labels, cfg.batch_size, cfg.seed, device)
        self.trainable = mode.builds(self.backbone, settings, fit, mode.linearized)
        weight, term = (settings[PENALTY_WEIGHT.name], PENALTY_TERMS[settings[PENALTY_FORM.name]]) if mode.penalty else (0.0, norm_mean)
        curvature = _curvature(factors, settings, self.trainable, identity_of=base, device=device) if factors else None
        encoder = TunedEncoder(self.backbone, self.trainable, mode.applies_to_f_lin(settings))
        model = TrainedModel(encoder, head, weight, term, curvature).to(device)
        model.train()
        self.params = self.trainable.trained
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.forward: torch.nn.Module = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(
                model,
                device_ids=[device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.checkpoint: Path | None = None
        self.meta: dict = {}

    def resume(self, checkpoint: str | Path | None, meta: dict) -> int:
        """The step to start from: the checkpoint's if one exists (θ and optimizer restored), else 0."""
        self.checkpoint, self.meta = (Path(checkpoint) if checkpoint else None), meta
        if self.checkpoint is not None and self.checkpoint.exists():
            return load_checkpoint(self.checkpoint, self.params, self.optimizer, meta)
        return 0

    def step(self, step: int, micro: list[tuple[Batch, torch.Tensor]], penalized: list[Batch]) -> torch.Tensor:
        """One optimizer step over this process's micro-batches; its loss summed over them (on the device)."""
        cfg, device, forward = self.cfg, self.device, self.forward
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for k, (cpu_batch, part_labels) in enumerate(micro):
            batch = {key: value.to(device, non_blocking=True) for key, value in cpu_batch.items()}
            sync = k == len(micro) - 1 or self.world == 1
            others_k = [{key: value.to(device) for key, value in o.items()} for o in penalized] if k == 0 else []
            with nullcontext() if sync else forward.no_sync(), _autocast(device, cfg.precision):  # type: ignore[operator]
                logits, penalty = forward(batch, others_k, k == 0)
                part_loss = (
                    F.cross_entropy(logits.float(), part_labels.to(device)) / len(micro) + penalty
                )  # penalty: first micro-batch only
            part_loss.backward()
            total += part_loss.detach()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.grad_clip)
        self.optimizer.step()
        return total

    def steps(
        self, bar, load: Callable, meter: CostMeter, start: int, end: int, on_step: Callable[[int, float], None] | None
    ) -> torch.Tensor:
        """Steps [start, end), the next step's batches loaded in a background thread; the last
        step's loss averaged over the processes (zero if no step ran)."""
        loss = torch.zeros(())
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskvec-prefetch") as prefetch:
            upcoming = prefetch.submit(load, start) if start < end else None
            for step in bar:
                micro, penalized = upcoming.result()  # type: ignore[union-attr]
                upcoming = prefetch.submit(load, step + 1) if step + 1 < end else None
                meter.step_begins()
                total = self.step(step, micro, penalized)
                meter.step_ends()
                if self.world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(total)
                    total /= self.world
                loss = total.cpu()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if on_step is not None:
                    on_step(step, loss.item())
                self.save(step + 1, end)
        return loss

    def save(self, done: int, end: int) -> None:
        """Rank 0 writes the checkpoint every `checkpoint_every` steps and at the end; all ranks wait."""
        if self.checkpoint is not None and (done % self.cfg.checkpoint_every == 0 or done == end):
            if self.rank == 0:
                save_checkpoint(self.checkpoint, done, self.params, self.optimizer, self.meta)
            _barrier(self.world)

    def task_vector(self, identity: dict, task: str, meter: CostMeter, loss: torch.Tensor, ran: bool) -> TaskVector:
        """θ − θ0 over every backbone parameter (zeros where nothing was trained), with the run's cost."""
        mode, cfg = self.mode, self.cfg
        vector = self.trainable.task_vector(dict(self.backbone.named_parameters()), mode.linearized)
        cost = FinetuneCost(
            **meter.summary(), trained_entries=sum(p.numel() for p in self.params.values()), changed_entries=self.trainable.entries()
        )
        info = {
            "steps": cfg.steps,
            "seconds": cost.seconds,
            "last_loss": round(float(loss.item()), 4) if ran else None,
            "processes": self.world,
            "precision": cfg.precision,
            "settings": self.settings,
            "seed": cfg.seed,  # LoRA's A0 (an adapter-convention vector regenerates it)
            "cost": to_data(cost),
            **self.trainable.stats(),  # what the mode's builder measured (TaLoS: info["mask"])
        }
        return TaskVector(vector, mode, identity, (task,), info)
