"""A run directory: every path in it, the lock that keeps a second run out, and the check that
it holds a run of the same config (made by `taskvec run` and by its dry run alike)."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CHANGEABLE_SETTINGS, RunConfig
from ..distributed import is_main
from ..errors import TaskvecError
from ..io import read_json, write_json
from ..kinds import FinetuneMode
from ..typed import from_data, to_data

Compared = Callable[[dict], dict]  # drops, from a config as data, what a directory's results do not depend on


class RunDir:
    """Every path of a run directory, in one place."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def head(self, task: str) -> Path:
        return self.root / "heads" / f"{task}.safetensors"

    def vector(self, task: str, mode: FinetuneMode) -> Path:
        return self.root / "vectors" / f"{task}.{mode.name}.safetensors"

    def factors(self, task: str) -> Path:
        """A task's KFAC factors at θ0 (TAK), shipped for the other tasks' fine-tunes."""
        return self.root / "factors" / f"{task}.safetensors"

    def checkpoint(self, task: str, mode: FinetuneMode) -> Path:
        return self.root / "checkpoints" / f"{task}.{mode.name}.safetensors"

    def stage(self, key: object) -> Path:
        return self.root / "stages" / f"{key}.json"

    def nested(self, name: str) -> RunDir:
        return RunDir(self.root / name)

    @contextmanager
    def locked(self, shared: bool = False) -> Iterator[None]:
        """Hold the directory for this run: a second `taskvec run` on it stops at once, naming
        the first. An OS lock (flock), so a killed run never leaves it held. `shared`: fine-tuning
        shards (--shard i/n), which may fill one directory together but not beside a full run.
        Holding it alone, the run removes the writes a killed run left half-done (`.*.tmp`).
        Rank 0 holds it."""
        if not is_main():
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TaskvecError(
                f"{self.root} is in use by another taskvec run ({holder}); wait for it to end or use another --out"
            ) from None
        try:
            if not shared:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
                handle.flush()
                for leftover in self.root.rglob(".*.tmp"):
                    leftover.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def made_for(self, cfg: RunConfig, compared: Compared | None = None) -> MadeFor:
        """This directory as a graph's workspace: it must hold a run of `cfg` (or none yet)."""
        return MadeFor(self, cfg, compared or (lambda data: data))


@dataclass
class MadeFor:
    """A run directory and the config it must have been made with. Some settings may change
    (CHANGEABLE_SETTINGS): the stages they feed record them and are redone. `compared` drops
    what the directory's results do not depend on before comparing."""

    dir: RunDir
    cfg: RunConfig
    compared: Compared
    _current: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._current = to_data(self.cfg)

    def _saved(self) -> dict | None:
        if not self.dir.config.exists():
            return None
        try:
            return to_data(from_data(RunConfig, read_json(self.dir.config)))
        except TaskvecError as exc:
            raise TaskvecError(f"{self.dir.root} holds a run this taskvec cannot read ({exc}); use another --out") from None

    def verify(self) -> None:
        saved = self._saved()
        if saved is None:
            return
        old, new = self.compared(saved), self.compared(self._current)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        # more or other seeds add or drop seed-<s>/ runs; a single run cannot become several
        changeable = CHANGEABLE_SETTINGS | ({"seeds"} if saved.get("seeds") and self._current.get("seeds") else set())
        if set(changed) - changeable:
            raise TaskvecError(f"{self.dir.root} holds a run of a different config (differs in: {', '.join(changed)}); use another --out")

    def stamp(self) -> None:
        if is_main() and self._saved() != self._current:
            self.dir.root.mkdir(parents=True, exist_ok=True)
            write_json(self.dir.config, self._current)
