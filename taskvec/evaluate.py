"""Accuracy of edited models, with exact fast sweeps for linearized ones.

For a linearized model, f_lin(x; θ0 + Σ α_t τ_t) = f(x; θ0) + Σ α_t J(x; θ0) τ_t is linear in
the α's. So `Evaluator` computes f(x; θ0) and one Jacobian-vector product J τ_t per vector and
evaluation set once, and then scores any combination of α's with a few additions. Non-linear
models have no such shortcut: each distinct edit is one forward pass per evaluation set, and
its features are cached so that a sweep never recomputes an edit it has seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .errors import TaskvecError, finite
from .kinds import EVAL_METHODS, EvalMethod
from .linearize import jvp, preferred_layout
from .models.base import Backbone, Batch
from .models.heads import ClassificationHead
from .task_vector import TaskVector, base_identity


@dataclass
class EvalSet:
    """Prepared inputs and labels of one (task, split)."""

    inputs: Batch
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def chunks(batch: Batch, size: int, device: str | torch.device):
    n = len(next(iter(batch.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size].to(device) for k, v in batch.items()}


def _first_conv(module: torch.nn.Module) -> torch.nn.Conv2d | None:
    return next((m for m in module.modules() if isinstance(m, torch.nn.Conv2d)), None)


def channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """A model this code owns (an edited copy), converted in place to channels-last weights when it
    has 2-D convolutions and lives on the CPU, where oneDNN's convolutions (depthwise above all)
    run about 1.4× faster that way (EfficientNet-Lite0 at 32 px). Values are unchanged; outputs
    differ from the contiguous layout's at rounding level (~1e-5)."""
    conv = _first_conv(model)
    if conv is not None and conv.weight.device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def _in_layout_of(encoder: torch.nn.Module, part: Batch) -> Batch:
    """Channels-last inputs for an encoder with channels-last convolutions (mixed layouts are
    slower than either); other encoders get the inputs as given."""
    conv = _first_conv(encoder)
    if conv is None or not conv.weight.is_contiguous(memory_format=torch.channels_last):
        return part
    return preferred_layout(encoder, part)


@torch.no_grad()  # not inference mode: it would drop the dual numbers of a linearized encoder
def encode(encoder: torch.nn.Module, inputs: Batch, chunk: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """Features of all inputs, in chunks, without gradients."""
    encoder = encoder.to(device).eval()
    return torch.cat([encoder(**_in_layout_of(encoder, part)).float().cpu() for part in chunks(inputs, chunk, device)])


@torch.no_grad()
def encode_jvp(base: Backbone, vector: Mapping[str, torch.Tensor], inputs: Batch, chunk: int = 256, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x; θ0), J(x; θ0) τ) for all inputs: one Jacobian-vector product per chunk."""
    base = base.to(device).eval()
    primals = {n: p.detach() for n, p in base.named_parameters()}
    tangents = {n: vector[n].to(device, primals[n].dtype) for n in primals}
    outs, tans = [], []
    for part in chunks(inputs, chunk, device):
        out, tan = jvp(base, primals, tangents, part)
        outs.append(out.float().cpu())
        tans.append(tan.float().cpu())
    return torch.cat(outs), torch.cat(tans)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def _key(coeffs: Mapping[str, float]) -> tuple:
    return tuple(sorted((t, round(float(a), 10)) for t, a in coeffs.items() if float(a) != 0.0))


class Evaluator:
    """Accuracy of θ0 + Σ α_t τ_t on any (task, split), for one evaluation method.

    The method (a registered `EvalMethod` or its name) says which mode's vectors it takes and
    whether they edit f or f_lin (non-linear FT, post-hoc linearization, linearized FT). The
    vectors are keyed by name: a task, or any direction added later (`add_vector`), such as a
    merged vector. Pre-trained features are shared between evaluators through
    `pretrained_cache` so θ0 is encoded once per evaluation set.

    For the linearized methods, vectors sharing one α are combined before the product:
    J (Σ_t τ_t) is one JVP per evaluation set, so a whole addition sweep costs one JVP per set
    (or none, when the single-vector products are already cached and can simply be summed).
    """

    def __init__(
        self,
        base: Backbone,
        heads: Mapping[str, ClassificationHead],
        sets: Mapping[tuple[str, str], EvalSet],
        vectors: Mapping[str, TaskVector],
        method: EvalMethod | str,
        *,
        chunk: int = 256,
        device: str | torch.device = "cpu",
        pretrained_cache: dict | None = None,
    ):
        self.method = EVAL_METHODS.get(method)
        self.base, self.heads, self.sets, self.vectors = base, heads, sets, dict(vectors)
        self.chunk, self.device = chunk, device
        for key, vector in self.vectors.items():
            self._check_vector(key, vector)
        self.pretrained = pretrained_cache if pretrained_cache is not None else {}
        self._logits: dict[tuple, torch.Tensor] = {}  # (edit key, task, split) -> logits (non-linear)
        self._jvps: dict[tuple, torch.Tensor] = {}  # (vector tasks (sorted tuple), task, split) -> J Σ τ
        self.forward_passes = 0  # evaluation-set encodings actually computed (for benchmarks)

    def _check_vector(self, key: str, vector: TaskVector) -> None:
        method = self.method
        if method.vectors is None:
            raise TaskvecError(f"method {method.name} evaluates θ0 alone; it takes no task vectors")
        if vector.mode != method.vectors:
            raise TaskvecError(f"method {method.name} needs {method.vectors.name} task vectors; {key!r} is {vector.mode.name}")
        identity = base_identity(self.base)
        if vector.base != identity:  # the JVP path never builds an edited model, so check here
            raise TaskvecError(f"task vector {key!r} was made from base {vector.base}, not from this model {identity}")

    def add_vector(self, key: str, vector: TaskVector) -> None:
        """Make another direction (e.g. a merged vector) available to edits under `key`."""
        if key in self.vectors:
            raise TaskvecError(f"the evaluator already holds a vector {key!r}")
        self._check_vector(key, vector)
        self.vectors[key] = vector

    def drop_vector(self, key: str) -> None:
        """Forget a direction and everything cached for edits that use it (frees its memory)."""
        self.vectors.pop(key, None)
        self._jvps = {k: v for k, v in self._jvps.items() if key not in k[0]}
        self._logits = {k: v for k, v in self._logits.items() if key not in (t for t, _ in k[0])}

    def _set(self, task: str, split: str) -> EvalSet:
        if (task, split) not in self.sets:
            raise TaskvecError(f"no evaluation data for task {task!r}, split {split!r}")
        return self.sets[(task, split)]

    def pretrained_features(self, task: str, split: str) -> torch.Tensor:
        if (task, split) not in self.pretrained:
            self.pretrained[(task, split)] = encode(self.base, self._set(task, split).inputs, self.chunk, self.device)
            self.forward_passes += 1
        return self.pretrained[(task, split)]

    def _jvp(self, vector_tasks: tuple[str, ...], task: str, split: str) -> torch.Tensor:
        """J(x; θ0) Σ_{t ∈ vector_tasks} τ_t on one evaluation set, cached."""
        key = (vector_tasks, task, split)
        if key in self._jvps:
            return self._jvps[key]
        singles = [((t,), task, split) for t in vector_tasks]
        if len(vector_tasks) > 1 and all(k in self._jvps for k in singles):
            product = sum(self._jvps[k] for k in singles)  # linearity: no new pass
        else:
            vectors = [self.vectors[t].vector for t in vector_tasks]
            summed = {n: sum(v[n] for v in vectors) for n in vectors[0]} if len(vectors) > 1 else vectors[0]
            f0, product = encode_jvp(self.base, summed, self._set(task, split).inputs, self.chunk, self.device)
            self.pretrained.setdefault((task, split), f0)
            self.forward_passes += 1
        self._jvps[key] = product
        return product

    def _check(self, coeffs: Mapping[str, float]) -> tuple:
        unknown = set(coeffs) - set(self.vectors)
        if unknown:
            raise TaskvecError(f"no task vector for {sorted(unknown)}")
        for task, alpha in coeffs.items():
            finite(alpha, f"the coefficient α of {task}")
        return _key(coeffs)

    def logits(self, task: str, split: str, coeffs: Mapping[str, float]) -> torch.Tensor:
        """Task `task`'s head on the edited features. Non-linear results are cached per edit."""
        return self.logits_many([task], split, coeffs)[task]

    def logits_many(self, tasks: list[str], split: str, coeffs: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Logits of several tasks under one edit; a non-linear edit is built once for all."""
        key = self._check(coeffs)
        if not key:
            return {t: self.heads[t](self.pretrained_features(t, split)) for t in tasks}
        if not self.method.linearized:
            missing = [t for t in tasks if (key, t, split) not in self._logits]
            if missing:
                edited = channels_last(self.edited_model(coeffs))
                for t in missing:
                    self._logits[(key, t, split)] = self.heads[t](encode(edited, self._set(t, split).inputs, self.chunk, self.device))
                    self.forward_passes += 1
            return {t: self._logits[(key, t, split)] for t in tasks}
        groups: dict[float, list[str]] = {}
        for vector_task, alpha in key:
            groups.setdefault(alpha, []).append(vector_task)
        out = {}
        for t in tasks:
            features = self.pretrained_features(t, split).clone()
            for alpha, members in groups.items():
                features += alpha * self._jvp(tuple(sorted(members)), t, split)
            out[t] = self.heads[t](features)
        return out

    def restricted(self, rows: Mapping[str, torch.Tensor | None], split: str) -> "Evaluator":
        """An evaluator of the same edits on a subset of rows of each task's `split` set.

        Rows are independent (encoders run in eval mode), so everything already computed on the
        full sets (θ0 features, JVPs, non-linear logits) is sliced and reused, not recomputed.
        `rows[task]` is an index tensor, or None to keep the whole set.
        """
        def cut(task: str, values: torch.Tensor) -> torch.Tensor:
            index = rows.get(task)
            return values if index is None else values[index]

        sets = {}
        for t in rows:
            full = self._set(t, split)
            sets[(t, split)] = EvalSet({k: cut(t, v) for k, v in full.inputs.items()}, cut(t, full.labels))
        pretrained = {(t, split): cut(t, self.pretrained[(t, split)]) for t in rows if (t, split) in self.pretrained}
        sub = Evaluator(self.base, self.heads, sets, self.vectors, self.method, chunk=self.chunk, device=self.device,
                        pretrained_cache=pretrained)
        sub._jvps = {k: cut(k[1], v) for k, v in self._jvps.items() if k[2] == split and k[1] in rows}
        sub._logits = {k: cut(k[1], v) for k, v in self._logits.items() if k[2] == split and k[1] in rows}
        return sub

    def edited_model(self, coeffs: Mapping[str, float]) -> Backbone:
        """The edited encoder itself (direct evaluation; used by the non-linear path and tests)."""
        combined = None
        for task, alpha in self._check(coeffs):
            scaled = self.vectors[task] * alpha
            combined = scaled if combined is None else combined + scaled
        if combined is None:
            return self.base
        return combined.apply_to(self.base, 1.0, linearized=self.method.linearized)

    def accuracy(self, task: str, split: str, coeffs: Mapping[str, float]) -> float:
        return accuracy(self.logits(task, split, coeffs), self._set(task, split).labels)

    def accuracies(self, tasks: list[str], split: str, coeffs: Mapping[str, float]) -> dict[str, float]:
        """Accuracy of several tasks under one edit (a non-linear edit is built once)."""
        logits = self.logits_many(list(tasks), split, coeffs)
        return {t: accuracy(logits[t], self._set(t, split).labels) for t in tasks}
