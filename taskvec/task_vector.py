"""Task vectors τ = θ* − θ0: arithmetic, application to a base model, safetensors I/O.

A vector knows its fine-tuning mode (a registered `FinetuneMode`) and the settings it was
trained with (`info["settings"]`, which decide whether it edits f or f_lin:
`FinetuneMode.applies_to_f_lin`), the identity of the θ0 it was taken from, and the tasks it
carries. Arithmetic between vectors of other bases, modes, models edited or parameter sets is
refused: the result would be meaningless.

A LoRA vector under `arithmetic = "adapters"` (the L-LoRA paper's convention) holds the adapters'
change {W.lora_A: ΔA, W.lora_B: ΔB} instead of a weight change: arithmetic combines those tensors
and applying θ0 + α·τ materializes W0 + s·(αΔB)(A0 + αΔA) (`weight_change`), which is not affine
in α, so such edits are evaluated point by point.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .errors import TaskvecError, finite
from .finetuning.settings import ALPHA, ARITHMETIC, RANK
from .io import load_tensors, save_tensors
from .kinds import FINETUNE_MODES, FinetuneMode
from .lazy import lazy_import
from .models.identity import base_identity, fingerprint  # noqa: F401 - θ0's identity, defined below the models

if TYPE_CHECKING:
    import torch

    from .models.base import Backbone
else:
    torch = lazy_import("torch")

FORMAT = "taskvec.task_vector/1"


@dataclass
class TaskVector:
    vector: dict[str, torch.Tensor]
    mode: FinetuneMode  # a registered mode, or its name (converted)
    base: dict[str, str]
    tasks: tuple[str, ...] = ()
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mode = FINETUNE_MODES.get(self.mode)
        self.tasks = tuple(self.tasks)

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        pretrained: dict[str, torch.Tensor],
        finetuned: dict[str, torch.Tensor],
        *,
        mode: FinetuneMode | str,
        base: dict[str, str],
        task: str,
        info: dict | None = None,
    ) -> TaskVector:
        if set(pretrained) != set(finetuned):
            missing = sorted(set(pretrained) ^ set(finetuned))[:3]
            raise TaskvecError(f"pre-trained and fine-tuned weights have different parameters, e.g. {missing}")
        vector = {n: (finetuned[n].detach() - pretrained[n].detach()).cpu() for n in pretrained}
        return cls(vector, FINETUNE_MODES.get(mode), dict(base), (task,), dict(info or {}))

    # ----- how it applies -----------------------------------------------------------------
    @property
    def settings(self) -> dict[str, object]:
        """The mode's settings it was trained with (none recorded: the mode's behaviour before settings)."""
        return dict(cast("dict", self.info.get("settings", {})))

    @property
    def applies_to_f_lin(self) -> bool:
        """Whether it lives in the tangent space and edits f_lin (else f)."""
        return self.mode.applies_to_f_lin(self.settings)

    @property
    def adapters(self) -> bool:
        """Whether it holds LoRA adapter deltas (`arithmetic = "adapters"`), not a weight change."""
        return self.settings.get(ARITHMETIC.name) == "adapters"

    def carried(self) -> dict[str, object]:
        """What of `info` its sums, multiples and merges keep: how it applies (its settings, and
        for adapters the seed of A0)."""
        return {k: self.info[k] for k in ("settings", "seed") if k in self.info and (k != "seed" or self.adapters)}

    def _application(self) -> tuple:
        """What must agree for two vectors to combine: the model they edit and their convention
        (with, for adapters, what the materialized weight depends on: s and A0's seed)."""
        settings = self.settings
        adapters = (settings.get(RANK.name), settings.get(ALPHA.name), self.info.get("seed")) if self.adapters else None
        return (self.applies_to_f_lin, adapters)

    def weight_change(self, pretrained: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """θ − θ0 of θ0 + τ on `pretrained` (θ0's parameters): the vector itself, or for adapters
        s·ΔB·(A0 + ΔA) on each adapted matrix and zeros elsewhere."""
        if not self.adapters:
            return self.vector
        from .finetuning.parts import A_SUFFIX, B_SUFFIX, adapter_weight_change

        seed = self.info.get("seed")
        if not isinstance(seed, int):
            raise TaskvecError("an adapter-convention LoRA vector needs the seed of its A0 (info['seed']), and this one has none")
        named = {k[: -len(suffix)] for k in self.vector for suffix in (A_SUFFIX, B_SUFFIX) if k.endswith(suffix)}
        if missing := sorted(named - set(pretrained)) or sorted(set(self.vector) - {n + x for n in named for x in (A_SUFFIX, B_SUFFIX)}):
            raise TaskvecError(f"adapter vector and model do not match, e.g. {missing[:3]}")
        settings = self.settings
        changes = adapter_weight_change(
            self.vector, pretrained, rank=int(cast(int, settings[RANK.name])), alpha=float(cast(float, settings[ALPHA.name])), seed=seed
        )
        return {n: changes[n] if n in changes else torch.zeros_like(p) for n, p in pretrained.items()}

    # ----- arithmetic ---------------------------------------------------------------------
    def _check_compatible(self, other: TaskVector) -> None:
        if not isinstance(other, TaskVector):
            raise TypeError(f"cannot combine a TaskVector with {type(other).__name__}")
        if self.mode != other.mode:
            raise TaskvecError(f"cannot combine a {self.mode.name} task vector with a {other.mode.name} one")
        if self._application() != other._application():
            raise TaskvecError(
                f"cannot combine {self.mode.name} task vectors of other settings (model edited, arithmetic convention, rank, alpha "
                f"or seed): {self.settings} (seed {self.info.get('seed')}) vs {other.settings} (seed {other.info.get('seed')})"
            )
        if self.base != other.base:
            raise TaskvecError(f"task vectors come from different base models: {self.base} vs {other.base}")
        if set(self.vector) != set(other.vector):
            diff = sorted(set(self.vector) ^ set(other.vector))[:3]
            raise TaskvecError(f"task vectors have different parameters, e.g. {diff}")
        for name, tensor in self.vector.items():
            if tensor.shape != other.vector[name].shape:
                raise TaskvecError(f"parameter {name!r} has shape {tuple(tensor.shape)} vs {tuple(other.vector[name].shape)}")

    def _combine(self, other: TaskVector, sign: float) -> TaskVector:
        self._check_compatible(other)
        vector = {n: t + sign * other.vector[n] for n, t in self.vector.items()}
        return TaskVector(vector, self.mode, self.base, self.tasks + other.tasks, self.carried())

    def __add__(self, other: TaskVector) -> TaskVector:
        return self._combine(other, 1.0)

    def __radd__(self, other: object) -> TaskVector:
        if other == 0:  # lets the built-in sum() start from 0
            return self
        return NotImplemented

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self._combine(other, -1.0)

    def __neg__(self) -> TaskVector:
        return self * -1.0

    def __mul__(self, scalar: float) -> TaskVector:
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        finite(scalar, "a task vector's scale")
        return TaskVector({n: t * float(scalar) for n, t in self.vector.items()}, self.mode, self.base, self.tasks, self.carried())

    __rmul__ = __mul__

    def norm(self) -> float:
        # sum() of tensors is a tensor; only for a vector without tensors is it the int 0 (torch.sqrt then raises)
        return float(torch.sqrt(cast("torch.Tensor", sum((t.double() ** 2).sum() for t in self.vector.values()))))

    # ----- application --------------------------------------------------------------------
    def apply_to(self, base: Backbone, alpha: float = 1.0, *, linearized: bool | None = None) -> Backbone:
        """θ0 + α τ on a copy of `base` (which must hold θ0).

        Vectors that live in the tangent space (`applies_to_f_lin`) give an edited f_lin, others
        an edited f; a vector of f with `linearized=True` gives post-hoc linearization. Adapter
        vectors are scaled as adapters, then materialized (`weight_change`). The base is not
        modified.
        """
        finite(alpha, "α")
        if linearized is None:
            linearized = self.applies_to_f_lin
        if self.applies_to_f_lin and not linearized:
            raise TaskvecError(f"a {self.mode.name} task vector lives in the tangent space: apply it to the linearized model")
        if self.adapters and linearized:
            raise TaskvecError("an adapter-convention LoRA vector edits f only (it is not affine in α): use arithmetic = 'weights'")
        identity = base_identity(base)
        if identity != self.base:
            raise TaskvecError(f"task vector was made from base {self.base}, not from this model {identity}")
        from .linearization import LinearizedBackbone

        edited = copy.deepcopy(base)
        if linearized and not isinstance(edited, LinearizedBackbone):
            edited = LinearizedBackbone(edited)
        target = edited.model if isinstance(edited, LinearizedBackbone) else edited
        params = dict(target.named_parameters())
        if self.adapters:
            with torch.no_grad():
                change, alpha = (self * alpha).weight_change(params), 1.0
        else:
            change = self.vector
            if set(params) != set(change):
                diff = sorted(set(params) ^ set(change))[:3]
                raise TaskvecError(f"task vector and model have different parameters, e.g. {diff}")
        with torch.no_grad():
            for name, delta in change.items():
                p = params[name]
                if p.shape != delta.shape:
                    raise TaskvecError(f"parameter {name!r}: model shape {tuple(p.shape)}, vector shape {tuple(delta.shape)}")
                p.add_(delta.to(p.device, p.dtype), alpha=alpha)
        return edited

    # ----- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        metadata = {"format": FORMAT, "mode": self.mode.name, "base": self.base, "tasks": list(self.tasks), "info": self.info}
        save_tensors(path, self.vector, metadata)

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        tensors, metadata = load_tensors(path)
        header = _checked_header(path, metadata)
        for name, tensor in tensors.items():
            if not torch.isfinite(tensor).all():
                raise _non_finite(path, name)
        return cls(tensors, header.mode, header.base, header.tasks, header.info)


@dataclass(frozen=True)
class VectorHeader:
    """A task vector file's metadata, checked."""

    mode: FinetuneMode
    base: dict[str, str]
    tasks: tuple[str, ...]
    info: dict


@dataclass(frozen=True)
class VectorSummary:
    """What `taskvec info` prints of a vector file."""

    header: VectorHeader
    parameters: int
    norm: float


def summarize(path: str | Path) -> VectorSummary:
    """A vector file's metadata, size and norm, with `TaskVector.load`'s checks, read as numpy
    arrays: `taskvec info` then starts without importing torch. Files numpy cannot hold
    (bfloat16) are read through `TaskVector.load`."""
    import numpy as np

    from .io import load_arrays, numpy_readable

    if not numpy_readable(path):  # decided from the header: the file is read once either way
        vector = TaskVector.load(path)
        return VectorSummary(VectorHeader(vector.mode, vector.base, vector.tasks, vector.info), len(vector.vector), vector.norm())
    arrays, metadata = load_arrays(path)
    header = _checked_header(path, metadata)
    squares = 0.0
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise _non_finite(path, name)
        squares += float(np.square(array, dtype=np.float64).sum())
    return VectorSummary(header, len(arrays), squares**0.5)


def _checked_header(path: str | Path, metadata: dict) -> VectorHeader:
    if metadata.get("format") != FORMAT:
        raise TaskvecError(f"{path} is not a taskvec task vector (format {metadata.get('format')!r})")
    try:
        return VectorHeader(
            FINETUNE_MODES.get(metadata["mode"]), dict(metadata["base"]), tuple(metadata["tasks"]), dict(metadata.get("info", {}))
        )
    except KeyError as exc:
        raise TaskvecError(f"task vector {path} lacks metadata field {exc}") from None


def _non_finite(path: str | Path, name: str) -> TaskvecError:
    return TaskvecError(f"task vector {path} holds non-finite values (nan or inf) in {name!r}")


def sum_vectors(vectors: Iterable[TaskVector]) -> TaskVector:
    vectors = list(vectors)
    if not vectors:
        raise TaskvecError("cannot sum an empty list of task vectors")
    total = vectors[0]
    for v in vectors[1:]:
        total = total + v
    return total
