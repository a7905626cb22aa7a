"""`taskvec run --dry-run`: the run's stage graph with each stage's state, and what is missing.

`plan_run(cfg, out)` walks the same graph as `taskvec run` (taskvec.pipeline.build_graph) and
says for each stage whether it is done in the run directory, ready, or missing data, weights
or a device (one line each, naming the folder expected and how to obtain it). Nothing is loaded
beyond directory listings and file headers, and nothing is downloaded or written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from functools import cached_property
from pathlib import Path

from .config import RunConfig
from .errors import TaskvecError
from .stages import State

if TYPE_CHECKING:
    from .stages import Graph


@dataclass
class Need:
    """One thing a stage needs: a dataset, weights, a device."""

    what: str
    present: bool
    detail: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.detail}" if self.detail else self.what


class Needs:
    """What stages need, each looked up once (directory listings, no loading)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._data: dict[str, Need] = {}

    def data(self, names: list[str]) -> list[Need]:
        return [self._data_need(n) for n in dict.fromkeys(names)]

    def head_data(self, names: list[str]) -> list[Need]:
        """Prototype and probe heads read the training data; zero-shot heads only read class
        names, which some datasets (Cars, DTD, SUN397) keep in their files; text heads nothing."""
        kind = self.cfg.head.kind
        if kind == "text":
            return []
        if kind == "zeroshot":
            return [self._data_need(n) for n in dict.fromkeys(names) if not self._data_need(n).present and self._names_from_files(n)]
        return self.data(names)

    def _data_need(self, name: str) -> Need:
        if name not in self._data:
            from .tasks import get_task

            try:
                task = get_task(name, root=self.cfg.data.root)
            except TaskvecError as exc:
                self._data[name] = Need(f"task {name}", False, str(exc))
                return self._data[name]
            messages = task.missing() if task.missing is not None else []
            self._data[name] = Need(f"{name} data", not messages, "; ".join(messages) if messages else task.source or "bundled")
        return self._data[name]

    def _names_from_files(self, name: str) -> bool:
        from .tasks import get_task

        try:
            return get_task(name, root=self.cfg.data.root).num_classes == 0
        except TaskvecError:
            return True

    @cached_property
    def model(self) -> list[Need]:
        cfg, name = self.cfg, self.cfg.backbone
        if name.startswith("hf-clip:"):  # the text tower is needed for the heads even at random init
            return [self._hf_need(f"model {name}", name.partition(":")[2])]
        if cfg.init == "random" or not name.startswith("openclip:"):
            return []
        from .models.openclip import parse_spec, weights_location

        arch, tag = parse_spec(name.partition(":")[2])
        tag = cfg.backbone_options.get("pretrained") or tag
        try:
            present, where = weights_location(arch, tag, cfg.backbone_options.get("weights_dir"))
        except Exception as exc:  # noqa: BLE001 - open_clip missing or broken
            return [Need(f"weights {name}", False, str(exc))]
        how = "" if present else (f" (fetch once where the internet is reachable: python -c \"import open_clip; "
                                  f"open_clip.create_model('{arch}', pretrained='{tag}')\", then copy the cache)")
        return [Need(f"weights {arch}/{tag}", present, f"{where}{how}")]

    def checkpoint(self, source: str) -> list[Need]:
        """A fine-tuned checkpoint of [checkpoints]: a local folder or file, or a cached repo id."""
        return [self._hf_need(f"checkpoint {source}", source)]

    def _hf_need(self, what: str, spec: str) -> Need:
        from .models.hf_clip import fetch_hint, find_local

        found = find_local(spec, self.cfg.backbone_options.get("weights_dir"))
        return Need(what, found is not None, str(found) if found is not None else fetch_hint(spec))

    @cached_property
    def device(self) -> list[Need]:
        import torch

        cfg, needs = self.cfg, []
        if cfg.device.startswith("cuda"):
            ok = torch.cuda.is_available()
            needs.append(Need("CUDA device", ok, f"{torch.cuda.device_count()} visible" if ok else f"device = {cfg.device!r} but torch sees no GPU"))
        for mode, train in cfg.train.modes.items():
            if train.precision == "bf16" and not cfg.device.startswith("cuda"):
                needs.append(Need(f"train.{mode}.precision = bf16", False, "needs device = \"cuda\""))
        return needs


@dataclass
class PlannedStage:
    """A stage of the graph as the dry run sees it."""

    key: str
    title: str
    detail: str
    needs: list[Need] = field(default_factory=list)
    state: State | None = None  # None: no run directory to look in
    problem: str = ""  # an output that exists but cannot be read

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def ready(self) -> bool:
        return all(n.present for n in self.needs)


def plan_run(cfg: RunConfig, out: str | Path | None = None) -> list[PlannedStage]:
    """Every stage of `taskvec run` for this config with what it needs and, given the run
    directory `out`, whether it is done there (and will be skipped)."""
    from .pipeline import RunDir, build_graph

    return plan_graph(cfg, build_graph(cfg, RunDir(out if out is not None else Path("runs/default"))), look=out is not None)


def plan_graph(cfg: RunConfig, graph: "Graph", look: bool = True) -> list[PlannedStage]:
    """The stages of `graph` with what they need and (`look`) whether they are done."""
    needs = Needs(cfg)
    planned = []
    for stage in graph:
        item = PlannedStage(stage.key, stage.title, stage.detail, stage.needs(needs))
        if look:
            try:
                item.state = stage.state()
            except TaskvecError as exc:
                item.problem = str(exc)
        planned.append(item)
    return planned


def check_plan(stages: list[PlannedStage]) -> list[str]:
    """What stands in the way of the run, one line per distinct item (empty when it can start)."""
    seen: dict[str, str] = {}
    for stage in stages:
        if stage.problem:
            seen[stage.problem] = stage.problem
        if stage.done:
            continue
        for need in stage.needs:
            if not need.present and need.what not in seen:
                seen[need.what] = need.line()
    return list(seen.values())


def _state(stage: PlannedStage) -> str:
    if stage.problem:
        return "UNREADABLE OUTPUT"
    if stage.done:
        return "done, skipped"
    if not stage.ready:
        return "MISSING INPUTS"
    return "ready, settings changed: redo" if stage.state is State.REDO else "ready"


def format_plan(cfg: RunConfig, stages: list[PlannedStage]) -> str:
    """The dry-run listing: each stage, its state, what it needs, and what is missing."""
    lines = [f"plan for {cfg.name}: backbone {cfg.backbone} ({cfg.init}), device {cfg.device}, "
             f"data root {cfg.data.root or '$TASKVEC_DATA'}"]
    for i, stage in enumerate(stages, 1):
        lines.append(f"{i:>3}. {stage.title}  [{_state(stage)}]")
        if stage.detail:
            lines.append(f"       {stage.detail}")
        if stage.needs:
            lines.append("       needs: " + ", ".join(f"{n.what} ({'ok' if n.present else 'missing'})" for n in stage.needs))
    missing = check_plan(stages)
    if missing:
        lines.append(f"missing ({len(missing)}):")
        lines.extend(f"  - {m}" for m in missing)
    else:
        lines.append("everything the run needs is present")
    return "\n".join(lines)
