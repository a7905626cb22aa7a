"""What a run measured, as typed objects that round-trip through results.json.

Keys that name a kind (an evaluation method, a merge method) hold its registered name, so the
file is plain JSON; code looks the kind up in its registry. The report draws every table and
figure from a `RunResults` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .errors import TaskvecError
from .io import read_json, write_json
from .kinds import PRETRAINED, EvalMethod
from .typed import from_data, to_data

FORMAT = "taskvec.results/2"


@dataclass
class TaskScore:
    accuracy: float
    normalized: float | None = None


@dataclass
class AlphaPoint:
    """One α of a validation sweep of θ0 + α·d."""

    alpha: float
    val_per_task: dict[str, float]
    val_absolute: float
    val_normalized: float


@dataclass
class SearchPoint:
    """One setting combination of a merge method tried on validation, at its best α."""

    settings: dict[str, Any]
    alpha: float
    val_normalized: float
    merge_seconds: float


@dataclass
class MergeResult:
    """A merge method's multi-task model for one evaluation method: settings and α chosen on
    validation by mean normalized accuracy, accuracies on test. `curve` is the validation sweep
    at the chosen settings; `search` every setting combination tried; `seconds` the merges and
    the selection (validation sweeps) for this evaluation method."""

    alpha: float
    absolute: float
    normalized: float
    per_task: dict[str, TaskScore]
    settings: dict[str, Any]
    seconds: float
    curve: list[AlphaPoint]
    search: list[SearchPoint] = field(default_factory=list)


@dataclass
class NegationPoint:
    alpha: float
    target_val: float
    control_val: float


@dataclass
class NegationTarget:
    """θ0 − α τ_target with α chosen on validation under the control constraint; test accuracies.
    α, target and control are None when no α of the grid keeps the control (infeasible)."""

    alpha: float | None
    control_task: str
    target: float | None
    control: float | None
    curve: list[NegationPoint] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return self.alpha is not None


@dataclass
class NegationResult:
    """Mean target and control test accuracy over the targets with a feasible α (None if there
    is none), each target's choice, and the targets without a feasible α."""

    target: float | None
    control: float | None
    per_task: dict[str, NegationTarget]
    infeasible: list[str] = field(default_factory=list)


@dataclass
class SingleTask:
    """Accuracy of each task's own model (α = 1) per evaluation method; θ0's also on controls."""

    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]


@dataclass
class RandomInitResult:
    """Table 3: mean single-task and multi-task (task-arithmetic addition) test accuracy from a
    randomly initialized backbone (a full run in `run_dir`)."""

    run_dir: str
    single_task: dict[str, float]
    multi_task: dict[str, float]
    alpha: dict[str, float]
    heads: str = ""  # what the random run's heads were built from (e.g. the pre-trained text encoder)


@dataclass
class Disentanglement:
    """ξ(α1, α2) of two tasks for one evaluation method; xi[i][j] = ξ(alphas1[i], alphas2[j]).
    xi_terms holds the two summands per task (same layout), examples the inputs per task."""

    task1: str
    task2: str
    alphas1: list[float]
    alphas2: list[float]
    xi: list[list[float]]
    method: str
    split: str
    xi_terms: dict[str, list[list[float]]]
    examples: dict[str, int]
    seconds: float
    forward_passes: int

    def mean(self, box: tuple[float, float] | None = None) -> float:
        """Mean ξ over the grid, or over the cells whose α1 and α2 both lie in `box` (lo, hi),
        e.g. the addition search range (0, 1)."""
        xi = np.asarray(self.xi, dtype=float)
        if box is None:
            return float(xi.mean())
        lo, hi = box
        rows = [i for i, a in enumerate(self.alphas1) if lo <= a <= hi]
        cols = [j for j, a in enumerate(self.alphas2) if lo <= a <= hi]
        return float(xi[np.ix_(rows, cols)].mean())


@dataclass
class NtkLocalization:
    """Top eigenfunctions of the NTK Gram matrix on D_t ∪ D_c and their energy on each support."""

    localization: float
    eigenvalues: list[float]
    eigenvalue_share: list[float]
    energy_train: list[float]
    energy_control: list[float]
    n_train: int
    n_control: int
    trace_share_train: float = 0.0


@dataclass
class NtkResult:
    """Fig. 6: localization for each model (pre-trained, random init) on one pair of tasks."""

    train_task: str
    control_task: str
    models: dict[str, NtkLocalization]


@dataclass
class FinetuneCost:
    """What one fine-tune cost (taskvec.finetuning.cost): wall seconds, median step time, the
    peak memory it added (`memory` says what was counted), and how many entries it trained (φ)
    and could change in θ; `penalty`: a penalized mode's effective penalty (form, λ, datasets,
    examples each; taskvec.finetuning.penalty.EffectivePenalty.describe). TAK: `factor_seconds`/
    `factor_peak_mib`, what computing the task's own KFAC factors at θ0 (shipped for the other
    tasks' fine-tunes) cost, on top."""

    seconds: float | None = None
    step_ms: float | None = None
    peak_mib: float | None = None
    memory: str | None = None
    trained_entries: int | None = None
    changed_entries: int | None = None
    penalty: str | None = None
    factor_seconds: float | None = None
    factor_peak_mib: float | None = None


@dataclass
class MaskStats:
    """How a sparse fine-tune chose its entries (TaLoS: taskvec.finetuning.sensitivity.mask_stats):
    the fraction of the candidate entries requested and really trained (entries tied at the
    threshold are all trained), the fraction scoring exactly 0 at θ0, the last round's
    threshold, the score and rounds used, the seconds the scoring and calibration took (before
    the fine-tune, so not in its cost), and each candidate tensor's fraction trained."""

    requested: float
    trained: float
    candidates: int
    zero_score: float | None = None
    threshold: float | None = None
    rounds: int | None = None
    score: str | None = None
    examples: int | None = None
    seconds: float | None = None
    per_tensor: dict[str, float] = field(default_factory=dict)


@dataclass
class Linearity:
    """f(θ0 + τ) against its linearization f_lin(θ0 + τ) on a task's validation set
    (taskvec.analysis.linearity): both accuracies and the relative distance of their logits."""

    nonlinear: float
    linearized: float
    relative_gap: float


@dataclass
class Timing:
    """Seconds each part took when it was computed (possibly by an earlier, resumed run)."""

    finetune: dict[str, float | None] = field(default_factory=dict)
    stages: dict[str, float | None] = field(default_factory=dict)


@dataclass
class RunResults:
    config: RunConfig
    tasks: list[str]
    single_task: SingleTask
    merge: dict[str, dict[str, MergeResult]]  # merge method -> evaluation method -> result
    negation: dict[str, NegationResult]  # evaluation method (pre-trained included) -> result
    disentanglement: dict[str, dict[str, Disentanglement]] | None = None  # "t1+t2" -> method -> ξ
    ntk: NtkResult | None = None
    random_init: RandomInitResult | None = None
    seconds: float | None = None
    timing: Timing = field(default_factory=Timing)
    cost: dict[str, dict[str, FinetuneCost]] = field(default_factory=dict)  # mode -> task -> its fine-tune's cost
    masks: dict[str, dict[str, MaskStats]] = field(default_factory=dict)  # sparse mode -> task -> how its mask was chosen
    linearity: dict[str, dict[str, Linearity]] | None = None  # non-linearly trained mode -> task -> gap
    format: str = FORMAT

    def mean_single(self, method: EvalMethod, split: str = "test") -> float:
        table = getattr(self.single_task, split)[method.name]
        return sum(table[t] for t in self.tasks) / len(self.tasks)

    def pretrained_addition(self) -> TaskScore:
        """θ0's mean test accuracy on the tasks: the pre-trained row of the addition table."""
        return TaskScore(self.mean_single(PRETRAINED), None)

    def save(self, path: str | Path) -> None:
        write_json(path, to_data(self))

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        return load_results(
            cls,
            path,
            FORMAT,
            "results of another taskvec version",
            "run `taskvec run` on its directory again: finished fine-tunes are reused",
        )


def load_results(cls: type, path: str | Path, expected: str, other: str, advice: str = "") -> Any:
    """A typed results file whose `format` must be `expected`; `other` and `advice` word the error."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != expected:
        found = data.get("format") if isinstance(data, dict) else None
        raise TaskvecError(f"{path} holds {other} (format {found!r}, expected {expected!r})" + (f"; {advice}" if advice else ""))
    try:
        return from_data(cls, data)
    except TaskvecError as exc:
        raise TaskvecError(f"corrupt results file {path}: {exc}") from None
