"""Accuracy of edited models, with exact fast sweeps for linearized ones.

For a linearized model, f_lin(x; θ0 + Σ α_t τ_t) = f(x; θ0) + Σ α_t J(x; θ0) τ_t is linear in
the α's. So `Evaluator` computes f(x; θ0) and one Jacobian-vector product J τ_t per vector and
evaluation set once, and then scores any combination of α's with a few additions. Non-linear
models have no such shortcut: each distinct edit is one forward pass per evaluation set, and
its features are cached so that a sweep never recomputes an edit it has seen.

Under torchrun an evaluator shares every evaluation set among the ranks (`Ranks`): each rank
encodes, differentiates and applies heads to its own contiguous run of whole chunks (so its
cached f(x; θ0), J τ and logits stay where they were computed), and accuracies are integer
counts summed over the ranks. All per-row work happens in chunks of the same global grid in
one process and in many, so results are identical, not just close.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import torch

from .distributed import Ranks
from .errors import TaskvecError, finite
from .kinds import EVAL_METHODS, EvalMethod
from .linearization import jvp, preferred_layout
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
def encode_jvp(
    base: Backbone, vector: Mapping[str, torch.Tensor], inputs: Batch, chunk: int = 256, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
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


def correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """How many rows the logits classify right (counts add up exactly across shards)."""
    return int((logits.argmax(-1) == labels).sum())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return correct(logits, labels) / len(labels) if len(labels) else float("nan")


def _key(coeffs: Mapping[str, float]) -> tuple:
    return tuple(sorted((t, round(float(a), 10)) for t, a in coeffs.items() if float(a) != 0.0))


class Evaluator:
    """Accuracy of θ0 + Σ α_t τ_t on any (task, split), for one evaluation method.

    The method (a registered `EvalMethod` or its name) says which mode's vectors it takes and
    whether they edit f or f_lin (non-linear FT, post-hoc linearization, linearized FT). The
    vectors are keyed by name: a task, or any direction added later (`add_vector`), such as a
    merged vector. Pre-trained features are shared between evaluators through
    `pretrained_cache` so θ0 is encoded once per evaluation set.

    On f_lin (`edits_f_lin`), vectors sharing one α are combined before the product:
    J (Σ_t τ_t) is one JVP per evaluation set, so a whole addition sweep costs one JVP per set
    (or none, when the single-vector products are already cached and can simply be summed).

    `ranks` (default: this process alone) shares every set among processes: this rank computes
    and caches its own rows (`local`), `logits` are those rows' logits, and `accuracies` sum
    the ranks' counts, so every rank gets the same numbers and makes the same choices. Every
    rank must then make the same calls in the same order.
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
        ranks: Ranks | None = None,
    ):
        self.method = EVAL_METHODS.get(method)
        self.base, self.heads, self.sets, self.vectors = base, heads, sets, dict(vectors)
        self.chunk, self.device = chunk, device
        self.ranks = ranks if ranks is not None else Ranks()
        for key, vector in self.vectors.items():
            self._check_vector(key, vector)
        # θ0's features of this rank's rows per (task, split); shared by evaluators with the same ranks and chunk
        self.pretrained = pretrained_cache if pretrained_cache is not None else {}
        self._local: dict[tuple[str, str], EvalSet] = {}
        self._logits: dict[tuple, torch.Tensor] = {}  # (edit key, task, split) -> logits (non-linear)
        self._jvps: dict[tuple, torch.Tensor] = {}  # (vector tasks (sorted tuple), task, split) -> J Σ τ
        self.forward_passes = 0  # evaluation-set encodings (for benchmarks; counted alike on every rank)

    def _check_vector(self, key: str, vector: TaskVector) -> None:
        method = self.method
        if method.vectors is None:
            raise TaskvecError(f"method {method.name} evaluates θ0 alone; it takes no task vectors")
        if vector.mode != method.vectors:
            raise TaskvecError(f"method {method.name} needs {method.vectors.name} task vectors; {key!r} is {vector.mode.name}")
        first = next(iter(self.vectors.values()), vector)
        if vector.applies_to_f_lin != first.applies_to_f_lin:
            edits = ["f_lin" if v.applies_to_f_lin else "f" for v in (vector, first)]
            raise TaskvecError(f"task vector {key!r} edits {edits[0]}, the evaluator's other vectors {edits[1]}")
        if vector.adapters and self.method.post_hoc:
            raise TaskvecError(
                f"task vector {key!r} holds LoRA adapters (not affine in α): post-hoc linearization needs arithmetic = 'weights'"
            )
        identity = base_identity(self.base)
        if vector.base != identity:  # the JVP path never builds an edited model, so check here
            raise TaskvecError(f"task vector {key!r} was made from base {vector.base}, not from this model {identity}")

    @property
    def edits_f_lin(self) -> bool:
        """Whether edits are evaluated on f_lin (J τ products, linear in α) rather than on an
        edited f (point by point): under post-hoc linearization, or for vectors that live in the
        tangent space (`TaskVector.applies_to_f_lin`; an evaluator's vectors all agree)."""
        if self.method.post_hoc or not self.vectors:
            return self.method.linearized
        return next(iter(self.vectors.values())).applies_to_f_lin

    def add_vector(self, key: str, vector: TaskVector) -> None:
        """Make another direction (e.g. a merged vector) available to edits under `key`.
        Sharded, rank 0's values replace the others' (in place): every rank evaluates the same
        direction bit for bit even where a merge's arithmetic differs between devices."""
        if key in self.vectors:
            raise TaskvecError(f"the evaluator already holds a vector {key!r}")
        self._check_vector(key, vector)
        self.ranks.broadcast(vector.vector)
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

    def size(self, task: str, split: str) -> int:
        """Rows of the whole set (all ranks together)."""
        return len(self._set(task, split))

    def local(self, task: str, split: str) -> EvalSet:
        """This rank's rows of an evaluation set (all of it in one process)."""
        key = (task, split)
        if key not in self._local:
            full = self._set(task, split)
            start, stop = self.ranks.span(len(full), self.chunk)
            if (start, stop) == (0, len(full)):
                self._local[key] = full
            else:
                self._local[key] = EvalSet({k: v[start:stop] for k, v in full.inputs.items()}, full.labels[start:stop])
        return self._local[key]

    def _features_dim(self, task: str) -> int:
        return self.heads[task].weight.shape[1]

    def _encode(self, encoder: torch.nn.Module | None, task: str, split: str) -> torch.Tensor:
        """Features of this rank's rows (a rank without rows runs nothing, and needs no encoder)."""
        data = self.local(task, split)
        if not len(data):
            return torch.empty(0, self._features_dim(task))
        assert encoder is not None, "callers pass an encoder whenever this rank has rows"
        return encode(encoder, data.inputs, self.chunk, self.device)

    def apply_head(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """The task's head, applied chunk by chunk of the global grid (this rank's rows start on
        a chunk boundary), so a row's logits never depend on how the set was shared."""
        head = self.heads[task]
        if not len(features):
            return features.new_empty((0, head.num_classes))
        return self.by_chunks(head, features)

    def by_chunks(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """`fn` applied to this rank's rows chunk by chunk of the global grid: a row's result is
        then the same whichever rank computes it (batched kernels may round by batch shape)."""
        return torch.cat([fn(part) for part in rows.split(self.chunk)])

    def pretrained_features(self, task: str, split: str) -> torch.Tensor:
        """θ0's features of this rank's rows."""
        if (task, split) not in self.pretrained:
            self.pretrained[(task, split)] = self._encode(self.base, task, split)
            self.forward_passes += 1
        return self.pretrained[(task, split)]

    def _jvp(self, vector_tasks: tuple[str, ...], task: str, split: str) -> torch.Tensor:
        """J(x; θ0) Σ_{t ∈ vector_tasks} τ_t on this rank's rows of one evaluation set, cached."""
        key = (vector_tasks, task, split)
        if key in self._jvps:
            return self._jvps[key]
        singles = [((t,), task, split) for t in vector_tasks]
        if len(vector_tasks) > 1 and all(k in self._jvps for k in singles):
            # linearity: no new pass (a sum of two or more tensors, never sum()'s int 0)
            product = cast("torch.Tensor", sum(self._jvps[k] for k in singles))
        else:
            vectors = [self.vectors[t].vector for t in vector_tasks]
            # sums of two or more tensors, never sum()'s int 0
            summed = {n: cast("torch.Tensor", sum(v[n] for v in vectors)) for n in vectors[0]} if len(vectors) > 1 else vectors[0]
            data = self.local(task, split)
            if len(data):
                f0, product = encode_jvp(self.base, summed, data.inputs, self.chunk, self.device)
            else:
                f0 = product = torch.empty(0, self._features_dim(task))
            self.pretrained.setdefault((task, split), f0)
            self.forward_passes += 1
        self._jvps[key] = product
        return product

    def prepare_products(self, vectors: list[str], tasks: list[str], split: str) -> None:
        """J τ of each vector on each task's set, computed now (f_lin methods; else nothing), so
        that later edits of these vectors cost additions only, whichever rank makes them."""
        if self.edits_f_lin:
            for vector in vectors:
                for task in tasks:
                    self._jvp((vector,), task, split)

    def _check(self, coeffs: Mapping[str, float]) -> tuple:
        unknown = set(coeffs) - set(self.vectors)
        if unknown:
            raise TaskvecError(f"no task vector for {sorted(unknown)}")
        for task, alpha in coeffs.items():
            finite(alpha, f"the coefficient α of {task}")
        return _key(coeffs)

    def logits(self, task: str, split: str, coeffs: Mapping[str, float]) -> torch.Tensor:
        """Task `task`'s head on the edited features of this rank's rows. Non-linear results
        are cached per edit."""
        return self.logits_many([task], split, coeffs)[task]

    def logits_many(self, tasks: list[str], split: str, coeffs: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Logits of this rank's rows of several tasks under one edit; a non-linear edit is
        built once for all (and not at all on a rank without rows)."""
        key = self._check(coeffs)
        if not key:
            return {t: self.apply_head(t, self.pretrained_features(t, split)) for t in tasks}
        if not self.edits_f_lin:
            missing = [t for t in tasks if (key, t, split) not in self._logits]
            if missing:
                edited = channels_last(self.edited_model(coeffs)) if any(len(self.local(t, split)) for t in missing) else None
                for t in missing:
                    self._logits[(key, t, split)] = self.apply_head(t, self._encode(edited, t, split))
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
            out[t] = self.apply_head(t, features)
        return out

    def restricted(self, rows: Mapping[str, torch.Tensor | None], split: str, ranks: Ranks | None = None) -> Evaluator:
        """An evaluator of the same edits on a subset of rows of each task's `split` set.

        Rows are independent (encoders run in eval mode), so everything already computed on the
        full sets (θ0 features, JVPs, non-linear logits) is sliced and reused, not recomputed.
        `rows[task]` is an index tensor of global rows, or None to keep the whole set. Sharded,
        the subset is shared among the ranks by its own chunk grid, and the cached rows move to
        the rank that now evaluates them (a collective: every rank calls this together);
        `ranks=Ranks()` gives every rank the whole subset instead.
        """
        sets = {}
        for t in rows:
            full = self._set(t, split)
            index = rows[t]
            sets[(t, split)] = full if index is None else EvalSet({k: v[index] for k, v in full.inputs.items()}, full.labels[index])
        sub = Evaluator(
            self.base,
            self.heads,
            sets,
            self.vectors,
            self.method,
            chunk=self.chunk,
            device=self.device,
            pretrained_cache={},
            ranks=self.ranks if ranks is None else ranks,
        )
        for (t, s), values in self.pretrained.items():
            if s == split and t in rows:
                sub.pretrained[(t, split)] = self._rows_for(sub, t, split, rows[t], values)
        sub._jvps = {k: self._rows_for(sub, k[1], split, rows[k[1]], v) for k, v in self._jvps.items() if k[2] == split and k[1] in rows}
        sub._logits = {
            k: self._rows_for(sub, k[1], split, rows[k[1]], v) for k, v in self._logits.items() if k[2] == split and k[1] in rows
        }
        return sub

    def _rows_for(self, sub: Evaluator, task: str, split: str, index: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
        """`sub`'s share of the subset `index` of a tensor this evaluator holds for its own rows."""
        if index is None:
            if sub.ranks == self.ranks:
                return values  # the same set, shared alike
            index = torch.arange(self.size(task, split))
        if not self.ranks.sharded:
            return values[index]
        index = torch.as_tensor(index, dtype=torch.long)
        spans = self.ranks.spans(self.size(task, split), self.chunk)
        held = [(index >= a) & (index < b) for a, b in spans]  # which subset rows each rank holds
        start = spans[self.ranks.index][0]
        # every rank's subset rows, in rank order, then put back in the subset's order
        gathered = self.ranks.gather(values[index[held[self.ranks.index]] - start], [int(m.sum()) for m in held])
        order = torch.cat([torch.nonzero(m).flatten() for m in held])
        subset = torch.empty_like(gathered)
        subset[order] = gathered
        a, b = sub.ranks.span(len(index), sub.chunk)
        return subset[a:b]

    def edited_model(self, coeffs: Mapping[str, float]) -> Backbone:
        """The edited encoder itself (direct evaluation; used by the non-linear path and tests)."""
        combined = None
        for task, alpha in self._check(coeffs):
            scaled = self.vectors[task] * alpha
            combined = scaled if combined is None else combined + scaled
        if combined is None:
            return self.base
        return combined.apply_to(self.base, 1.0, linearized=self.edits_f_lin)

    def correct(self, tasks: list[str], split: str, coeffs: Mapping[str, float]) -> dict[str, int]:
        """Rows classified right under one edit, per task, summed over the ranks."""
        logits = self.logits_many(list(tasks), split, coeffs)
        counts = torch.tensor([correct(logits[t], self.local(t, split).labels) for t in tasks], dtype=torch.long)
        return dict(zip(tasks, self.ranks.total(counts).tolist()))

    def accuracy(self, task: str, split: str, coeffs: Mapping[str, float]) -> float:
        return self.accuracies([task], split, coeffs)[task]

    def accuracies(self, tasks: list[str], split: str, coeffs: Mapping[str, float]) -> dict[str, float]:
        """Accuracy of several tasks under one edit (a non-linear edit is built once)."""
        counts = self.correct(list(tasks), split, coeffs)
        return {t: counts[t] / n if (n := self.size(t, split)) else float("nan") for t in tasks}
