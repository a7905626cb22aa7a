"""`[merge]`: which merge methods a run compares and the grids it searches on validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import TaskvecError
from ..merging import MERGE_METHODS, MergeMethod
from ..typed import check_value

ALPHAS = "alphas"  # the key of a [merge.<method>] table that overrides the method's α grid


def _check_no_alphas_setting(method: MergeMethod) -> None:
    """`alphas` is the α grid's key in a method's table: no method may name a setting so."""
    if any(s.name == ALPHAS for s in method.settings):
        raise TaskvecError(
            f"merge method {method.name!r} declares a setting named {ALPHAS!r}, which [merge.{method.name}] keeps for the α grid"
        )


@dataclass(frozen=True)
class MergeConfig:
    """Which merge methods a run compares and the grids it searches on validation.

    TOML: `[merge] methods = [...]` (default: every registered method, `taskvec list`), and per
    method an optional `[merge.<method>]` table: `<setting> = value or [values]` replaces that
    setting's declared grid, `alphas = [...]` the method's α grid.
    """

    methods: tuple[str, ...] = field(default_factory=lambda: tuple(MERGE_METHODS.names()))
    grids: dict[str, dict[str, list]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise TaskvecError("merge.methods is empty: name at least one merge method")
        if len(set(self.methods)) != len(self.methods):
            raise TaskvecError(f"merge.methods has duplicates: {list(self.methods)}")
        for name in self.methods:
            _check_no_alphas_setting(MERGE_METHODS.get(name))
        for name in self.grids:
            method = MERGE_METHODS.get(name)
            if name not in self.methods:
                raise TaskvecError(f"[merge.{name}] sets a grid for a method that merge.methods leaves out")
            self.settings_grid(method)
            self.alphas(method, [0.0])

    @property
    def kinds(self) -> list[MergeMethod]:
        """The merge methods compared, in the config's order."""
        return [MERGE_METHODS.get(name) for name in self.methods]

    def settings_grid(self, method: MergeMethod) -> list[dict[str, Any]]:
        """Every combination of the method's settings to try on validation."""
        grid = {k: v for k, v in self.grids.get(method.name, {}).items() if k != ALPHAS}
        return method.grid(grid, where=f"merge.{method.name}")

    def alphas(self, method: MergeMethod, default: list[float]) -> list[float]:
        """The α grid of `method`: the config's, else the method's own, else `default` (the run's)."""
        values = self.grids.get(method.name, {}).get(ALPHAS) or list(method.alpha_grid(default))
        for a in values:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
                raise TaskvecError(f"merge.{method.name}.{ALPHAS} must be finite numbers, got {a!r}")
        return [round(float(a), 6) for a in values]

    def seeded(self, seed: int) -> MergeConfig:
        """The config of one seed's run: every seeded setting (DARE's drop masks) offset by `seed`,
        so that the seeds vary the merges' sampling as they vary the splits and fine-tunes."""
        grids = {name: dict(grid) for name, grid in self.grids.items()}
        for method in self.kinds:
            for setting in method.settings:
                if setting.seeded:
                    values = grids.get(method.name, {}).get(setting.name, list(setting.grid) or [setting.default])
                    grids.setdefault(method.name, {})[setting.name] = [int(v) + seed for v in values]
        return MergeConfig(methods=self.methods, grids=grids)

    @classmethod
    def from_table(cls, data: Any, where: str) -> MergeConfig:
        if not isinstance(data, dict):
            raise TaskvecError(f"{where}: expected a table, got {data!r}")
        methods = check_value(data["methods"], tuple[str, ...], f"{where}.methods") if "methods" in data else None
        grids = {}
        for name, table in data.items():
            if name == "methods":
                continue
            if name not in MERGE_METHODS:
                raise TaskvecError(f"unknown key '{where}.{name}'; allowed: methods, {', '.join(MERGE_METHODS.names())}")
            if not isinstance(table, dict):
                raise TaskvecError(f"{where}.{name}: expected a table of settings, got {table!r}")
            grids[name] = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in table.items()}
        return cls(grids=grids) if methods is None else cls(methods=methods, grids=grids)

    def to_table(self) -> dict:
        return {"methods": list(self.methods), **{name: {k: list(v) for k, v in g.items()} for name, g in self.grids.items()}}
