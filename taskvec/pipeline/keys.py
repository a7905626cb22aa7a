"""The keys of the benchmark's stages, each defined once, with the type of the result a JSON
stage keeps: stages are declared with them and later stages read results back typed."""

from __future__ import annotations

from ..kinds import FinetuneMode
from ..merging import MergeMethod
from ..results import Disentanglement, Linearity, MergeResult, NegationTarget, NtkResult, RandomInitResult, SingleTask
from .stages import ResultKey

HEADS = "heads"
FINETUNE = "finetune/"  # one stage per (task, mode): finetune/<task>.<mode>
SINGLE_TASK: ResultKey[SingleTask] = ResultKey("single_task", SingleTask)
LINEARITY: ResultKey[dict[str, dict[str, Linearity]]] = ResultKey("linearity", dict[str, dict[str, Linearity]])
NEGATION: ResultKey[dict[str, dict[str, NegationTarget]]] = ResultKey("negation", dict[str, dict[str, NegationTarget]])
DISENTANGLEMENT: ResultKey[dict[str, dict[str, Disentanglement]]] = ResultKey("disentanglement", dict[str, dict[str, Disentanglement]])
NTK: ResultKey[NtkResult] = ResultKey("ntk", NtkResult)
RANDOM_INIT: ResultKey[RandomInitResult] = ResultKey("random_init", RandomInitResult)
RANDOM_INIT_RUN = "random_init"  # the random-init ablation's sub-run: its directory and its stages' key prefix
REPORT: ResultKey[list[str]] = ResultKey("report", list[str])


def finetune_key(task: str, mode: FinetuneMode) -> str:
    return f"{FINETUNE}{task}.{mode.name}"


def merge_key(method: MergeMethod) -> ResultKey[dict[str, MergeResult]]:
    """One stage per merge method: its result for every evaluation method of the run."""
    return ResultKey(f"merge/{method.name}", dict[str, MergeResult])
