"""The paper's claims, each checked against a run's measurements (one run per seed).

A claim compares two quantities measured in every seed's run (`measure` returns the one the
paper says is better first). The verdict follows from their spreads across seeds alone:
holds / does not hold when the mean ± std intervals are disjoint and ordered one way or the
other, inconclusive when they overlap (or with one seed, where there is no spread), not
measured when a run lacks the stage. Nothing in a verdict is written by hand.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from .kinds import LINEARIZED_FT, NONLINEAR_FT, PRETRAINED
from .merging import TASK_ARITHMETIC
from .paper_results import MODELS, TABLE1_ADDITION, TABLE2_NEGATION, TABLE3_RANDOM_INIT
from .registry import Kind, Registry

if TYPE_CHECKING:
    from .results import RunResults

Pair = tuple[float | None, float | None]


@dataclass
class Spread:
    """A quantity over seeds: mean and sample standard deviation of the known values (std None
    with fewer than two) and every seed's value, in the seeds' order (None: not measured)."""

    mean: float | None
    std: float | None
    values: list[float | None]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        known = [float(v) for v in values if v is not None]
        mean = statistics.fmean(known) if known else None
        std = statistics.stdev(known) if len(known) > 1 else None
        return cls(mean, std, [None if v is None else float(v) for v in values])

    @property
    def count(self) -> int:
        return sum(v is not None for v in self.values)

    def interval(self) -> tuple[float, float] | None:
        if self.mean is None or self.std is None:
            return None
        return self.mean - self.std, self.mean + self.std


HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "does not hold", "inconclusive", "not measured"


def verdict(better: Spread, other: Spread, higher_is_better: bool) -> tuple[str, str]:
    """(verdict, reason) for "`better` beats `other`" from their mean ± std intervals."""
    if better.count == 0 or other.count == 0:
        return NOT_MEASURED, "the runs lack this measurement"
    if better.count < 2 or other.count < 2:
        return INCONCLUSIVE, "one seed: no spread to judge a difference by"
    lo_b, hi_b = better.interval()  # type: ignore[misc]
    lo_o, hi_o = other.interval()  # type: ignore[misc]
    if (lo_b > hi_o) if higher_is_better else (hi_b < lo_o):
        return HOLDS, "mean ± std intervals disjoint, in the claimed order"
    if (hi_b < lo_o) if higher_is_better else (lo_b > hi_o):
        return FAILS, "mean ± std intervals disjoint, in the opposite order"
    return INCONCLUSIVE, "mean ± std intervals overlap"


@dataclass(frozen=True)
class Claim(Kind):
    """A claim of the paper: `measure` gives (the side claimed better, the other side) from one
    run; `sides` names them; `unit` is how the values print."""

    paper: str = ""
    metric: str = ""
    sides: tuple[str, str] = ("", "")
    higher_is_better: bool = True
    points: bool = True  # values are accuracies (printed in %) rather than raw numbers
    measure: Callable[[RunResults], Pair] = lambda r: (None, None)


def _paper(table: dict, better, other, index: int = 0) -> str:
    return ", ".join(f"{m} {table[better][m][index]:.1f} vs {table[other][m][index]:.1f}" for m in MODELS)


def _addition(r: RunResults) -> Pair:
    add = r.merge.get(TASK_ARITHMETIC.name, {})
    get = lambda m: add[m.name].absolute if m.name in add else None  # noqa: E731
    return get(LINEARIZED_FT), get(NONLINEAR_FT)


def _negation(r: RunResults) -> Pair:
    get = lambda m: r.negation[m.name].target if m.name in r.negation else None  # noqa: E731
    return get(LINEARIZED_FT), get(NONLINEAR_FT)


def _disentanglement(r: RunResults) -> Pair:
    if not r.disentanglement:
        return None, None
    pair = next(iter(r.disentanglement.values()))
    get = lambda m: pair[m.name].mean() if m.name in pair else None  # noqa: E731
    return get(LINEARIZED_FT), get(NONLINEAR_FT)


def _single_task(r: RunResults) -> Pair:
    get = lambda m: r.mean_single(m) if m.name in r.single_task.test else None  # noqa: E731
    return get(NONLINEAR_FT), get(LINEARIZED_FT)


def _ntk(r: RunResults) -> Pair:
    if r.ntk is None:
        return None, None
    get = lambda label: r.ntk.models[label].localization if label in r.ntk.models else None  # noqa: E731
    return get("pre-trained"), get("random init")


def _addition_gain(r: RunResults) -> Pair:
    """Task addition's gain over its own θ0 (non-linear FT), from pre-trained and from random init."""
    add = r.merge.get(TASK_ARITHMETIC.name, {}).get(NONLINEAR_FT.name)
    pre = None if add is None else add.absolute - r.mean_single(PRETRAINED)
    ri = r.random_init
    rand = (
        None if ri is None or NONLINEAR_FT.name not in ri.multi_task else ri.multi_task[NONLINEAR_FT.name] - ri.single_task[PRETRAINED.name]
    )
    return pre, rand


CLAIMS: Registry[Claim] = Registry("claim")
CLAIMS.register(
    Claim(
        name="adds-better",
        label="Linearized FT adds better",
        color="#2ca02c",
        paper="Table 1, absolute: " + _paper(TABLE1_ADDITION, LINEARIZED_FT, NONLINEAR_FT),
        metric="task addition, absolute test accuracy",
        sides=("linearized FT", "non-linear FT"),
        measure=_addition,
    )
)
CLAIMS.register(
    Claim(
        name="negates-better",
        label="Linearized FT negates better",
        color="#2ca02c",
        paper="Table 2, target ↓: " + _paper(TABLE2_NEGATION, LINEARIZED_FT, NONLINEAR_FT),
        metric="task negation, mean target test accuracy (lower is better)",
        sides=("linearized FT", "non-linear FT"),
        higher_is_better=False,
        measure=_negation,
    )
)
CLAIMS.register(
    Claim(
        name="disentangled",
        label="Linearized FT is more weight-disentangled",
        color="#2ca02c",
        paper="Fig. 3: ξ of linearized FT is low over a wider region of (α1, α2)",
        metric="mean ξ over the grid, first task pair (lower is better)",
        sides=("linearized FT", "non-linear FT"),
        higher_is_better=False,
        points=False,
        measure=_disentanglement,
    )
)
CLAIMS.register(
    Claim(
        name="nonlinear-advantage",
        label="Non-linear FT is better on single tasks",
        color="#1f77b4",
        paper='Fig. 2: linearized FT has lower single-task accuracy than non-linear FT (the "non-linear advantage")',
        metric="mean single-task test accuracy",
        sides=("non-linear FT", "linearized FT"),
        measure=_single_task,
    )
)
CLAIMS.register(
    Claim(
        name="ntk-localized",
        label="NTK eigenfunctions are more localized after pre-training",
        color="#9467bd",
        paper="Fig. 6: pre-trained CLIP's eigenfunctions split by support, a random ViT's do not",
        metric="NTK localization (1 = each eigenfunction on one task)",
        sides=("pre-trained", "random init"),
        points=False,
        measure=_ntk,
    )
)
CLAIMS.register(
    Claim(
        name="random-init-fails",
        label="From random init, addition fails",
        color="#8c564b",
        paper="Table 3, non-linear FT multi-task − θ0: "
        + ", ".join(
            f"{m} {TABLE1_ADDITION[NONLINEAR_FT][m][0] - TABLE1_ADDITION[PRETRAINED][m][0]:+.1f} pre-trained vs "
            # the paper gives non-linear FT's multi-task accuracy for every model (only θ0's rows hold None)
            f"{cast(float, TABLE3_RANDOM_INIT[NONLINEAR_FT][m][1]) - TABLE3_RANDOM_INIT[PRETRAINED][m][0]:+.1f} random init"
            for m in MODELS
        ),
        metric="task addition's gain over its θ0 (non-linear FT, points)",
        sides=("from pre-trained", "from random init"),
        measure=_addition_gain,
    )
)


@dataclass
class ClaimCheck:
    """One claim against the runs: both sides over seeds, the verdict and why."""

    claim: str
    better: Spread
    other: Spread
    verdict: str
    reason: str


def check_claims(runs: Sequence[RunResults]) -> list[ClaimCheck]:
    """Every registered claim against the runs (one per seed)."""
    checks = []
    for claim in CLAIMS:
        pairs = [claim.measure(r) for r in runs]
        better, other = Spread.of([a for a, _ in pairs]), Spread.of([b for _, b in pairs])
        v, reason = verdict(better, other, claim.higher_is_better)
        checks.append(ClaimCheck(claim.name, better, other, v, reason))
    return checks


def format_spread(s: Spread, points: bool) -> str:
    if s.mean is None:
        return "–"
    scale, digits = (100.0, 1) if points else (1.0, 3)
    text = f"{scale * s.mean:.{digits}f}"
    return text + (f" ± {scale * s.std:.{digits}f}" if s.std is not None and math.isfinite(s.std) else "")


def claims_table(checks: list[ClaimCheck], seeds: int) -> list[str]:
    """The report's claims section (markdown lines)."""
    lines = [
        "## The paper's claims, checked",
        "",
        f"Each row compares two measurements of these runs ({seeds} seed{'s' if seeds != 1 else ''}; mean ± sample std). "
        "Verdict: **holds** / **does not hold** when the mean ± std intervals are disjoint (in the claimed order / the other), "
        "**inconclusive** when they overlap or with one seed, **not measured** when the run lacks the stage "
        "(`--analyses` adds ξ, the NTK and random init). Generated from the results, not written by hand.",
        "",
        "| claim | paper's evidence | our metric | ours: claimed better | ours: other | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for check in checks:
        claim = CLAIMS.get(check.claim)
        lines.append(
            f"| {claim.label} | {claim.paper} | {claim.metric} | {claim.sides[0]}: {format_spread(check.better, claim.points)} | "
            f"{claim.sides[1]}: {format_spread(check.other, claim.points)} | **{check.verdict}** ({check.reason}) |"
        )
    return lines + [""]
