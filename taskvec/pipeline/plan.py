"""`taskvec run --dry-run`: the run's stage graph with each stage's state, and what is missing.

`plan_graph(cfg, graph)` walks the same graph as `taskvec run` (taskvec.protocol builds it) and
says for each stage whether it is done in the run directory, ready, or missing data, weights
or a device (one line each, naming the folder expected and how to obtain it). Nothing is loaded
beyond directory listings and file headers, and nothing is downloaded or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ..config import RunConfig
from ..errors import TaskvecError
from ..models.head_kinds import resolve_head
from ..models.registry import backbone_kind, backbone_needs
from ..needs import Need
from .stages import Graph, State


class Needs:
    """What stages need, each looked up once (directory listings, no loading)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._data: dict[str, Need] = {}

    def data(self, names: list[str]) -> list[Need]:
        return [self._data_need(n) for n in dict.fromkeys(names)]

    def head_data(self, names: list[str]) -> list[Need]:
        """Heads built from training features read the training data; heads built from class
        names read only those, which some datasets (Cars, DTD, SUN397) keep in their files."""
        try:
            kind = backbone_kind(self.cfg.backbone)
        except TaskvecError:  # an unknown backbone: the model's need names it
            return self.data(names)
        head = resolve_head(self.cfg.head.kind, kind.head, kind.modality)
        if head.reads == "class names":
            return [self._data_need(n) for n in dict.fromkeys(names) if not self._data_need(n).present and self._names_from_files(n)]
        return self.data(names)

    def _data_need(self, name: str) -> Need:
        if name not in self._data:
            from ..tasks import get_task

            try:
                task = get_task(name, root=self.cfg.data.root)
            except TaskvecError as exc:
                self._data[name] = Need(f"task {name}", False, str(exc))
                return self._data[name]
            messages = task.missing() if task.missing is not None else []
            self._data[name] = Need(f"{name} data", not messages, "; ".join(messages) if messages else task.source or "bundled")
        return self._data[name]

    def _names_from_files(self, name: str) -> bool:
        from ..tasks import get_task

        try:
            return get_task(name, root=self.cfg.data.root).num_classes == 0
        except TaskvecError:
            return True

    @cached_property
    def model(self) -> list[Need]:
        """What building the backbone needs (weights, a model folder), as its kind reports it."""
        return backbone_needs(self.cfg.backbone, self.cfg.backbone_options, self.cfg.init)

    def checkpoint(self, source: str) -> list[Need]:
        """A fine-tuned checkpoint of [checkpoints]: a local folder or file, or a cached repo id."""
        from ..models.hub import local_need

        return [local_need(f"checkpoint {source}", source, self.cfg.backbone_options.get("weights_dir"))]

    @cached_property
    def device(self) -> list[Need]:
        import torch

        cfg, needs = self.cfg, []
        if cfg.device.startswith("cuda"):
            ok = torch.cuda.is_available()
            needs.append(
                Need("CUDA device", ok, f"{torch.cuda.device_count()} visible" if ok else f"device = {cfg.device!r} but torch sees no GPU")
            )
        for mode, train in cfg.train.modes.items():
            if train.precision == "bf16" and not cfg.device.startswith("cuda"):
                needs.append(Need(f"train.{mode}.precision = bf16", False, 'needs device = "cuda"'))
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


def plan_graph(cfg: RunConfig, graph: Graph, look: bool = True) -> list[PlannedStage]:
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
    lines = [
        f"plan for {cfg.name}: backbone {cfg.backbone} ({cfg.init}), device {cfg.device}, data root {cfg.data.root or '$TASKVEC_DATA'}"
    ]
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
