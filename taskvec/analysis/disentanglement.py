"""Weight disentanglement error ξ(α1, α2) of two task vectors (the paper's Fig. 3).

    ξ(α1, α2) = Σ_{t=1,2} E_{x∼D_t}[ 1( pred_t(x; θ0 + α_t τ_t) ≠ pred_t(x; θ0 + α1 τ1 + α2 τ2) ) ]

where pred_t is the argmax of task t's head on the (edited) features. ξ is 0 when adding the
other task's vector never changes a task's predictions on its own support (perfect weight
disentanglement) and at most 2. ξ(0, 0) = 0; ξ(α1, 0) and ξ(0, α2) measure how much one
vector alone disturbs the other task relative to θ0.

All edits go through an `Evaluator`, so the three methods share one code path:

- post-hoc / linearized FT (methods on f_lin): the evaluator computes f(x; θ0) and one JVP J τ_t per (vector, eval
  set), i.e. 2 forward passes and 4 JVPs for a pair of tasks, whatever the grid; every grid
  point is then a few additions. If the evaluator already holds those on the full eval sets
  (e.g. after the addition sweep), they are sliced and ξ costs no pass through the network.
- non-linear FT (on f): every distinct (α1, α2) edit is one forward pass of the edited model per eval
  set, plus building that edited model once (a deep copy and a weight update: for
  EfficientNet-Lite0 about as costly as a forward pass of 200 images at 32 px). A 13×13 grid
  is 169 model builds and 2 × 169 forward passes of `max_examples` inputs, minutes on a CPU
  for EfficientNet-Lite0; keep `max_examples` small (200 by default).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import alpha_grid
from ..distributed import Ranks
from ..errors import TaskvecError
from ..evaluate import Evaluator
from ..kinds import EVAL_METHODS
from ..results import Disentanglement


def disentanglement_grid(start: float = -3.0, stop: float = 3.0, step: float = 0.5) -> list[float]:
    """The α values of one axis of the ξ heatmap: [−3, 3] in steps of 0.5 (13 values) by default."""
    return alpha_grid(start, stop, step)


def _subset_index(n: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """A seeded random subset of `limit` of n rows (sorted), or None to keep them all.

    Random rather than the first rows: an eval set may be ordered by class.
    """
    if limit is None or n <= limit:
        return None
    if limit <= 0:
        raise TaskvecError(f"max_examples must be positive, got {limit}")
    return torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(n)[:limit]))


def disentanglement_error(
    evaluator: Evaluator,
    task1: str,
    task2: str,
    alphas1: Sequence[float] | None = None,
    alphas2: Sequence[float] | None = None,
    split: str = "val",
    *,
    max_examples: int | None = 200,
    seed: int = 0,
    progress: bool = False,
) -> Disentanglement:
    """ξ(α1, α2) for every α1 in `alphas1` and α2 in `alphas2` (default: [−3, 3], step 0.5).

    `evaluator` must hold task vectors, heads and `split` eval sets for both tasks; its method
    (non-linear FT, post-hoc linearization or linearized FT) decides how the edits are evaluated. Each eval set is
    cut to a seeded random `max_examples` rows (None: all rows).

    Cost: methods on f_lin need 2 forward passes and 4 JVPs in all (none if the evaluator
    already computed them), then additions. Non-linear FT needs one forward pass per distinct
    edit and eval set: len(alphas1) × len(alphas2) × 2 passes of ≤ max_examples inputs
    (338 for the default 13×13 grid) — keep the sets small.

    Returns a `Disentanglement` (ξ grid, its two terms, example counts, seconds and passes).
    Under a sharded evaluator (`Evaluator.ranks`) every rank calls this together: on whole
    sets each rank counts the changed predictions of its rows; on a subset every rank holds
    the subset and computes its share of the grid's cells. Counts are summed, so ξ (and the
    passes reported) are the single process's exactly.
    """
    alphas1, alphas2 = _checked_alphas(evaluator, task1, task2, alphas1, alphas2)
    started = time.perf_counter()
    ranks = evaluator.ranks
    ev, deal_cells = _on_subsets(evaluator, (task1, task2), split, max_examples, seed)
    passes_before = ev.forward_passes
    # Reference predictions: each task under its own edit only; then J τ1 and J τ2 on both sets,
    # from which the linearized methods sum every cell (α1 = α2 too) without a new pass.
    own1 = [ev.logits(task1, split, {task1: a}).argmax(-1) for a in alphas1]
    own2 = [ev.logits(task2, split, {task2: b}).argmax(-1) for b in alphas2]
    ev.prepare_products([task1, task2], [task1, task2], split)
    passes_shared = ev.forward_passes - passes_before
    changed = _changed_predictions(ev, ranks, (task1, task2), (alphas1, alphas2), (own1, own2), split, deal_cells, progress)
    cell_passes = ev.forward_passes - passes_before - passes_shared  # alike on every rank when rows are split
    if deal_cells:
        cell_passes = int(ranks.total(torch.tensor([cell_passes])))
    sizes = {t: ev.size(t, split) for t in (task1, task2)}
    term1, term2 = changed[0] / sizes[task1], changed[1] / sizes[task2]
    xi = term1 + term2
    return Disentanglement(
        task1=task1,
        task2=task2,
        alphas1=alphas1,
        alphas2=alphas2,
        xi=xi.tolist(),
        method=ev.method.name,
        split=split,
        xi_terms={task1: term1.tolist(), task2: term2.tolist()},
        examples=sizes,
        seconds=round(time.perf_counter() - started, 3),
        forward_passes=passes_shared + cell_passes,
    )


def _checked_alphas(
    evaluator: Evaluator, task1: str, task2: str, alphas1: Sequence[float] | None, alphas2: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    """The two α axes as floats (default: `disentanglement_grid()`), after checking that the
    evaluator holds a vector and a head for two different tasks."""
    if task1 == task2:
        raise TaskvecError(f"disentanglement needs two different tasks, got {task1!r} twice")
    alphas1 = [float(a) for a in (disentanglement_grid() if alphas1 is None else alphas1)]
    alphas2 = [float(a) for a in (disentanglement_grid() if alphas2 is None else alphas2)]
    if not alphas1 or not alphas2:
        raise TaskvecError("disentanglement needs at least one α per task")
    for t in (task1, task2):
        if t not in evaluator.vectors:
            raise TaskvecError(f"no task vector for {t!r}")
        if t not in evaluator.heads:
            raise TaskvecError(f"no head for task {t!r}")
    return alphas1, alphas2


def _on_subsets(evaluator: Evaluator, tasks: tuple[str, str], split: str, max_examples: int | None, seed: int) -> tuple[Evaluator, bool]:
    """(the evaluator restricted to each task's seeded subset, whether the grid's cells are dealt
    out among the ranks rather than the rows)."""
    rows = {t: _subset_index(evaluator.size(t, split), max_examples, seed) for t in tasks}
    # Sharded, a subset (200 rows by default) is too small to split by rows; every rank then holds
    # all of it and the grid's cells are dealt out instead. Whole sets stay split by rows.
    deal_cells = evaluator.ranks.sharded and any(r is not None for r in rows.values())
    if all(r is None for r in rows.values()):
        return evaluator, deal_cells
    return evaluator.restricted(rows, split, ranks=Ranks() if deal_cells else None), deal_cells


def _changed_predictions(
    ev: Evaluator,
    ranks: Ranks,
    tasks: tuple[str, str],
    alphas: tuple[list[float], list[float]],
    own: tuple[list[torch.Tensor], list[torch.Tensor]],
    split: str,
    deal_cells: bool,
    progress: bool,
) -> np.ndarray:
    """(2, len(α1), len(α2)) counts of each task's predictions that the joint edit changes from
    its own edit's, counted on this rank's rows (or cells) and summed over the ranks (exact)."""
    (task1, task2), (alphas1, alphas2), (own1, own2) = tasks, alphas, own
    changed = torch.zeros((2, len(alphas1), len(alphas2)), dtype=torch.long)
    cells = [(i, j) for i in range(len(alphas1)) for j in range(len(alphas2))]
    if deal_cells:
        cells = cells[ranks.index :: ranks.count]
    if progress:
        from tqdm.auto import tqdm

        cells = tqdm(cells, desc=f"ξ {ev.method} {task1}+{task2}", leave=False)
    for i, j in cells:
        both = ev.logits_many([task1, task2], split, {task1: alphas1[i], task2: alphas2[j]})  # one edit for both sets
        changed[0, i, j] = int((both[task1].argmax(-1) != own1[i]).sum())
        changed[1, i, j] = int((both[task2].argmax(-1) != own2[j]).sum())
    return ranks.total(changed).numpy()


def mean_xi(result: Disentanglement, box: tuple[float, float] | None = None) -> float:
    """Mean ξ of a `disentanglement_error` result (see `Disentanglement.mean`)."""
    return result.mean(box)


def _edges(values: Sequence[float]) -> np.ndarray:
    """Cell edges around grid values (midpoints; half a step beyond the ends)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


def plot_disentanglement(
    results_by_method: Mapping[str, Disentanglement], path: str | Path, search_box: tuple[float, float] | None = (0.0, 1.0)
) -> Path:
    """One row of ξ heatmaps (one per method), α1 on x, α2 on y, shared colour scale 0..max.

    `search_box` (lo, hi) draws the α search range of task addition as the square
    [lo, hi]² (None: no box), as in the paper's Fig. 3. Writes a PNG atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ..io import atomic_path

    if not results_by_method:
        raise TaskvecError("plot_disentanglement needs at least one result")
    order = EVAL_METHODS.names()
    methods = sorted(results_by_method, key=lambda m: order.index(m) if m in order else len(order))
    first = results_by_method[methods[0]]
    vmax = max(float(np.max(results_by_method[m].xi)) for m in methods)
    vmax = vmax if vmax > 0 else 1.0  # an all-zero map still gets a readable scale

    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods) + 0.9, 3.7), squeeze=False, constrained_layout=True)
    mesh = None
    for ax, m in zip(axes[0], methods):
        r = results_by_method[m]
        xi = np.asarray(r.xi, dtype=float)  # [i][j] = (α1_i, α2_j): rows are x, so transpose
        mesh = ax.pcolormesh(_edges(r.alphas1), _edges(r.alphas2), xi.T, cmap="viridis", vmin=0.0, vmax=vmax, shading="flat")
        if search_box is not None:
            lo, hi = search_box
            ax.add_patch(Rectangle((lo, lo), hi - lo, hi - lo, fill=False, edgecolor="white", linewidth=1.8, linestyle="--"))
        ax.axhline(0, color="white", lw=0.5, alpha=0.5)
        ax.axvline(0, color="white", lw=0.5, alpha=0.5)
        ax.set_title(EVAL_METHODS.get(m).label if m in EVAL_METHODS else m)
        ax.set_xlabel(f"α1 ({r.task1})")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel(f"α2 ({first.task2})")
    for ax in axes[0][1:]:
        ax.tick_params(labelleft=False)
    assert mesh is not None, "one method at least (checked above), so one map drawn"
    bar = fig.colorbar(mesh, ax=axes[0].tolist(), shrink=0.9, pad=0.02)
    bar.set_label("disentanglement error ξ")
    box = "" if search_box is None else f"; dashed box: addition search range [{search_box[0]:g}, {search_box[1]:g}]²"
    fig.suptitle(f"Weight disentanglement error ξ(α1, α2), {first.task1} + {first.task2}{box}", fontsize=10)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)
    return path
