"""Each mode's step time and peak memory as a finished run's fine-tunes recorded them (÷ non-linear
FT of the same run), with TAK's KFAC-factor time and TaLoS's scoring time: the table of
docs/benchmarks.md, printed from the runs' results.json.

    .venv/bin/python benchmarks/modes_cost_table.py runs/methods/results.json runs/text-methods/results.json
"""

from __future__ import annotations

import statistics
import sys

from taskvec.kinds import FINETUNE_MODES, NONLINEAR
from taskvec.results import RunResults


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _cell(value: float | None, reference: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    ratio = f" ({value / reference:.2f}×)" if reference else ""
    return f"{value:.{digits}f}{ratio}"


def table(path: str) -> list[str]:
    results = RunResults.load(path)
    step = {m: _mean([c.step_ms for c in costs.values()]) for m, costs in results.cost.items()}
    peak = {m: _mean([c.peak_mib for c in costs.values()]) for m, costs in results.cost.items()}
    lines = [
        f"{results.config.name} ({results.config.backbone}), {len(results.tasks)} tasks:",
        "",
        "| mode | step (ms) | peak (MiB) | before the fine-tune, per task |",
        "|---|---|---|---|",
    ]
    for mode in FINETUNE_MODES:
        if mode.name not in results.cost:
            continue
        costs = results.cost[mode.name].values()
        factor_s, factor_mib = _mean([c.factor_seconds for c in costs]), _mean([c.factor_peak_mib for c in costs])
        scoring = _mean([m.seconds for m in results.masks.get(mode.name, {}).values()])
        before = (
            f"KFAC factors {factor_s:.1f} s, {factor_mib:.0f} MiB"
            if factor_s is not None
            else f"mask scoring {scoring:.0f} s"
            if scoring is not None
            else ""
        )
        lines.append(
            f"| {mode.name} | {_cell(step[mode.name], step.get(NONLINEAR.name))} | {_cell(peak[mode.name], peak.get(NONLINEAR.name))} | {before} |"
        )
    return lines + [""]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print("\n".join(table(path)))
