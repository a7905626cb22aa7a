"""Merge methods: registered procedures that turn several task vectors into one direction d.

A merge method is a `MergeMethod` kind registered once in `MERGE_METHODS` (with the
`merge_method` decorator, as mergekit's `@merge_method`): its name and report label, its declared
hyperparameters (`Setting`s, each with the paper's default and the small grid searched on
validation), the grid of the final coefficient α its paper searches, and the procedure itself.

`merge(vectors, method, **settings)` validates everything and returns the merged *direction* d as
a TaskVector; the edited model is θ0 + α·d with α swept by the caller, exactly as for plain task
addition (for task arithmetic d = Σ_t τ_t).

Procedures stream: they see the vectors parameter by parameter (`MergeInputs.stacked`), so their
working memory is bounded by the largest tensor × the number of tasks. A method that needs a
global statistic (TIES's top-k threshold over a whole vector) computes it in exact streaming
passes (`tensors.kth_largest_magnitude`), never by concatenating whole vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import TaskvecError
from ..lazy import lazy_import
from ..registry import Kind, Registry, Setting, resolve_settings, settings_grid
from ..task_vector import TaskVector

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

Tensors = dict[str, "torch.Tensor"]
# The merges of LoRA adapter-convention vectors: those the L-LoRA paper's code runs on the adapters'
# state-dict deltas (peta evaluate_multi_task_clip.py: evaluate_task_arithmetic l. 244-281,
# ties_merging l. 396-423); the others are written for weight changes and refuse them.
ADAPTER_MERGES = ("task_arithmetic", "ties")


@dataclass(frozen=True)
class MergeInputs:
    """The task vectors' tensors, in the inputs' order, seen one parameter at a time."""

    vectors: tuple[Mapping[str, torch.Tensor], ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, vectors: Sequence[TaskVector]) -> MergeInputs:
        return cls(tuple(v.vector for v in vectors), tuple(vectors[0].vector))

    def __len__(self) -> int:
        return len(self.vectors)

    def stacked(self, name: str) -> torch.Tensor:
        """(T, *shape): every task's tensor for one parameter, in a float type ≥ float32."""
        tensors = [v[name] for v in self.vectors]
        dtype = torch.promote_types(tensors[0].dtype, torch.float32)
        return torch.stack([t.detach().to(dtype) for t in tensors])

    def task(self, index: int) -> Callable[[], Iterator[torch.Tensor]]:
        """A re-iterable stream over one task's tensors (for streaming pre-passes)."""
        vector = self.vectors[index]
        return lambda: (vector[name] for name in self.names)

    def output(self, merged: Tensors) -> Tensors:
        """Cast each merged tensor back to the inputs' dtype, in the inputs' parameter order."""
        first = self.vectors[0]
        return {name: merged[name].to(first[name].dtype) for name in self.names}


Procedure = Callable[..., Tensors]


@dataclass(frozen=True)
class MergeMethod(Kind):
    """A registered merge method.

    `settings`: its declared hyperparameters (defaults and validation grids); `alphas`: the grid
    of the final coefficient α its paper searches on validation (empty: the run's standard
    task-arithmetic grid {0, 0.05, …, 1}); `procedure(inputs, **settings) -> {name: tensor}`.
    """

    settings: tuple[Setting, ...] = ()
    alphas: tuple[float, ...] = ()
    procedure: Procedure | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.procedure is None:
            raise ValueError(f"merge method {self.name!r} has no procedure")

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `given`; unknown or out-of-range values are a TaskvecError."""
        return resolve_settings(self.settings, given, self.name)

    def grid(self, overrides: Mapping[str, Sequence[Any]] | None = None, where: str = "") -> list[dict[str, Any]]:
        """Every settings combination searched on validation (`overrides` replace a setting's grid);
        `where` names the method in errors (default: its name)."""
        return settings_grid(self.settings, overrides or {}, where or self.name)

    def alpha_grid(self, standard: Sequence[float]) -> tuple[float, ...]:
        """The α values to sweep: the method's own grid, else the run's standard one."""
        return self.alphas or tuple(standard)

    def __call__(self, vectors: Sequence[TaskVector], **settings: Any) -> TaskVector:
        return merge(vectors, self, **settings)


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")


def merge_method(
    *,
    name: str,
    label: str,
    color: str,
    reference: str,
    settings: Sequence[Setting] = (),
    alphas: Sequence[float] = (),
    description: str = "",
) -> Callable[[Procedure], MergeMethod]:
    """Register the decorated procedure as a merge method; its docstring's first line is the
    description unless one is given. The decorated name becomes the (callable) MergeMethod."""

    def register(procedure: Procedure) -> MergeMethod:
        doc = (procedure.__doc__ or "").strip().splitlines()
        method = MergeMethod(
            name=name,
            label=label,
            color=color,
            description=description or (doc[0] if doc else ""),
            reference=reference,
            settings=tuple(settings),
            alphas=tuple(float(a) for a in alphas),
            procedure=procedure,
        )
        return MERGE_METHODS.register(method)

    return register


def check_mergeable(vectors: Sequence[TaskVector]) -> None:
    """A non-empty list of task vectors of one base, one mode, and the same parameters and shapes."""
    if not vectors:
        raise TaskvecError("cannot merge an empty list of task vectors")
    first = vectors[0]
    if not isinstance(first, TaskVector):
        raise TypeError(f"cannot merge a {type(first).__name__}; expected TaskVector")
    for other in vectors[1:]:
        first._check_compatible(other)


def merge(vectors: Sequence[TaskVector], method: str | MergeMethod = "task_arithmetic", **settings: Any) -> TaskVector:
    """The merged direction d of `vectors` by `method` (the model is then θ0 + α·d).

    Settings are checked against the method's declared ones; the result has the inputs' mode,
    base and settings (`TaskVector.carried`), their tasks concatenated, and `info["merge"]` =
    method, resolved settings and inputs.
    """
    kind = MERGE_METHODS.get(method)
    resolved = kind.resolve(settings)
    vectors = list(vectors)
    check_mergeable(vectors)
    if vectors[0].adapters and kind.name not in ADAPTER_MERGES:
        raise TaskvecError(
            f"merge method {kind.name} is not implemented for LoRA adapter vectors (arithmetic = 'adapters'): only {', '.join(ADAPTER_MERGES)} are"
        )
    inputs = MergeInputs.of(vectors)
    assert kind.procedure is not None
    with torch.no_grad():
        merged = inputs.output(kind.procedure(inputs, **resolved))
    first = vectors[0]
    info: dict[str, object] = {
        **first.carried(),
        "merge": {"method": kind.name, "settings": resolved, "inputs": [list(v.tasks) for v in vectors]},
    }
    tasks = tuple(task for v in vectors for task in v.tasks)
    return TaskVector(merged, first.mode, dict(first.base), tasks, info)
