"""Registries of named kinds: one definition per concept.

A fine-tuning mode, an evaluation method or a merge method is a frozen dataclass (a `Kind`)
registered once under its name. The CLI's choices, config validation, report labels, figure
colours and `taskvec list` all read the registry; code that needs a kind asks for the object
(`FINETUNE_MODES.get(name)`) and then reads its attributes, instead of comparing strings.

Hyperparameters a kind accepts are declared as `Setting`s: typed, bounded, with a default and
the grid the benchmark searches on validation; `Setting.check` gives the one-line error.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import TaskvecError


@dataclass(frozen=True)
class Kind:
    """What every registered kind carries: its name, how reports show it, where it comes from."""

    name: str
    label: str
    color: str
    description: str = ""
    reference: str = ""

    def __str__(self) -> str:
        return self.name


K = TypeVar("K", bound=Kind)


class Registry(Generic[K]):
    """Kinds of one sort, by name, in registration order (the order reports use)."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, K] = {}

    def register(self, item: K) -> K:
        if item.name in self._items:
            raise ValueError(f"{self.what} {item.name!r} is registered twice")
        self._items[item.name] = item
        return item

    def get(self, name: str | K) -> K:
        """The kind called `name` (a kind passes through); unknown names are a TaskvecError."""
        if isinstance(name, Kind):
            if self._items.get(name.name) is not name:
                raise TaskvecError(f"{self.what} {name.name!r} is not registered")
            return name
        if name not in self._items:
            raise TaskvecError(f"unknown {self.what} {name!r}; available: {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items.values()))

    def __contains__(self, name: object) -> bool:
        return (name.name if isinstance(name, Kind) else name) in self._items

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Setting:
    """A declared hyperparameter: type, range, default and the grid searched on validation.

    `low`/`high` are inclusive bounds; `choices` restricts a str setting; `grid` is what the
    benchmark tries (empty: the default alone). `seeded`: an integer seed of the method's own
    sampling, which each run of a multi-seed benchmark (`--seeds`) offsets by its seed.
    """

    name: str
    type: type
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    grid: tuple[Any, ...] = ()
    seeded: bool = False

    def __post_init__(self) -> None:
        if self.seeded and self.type is not int:
            raise TypeError(f"setting {self.name!r}: only an integer setting can be a seed")
        self.check(self.default, "default")
        for value in self.grid:
            self.check(value, "grid")

    def check(self, value: Any, where: str = "") -> Any:
        """The value, converted to the setting's type, or a one-line TaskvecError naming it."""
        name = f"{where}.{self.name}" if where else self.name
        if self.type is bool:
            if not isinstance(value, bool):
                raise TaskvecError(f"setting {name} must be true or false, got {value!r}")
        elif self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.type is int and not float(value).is_integer()):
                raise TaskvecError(f"setting {name} must be {'an integer' if self.type is int else 'a number'}, got {value!r}")
            value = self.type(value)
            if not math.isfinite(value):
                raise TaskvecError(f"setting {name} must be finite, got {value!r}")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise TaskvecError(f"setting {name} must be{self._bounds()}, got {value!r}")
        elif not isinstance(value, self.type):
            raise TaskvecError(f"setting {name} must be a {self.type.__name__}, got {value!r}")
        if self.choices and value not in self.choices:
            raise TaskvecError(f"setting {name} must be one of {list(self.choices)}, got {value!r}")
        return value

    def parse(self, text: str, where: str = "") -> Any:
        """A value typed on the command line (`--set k=0.2`)."""
        name = f"{where}.{self.name}" if where else self.name
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise TaskvecError(f"setting {name} must be true or false, got {text!r}")
            return lowered in ("true", "1", "yes")
        if self.type in (int, float):
            try:
                number = float(text)
            except ValueError:
                raise TaskvecError(f"setting {name} must be a number, got {text!r}") from None
            return self.check(int(number) if self.type is int and number.is_integer() else number, where)
        return self.check(text, where)

    @property
    def search(self) -> tuple[Any, ...]:
        return self.grid or (self.default,)

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f" ≥ {self.low:g}"
        if self.high is not None:
            return f" ≤ {self.high:g}"
        return ""

    def describe(self) -> str:
        """`k=0.2 (float in [0, 1]; grid 0.1, 0.2, 0.3): doc` for `taskvec list`."""
        bounds = f" of {', '.join(map(str, self.choices))}" if self.choices else self._bounds()
        grid = f"; grid {', '.join(map(_fmt, self.grid))}" if self.grid else ""
        return f"{self.name}={_fmt(self.default)} ({self.type.__name__}{bounds}{grid}): {self.doc}"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def resolve_settings(settings: Sequence[Setting], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Defaults overridden by `given`, each value checked; an unknown name is a TaskvecError."""
    known = {s.name: s for s in settings}
    unknown = sorted(set(given) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise TaskvecError(f"{owner} has no setting {unknown[0]!r}; its settings: {allowed}")
    return {s.name: s.check(given[s.name], owner) if s.name in given else s.default for s in settings}


def parse_settings(settings: Sequence[Setting], items: Sequence[str], owner: str) -> dict[str, Any]:
    """Command-line `name=value` items as checked values; an unknown name is a TaskvecError."""
    known = {s.name: s for s in settings}
    values = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise TaskvecError(f"--set takes name=value, got {item!r}")
        if name not in known:
            resolve_settings(settings, {name: text}, owner)  # raises the one message for unknown names
        values[name] = known[name].parse(text, owner)
    return values


def settings_grid(settings: Sequence[Setting], grids: Mapping[str, Sequence[Any]], owner: str) -> list[dict[str, Any]]:
    """Every combination of the settings' grids (a setting's `grids` entry replaces its own)."""
    known = {s.name: s for s in settings}
    unknown = sorted(set(grids) - set(known))
    if unknown:
        allowed = ", ".join(known) or "none"
        raise TaskvecError(f"{owner} has no setting {unknown[0]!r}; its settings: {allowed}")
    axes = []
    for s in settings:
        values = list(grids[s.name]) if s.name in grids else list(s.search)
        if not values:
            raise TaskvecError(f"{owner}.{s.name}: empty grid")
        axes.append([s.check(v, owner) for v in values])
    return [dict(zip(known, combo)) for combo in itertools.product(*axes)]


def format_settings(values: Mapping[str, Any]) -> str:
    """`k=0.2, p=0.9` (stable, for keys, reports and file metadata)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
