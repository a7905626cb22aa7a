"""A run as a declarative graph of stages, walked by `taskvec run` and by its dry run alike.

A stage names its outputs in the run directory, the settings that invalidate them, what data
and weights it needs (for the dry run) and how to compute it. `state` says whether it is done
(outputs present, readable, made with the same settings); `execute` computes the stages that
are not, in graph order, and reads the results of those that are. JSON stage files keep the
result, the settings and the seconds the stage took, so a resumed run still knows both.

A graph also holds the directories its stages write into, each with the config it must have
been made with (`Workspace`): the run and its dry run check them alike before anything else,
so a directory of another config is refused by both in the same words.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from ..errors import TaskvecError
from ..io import check_tensors, read_json, write_json
from ..needs import Need
from ..typed import check_value, to_data

T = TypeVar("T")


class State(Enum):
    DONE = "done"
    TODO = "to do"
    REDO = "settings changed"


@dataclass(frozen=True)
class ResultKey(Generic[T]):
    """The key of a stage whose result is kept in a JSON stage file, with the result's type:
    stages are declared with it and later stages read the result back typed (`Outcome.get`)."""

    name: str
    type: Any

    def __str__(self) -> str:
        return self.name


class Workspace(Protocol):
    """A directory a graph's stages write into, made for one config."""

    def verify(self) -> None:
        """Raise a TaskvecError when the directory holds a run of another config."""

    def stamp(self) -> None:
        """Record the config in the directory (the run does; the dry run writes nothing)."""


class Context(Protocol):
    """What stages compute with (the pipeline's RunContext); `outcome` collects the result and
    seconds of every stage executed or read so far, for the stages after it."""

    outcome: Outcome

    def log(self, message: str) -> None: ...


@dataclass
class Stage:
    """One unit of work of a run.

    key: unique id, also the stage file's name (`stages/<key>.json`) for JSON stages.
    outputs: files that hold the result; the first is the JSON stage file when `result_type`
        is set (the result is read back as that type), else the outputs are written by
        `compute` itself (task vectors, heads, the report) and only checked to exist and open.
    settings: JSON data the result depends on beyond the run's config; a change redoes it.
    needs: the data, weights and devices it needs (dry run only).
    every_rank: under torchrun, every process runs it (fine-tuning, and the evaluations, which
        share their examples among the ranks); else rank 0 alone (writing the report).
    current: for outputs drawn from other stages (the report), whether they are still newer
        than what they were drawn from.
    """

    key: str
    title: str
    outputs: list[Path]
    compute: Callable[[Any], Any]
    needs: Callable[[Any], list[Need]] = lambda needs: []  # given the dry run's lookups (taskvec.pipeline.plan.Needs)
    settings: Any = None
    result_type: Any = None
    detail: str = ""
    every_rank: bool = False
    after: tuple[str, ...] = ()
    current: Callable[[], bool] | None = None
    record: str | None = None  # the key its stage file records, when `key` carries a sub-run's prefix

    @classmethod
    def keeping(
        cls,
        key: ResultKey,
        title: str,
        outputs: list[Path],
        compute: Callable[[Any], Any],
        needs: Callable[[Any], list[Need]] = lambda needs: [],
        **options: Any,
    ) -> Stage:
        """A stage whose result, of `key`'s type, is kept in its stage file (`outputs[0]`)."""
        return cls(key.name, title, outputs, compute, needs, result_type=key.type, **options)

    @property
    def stored_key(self) -> str:
        return self.record or self.key

    def nested(self, prefix: str, context: Callable[[Any], Any], kept: set[str]) -> Stage:
        """This stage of a sub-run inside a larger graph: its key under `prefix`, computed with
        the sub-run's context (`context(parent context)`), after those of its stages in `kept`."""
        run = self.compute
        return dataclasses.replace(
            self,
            key=prefix + self.key,
            record=self.stored_key,
            title=f"[{prefix.rstrip('/')}] {self.title}",
            compute=lambda parent: run(context(parent)),
            after=tuple(prefix + k for k in self.after if k in kept),
        )

    @property
    def stage_file(self) -> Path | None:
        return self.outputs[0] if self.result_type is not None else None

    def state(self) -> State:
        """DONE, TODO or REDO; a present but unreadable output is a TaskvecError naming it."""
        if not all(p.exists() for p in self.outputs):
            return State.TODO
        if self.stage_file is None:
            for path in self.outputs:
                if path.suffix == ".safetensors":
                    check_tensors(path)
            return State.DONE if self.current is None or self.current() else State.TODO
        saved = read_json(self.stage_file)
        if not isinstance(saved, dict) or saved.get("stage") != self.stored_key or "result" not in saved:
            return State.REDO  # written by an older taskvec: recompute rather than guess
        if saved.get("settings") != to_data(self.settings):
            return State.REDO
        return State.DONE if self.current is None or self.current() else State.TODO

    def _saved_file(self) -> Path:
        """The stage file, which only stages with a result type have (and load or save)."""
        if self.stage_file is None:
            raise TaskvecError(f"stage {self.key} has no result type, so no stage file to load or save")
        return self.stage_file

    def load(self) -> tuple[Any, float | None]:
        """The saved result (typed) and the seconds it took."""
        saved = read_json(self._saved_file())
        try:
            return check_value(saved["result"], self.result_type, self.key), saved.get("seconds")
        except TaskvecError as exc:
            raise TaskvecError(f"corrupt stage file {self.stage_file}: {exc}") from None

    def save(self, result: Any, seconds: float) -> None:
        write_json(
            self._saved_file(),
            {"stage": self.stored_key, "settings": to_data(self.settings), "seconds": seconds, "result": to_data(result)},
        )


@dataclass
class Graph:
    """The stages of one run, in an order where every stage comes after those it reads."""

    stages: list[Stage] = field(default_factory=list)
    workspaces: list[Workspace] = field(default_factory=list)

    def add(self, stage: Stage) -> Stage:
        known = {s.key for s in self.stages}
        if stage.key in known:
            raise ValueError(f"stage {stage.key!r} added twice")
        missing = [k for k in stage.after if k not in known]
        if missing:
            raise ValueError(f"stage {stage.key!r} comes after unknown stages {missing}")
        self.stages.append(stage)
        return stage

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages)

    def __getitem__(self, key: str) -> Stage:
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [s.key for s in self.stages]

    def include(self, sub: Graph, prefix: str, context: Callable[[Any], Any], keep: Callable[[Stage], bool] = lambda s: True) -> None:
        """Add a sub-run's stages (those `keep` selects) under `prefix`; each computes with the
        context that `context` returns for this graph's context."""
        kept = {s.key for s in sub if keep(s)}
        for stage in sub:
            if stage.key in kept:
                self.add(stage.nested(prefix, context, kept))
        self.workspaces.extend(sub.workspaces)

    def verify(self) -> None:
        """Refuse to start (run or dry run) when a directory holds a run of another config."""
        for workspace in self.workspaces:
            workspace.verify()

    def stamp(self) -> None:
        for workspace in self.workspaces:
            workspace.stamp()


@dataclass
class Outcome:
    """What `execute` did: each stage's result and seconds (None where not recorded)."""

    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float | None] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)

    def get(self, key: ResultKey[T], prefix: str = "") -> T:
        """The result of stage `key` (of a sub-run: under its `prefix`), typed."""
        return self.results[prefix + key.name]

    def has(self, key: ResultKey, prefix: str = "") -> bool:
        return prefix + key.name in self.results


def execute(graph: Graph, ctx: Context, *, main: bool = True, select: Callable[[Stage], bool] = lambda s: True) -> Outcome:
    """Compute every selected stage that is not done, in order; read the results of the others.

    `main`: this process is rank 0 (the others run only `every_rank` stages). Rank 0 decides
    whether an `every_rank` stage is done and the others follow, so all compute it together
    (their collectives pair up) or all skip it; deciding also waits for rank 0 to finish the
    stages before, whose files the others may read.
    """
    from ..distributed import agree  # torch: not for the dry run

    outcome = ctx.outcome
    for stage in graph:
        if not select(stage) or not (main or stage.every_rank):
            continue
        state = agree(stage.state() if main else None) if stage.every_rank else stage.state()
        if state is State.DONE:
            ctx.log(f"[skip] {stage.key}: done")
            if stage.stage_file is not None:
                outcome.results[stage.key], outcome.seconds[stage.key] = stage.load()
            continue
        if state is State.REDO:
            ctx.log(f"[redo] {stage.key}: its settings changed")
        started = time.perf_counter()
        result = stage.compute(ctx)
        seconds = round(time.perf_counter() - started, 1)
        if stage.stage_file is not None and main:
            stage.save(result, seconds)
        outcome.results[stage.key], outcome.seconds[stage.key] = result, seconds
        outcome.computed.append(stage.key)
        ctx.log(f"[done] {stage.key} in {seconds:.1f}s")
    return outcome
