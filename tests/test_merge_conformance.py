"""Each merge method against an independent re-implementation of its authors' code (issue 21).

Every reference below is written here in plain torch, following the structure of the official
code it names (file and line), in float64 on tiny task vectors: 2-D matrices (including a 2×384
one whose rank is below T and a 32×27 "stem" whose rank is not a multiple of T), a 4-D
convolution kernel, a 1-D bias, and T = 3 and T = 4 tasks. None calls taskvec's helpers.

Official codes read (snapshots of the public repositories):
- TIES: prateeky2806/ties-merging src/utils/merge_utils.py (`topk_values_mask`, `resolve_sign`,
  `resolve_zero_signs`, `disjoint_merge`), identical to nik-dim/tall_masks
  src/utils/ties_utils.py L7-58 and src/utils/utils.py L251-282 (the CLIP code).
- TSV-M: the TSV authors' `compute_and_sum_svd_mem_reduction`, as shipped in
  danielm1405/iso-merging src/utils/TSVM_utils.py L7-81 (aimagelab/task_singular_vectors itself
  is not in the reference store).
- Iso-C / Iso-CTS: danielm1405/iso-merging src/utils/iso.py L5-27 / L30-104.
- Consensus (TALL masks): nik-dim/tall_masks src/utils/tallmask_utils.py L27-70 (masks) and
  L193-224 (consensus), src/eval/aggregation.py L124-136.
- Breadcrumbs: rezazzr/breadcrumbs src/task_vectors.py L155-195 (`TaskVectorMiddleKeep`),
  find_best_hyperparam.py L237-243 (search start).
- DARE: yule-BUAA/MergeLM model_merging_methods/mask_weights_utils.py
  (`mask_input_with_mask_rate`) and, for DARE + TIES, model_merging_methods/merging_methods.py
  (`ties_merging`).
- LiNeS: the official wang-kx/LiNeS is not in the reference store; the paper's Eq. (LiNeS,
  arXiv 2410.17146, Sec. 3) is followed.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from taskvec.merging import MERGE_METHODS, merge
from taskvec.task_vector import TaskVector

BASE = {"backbone": "test", "fingerprint": "conformance"}
SHAPES = {
    "stem.weight": (32, 27),  # rank 27: 27/4 = 6.75 directions per task for T = 4
    "blocks.0.attn.weight": (2, 384),  # rank 2 < T: no direction per task
    "blocks.0.conv.weight": (8, 3, 3, 3),  # a convolution kernel
    "blocks.1.fc.weight": (6, 5),
    "blocks.1.fc.bias": (6,),
}
NAMES = list(SHAPES)


def make_vectors(count: int, seed: int = 0, shapes: dict[str, tuple[int, ...]] = SHAPES) -> list[TaskVector]:
    """float64 vectors whose values are exact in float32 (taskvec ranks magnitudes in float32)."""
    gen = torch.Generator().manual_seed(seed)
    vectors = []
    for t in range(count):
        vector = {n: torch.randn(shape, generator=gen).double() for n, shape in shapes.items()}
        vectors.append(TaskVector(vector, "nonlinear", dict(BASE), (f"task{t}",)))
    return vectors


def tensors(vectors: list[TaskVector]) -> list[dict[str, torch.Tensor]]:
    return [{n: v.vector[n].clone() for n in v.vector} for v in vectors]


def assert_close(merged: TaskVector, reference: dict[str, torch.Tensor], atol: float = 1e-9) -> None:
    assert list(merged.vector) == list(reference)
    for name, expected in reference.items():
        got = merged.vector[name]
        assert got.dtype == torch.float64 and got.shape == expected.shape, name
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=atol, msg=name)


def flatten(vector: dict[str, torch.Tensor]) -> torch.Tensor:
    """state_dict_to_vector (merge_utils.py): sorted keys, concatenated."""
    return torch.cat([vector[k].reshape(-1) for k in sorted(vector)])


def unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for key in sorted(like):
        size = like[key].numel()
        out[key] = flat[start : start + size].reshape(like[key].shape)
        start += size
    return {k: out[k] for k in like}


# ----- TIES ----------------------------------------------------------------------------------------


def official_ties(vs: list[dict[str, torch.Tensor]], K: float) -> dict[str, torch.Tensor]:
    """tall_masks src/utils/ties_utils.py L49-58 `ties_merging(..., merge_func="dis-mean")`."""
    M = torch.vstack([flatten(v) for v in vs])
    # topk_values_mask, utils.py L262-273
    n, d = M.shape
    k = int(d * K)
    k = d - k
    kth_values, _ = M.abs().kthvalue(k, dim=1, keepdim=True)
    updated = M * (M.abs() >= kth_values)
    # resolve_sign + resolve_zero_signs("majority"), ties_utils.py L7-20
    sign_to_mult = torch.sign(updated.sum(dim=0))
    majority_sign = torch.sign(sign_to_mult.sum())
    sign_to_mult[sign_to_mult == 0] = majority_sign
    # disjoint_merge "mean", ties_utils.py L23-37
    rows_to_keep = torch.where(sign_to_mult.unsqueeze(0) > 0, updated > 0, updated < 0)
    selected = updated * rows_to_keep
    counts = (selected != 0).sum(dim=0).double()
    return unflatten(selected.sum(dim=0) / torch.clamp(counts, min=1), vs[0])


@pytest.mark.parametrize("count,k", [(3, 0.2), (4, 0.2), (3, 0.55)])
def test_ties_matches_the_official_code(count, k):
    vectors = make_vectors(count, seed=count)
    assert_close(merge(vectors, "ties", k=k), official_ties(tensors(vectors), k))


def test_ties_keeps_int_kd_plus_one_entries_as_the_official_topk_mask():
    """The official threshold is the (d − int(d·K))-th smallest |x|: int(d·K) + 1 entries survive
    (d = 25, K = 0.2: 6 entries, not round(5.0) = 5)."""
    shapes = {"w": (4, 5), "b": (5,)}
    vectors = make_vectors(1, seed=9, shapes=shapes)
    merged = merge(vectors, "ties", k=0.2)
    assert sum(int((t != 0).sum()) for t in merged.vector.values()) == int(25 * 0.2) + 1 == 6
    assert_close(merged, official_ties(tensors(vectors), 0.2))


def cancelling_vectors() -> list[TaskVector]:
    """Mostly negative values (the whole vector's majority sign is −) with exact cancellations
    (+5, −5, 0) in large entries that the trim keeps."""
    vectors = make_vectors(3, seed=4)
    for v in vectors:
        v.vector = {n: -t.abs() for n, t in v.vector.items()}
    for n in ("blocks.1.fc.bias", "blocks.1.fc.weight"):
        vectors[0].vector[n].view(-1)[:3] = 5.0
        vectors[1].vector[n].view(-1)[:3] = -5.0
        vectors[2].vector[n].view(-1)[:3] = 0.0
    return vectors


def test_ties_exact_cancellations_take_the_global_majority_sign():
    vectors = cancelling_vectors()
    merged = merge(vectors, "ties", k=0.2)
    assert_close(merged, official_ties(tensors(vectors), 0.2))
    for n in ("blocks.1.fc.bias", "blocks.1.fc.weight"):
        assert torch.equal(merged.vector[n].view(-1)[:3], torch.full((3,), -5.0, dtype=torch.float64))  # not +5


def test_dare_ties_elects_signs_as_the_official_ties():
    """DARE without drop, combined TIES-style, is TIES's election on the untrimmed vectors."""
    vectors = cancelling_vectors()
    merged = merge(vectors, "dare", p=0.0, combine="ties", mask_rate=0.0)
    for n in ("blocks.1.fc.bias", "blocks.1.fc.weight"):
        assert torch.equal(merged.vector[n].view(-1)[:3], torch.full((3,), -5.0, dtype=torch.float64))


# ----- TSV-M ---------------------------------------------------------------------------------------


def official_tsv_m(vs: list[dict[str, torch.Tensor]], conv: str = "official") -> dict[str, torch.Tensor]:
    """iso-merging src/utils/TSVM_utils.py L24-79, `compute_and_sum_svd_mem_reduction`; with
    conv="matrix", convolution kernels enter as (out, in·k·k) matrices (taskvec's extension)."""
    sv_reduction = 1 / len(vs)
    new_vector = {}
    for key, first in vs[0].items():
        is_matrix = first.dim() == 2 or (conv == "matrix" and first.dim() > 2)
        if not is_matrix:
            for i, v in enumerate(vs):  # L61-65
                new_vector[key] = v[key].clone() if i == 0 else new_vector[key] + (v[key] - new_vector[key]) / (i + 1)
            continue
        for i, v in enumerate(vs):
            vec = v[key].reshape(first.shape[0], -1)
            u, s, vh = torch.linalg.svd(vec, full_matrices=False)
            if i == 0:
                sum_u, sum_s, sum_v = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
            reduced_index_s = int(s.shape[0] * sv_reduction)  # L47
            sum_u[:, i * reduced_index_s : (i + 1) * reduced_index_s] = u[:, :reduced_index_s]
            sum_s[i * reduced_index_s : (i + 1) * reduced_index_s] = s[:reduced_index_s]
            sum_v[i * reduced_index_s : (i + 1) * reduced_index_s, :] = vh[:reduced_index_s, :]
        u_u, _, v_u = torch.linalg.svd(sum_u, full_matrices=False)  # L68-79
        u_v, _, v_v = torch.linalg.svd(sum_v, full_matrices=False)
        new_vector[key] = torch.linalg.multi_dot((u_u, v_u, torch.diag(sum_s), u_v, v_v)).reshape(first.shape)
    return new_vector


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("conv", ["official", "matrix"])
def test_tsv_m_matches_the_official_code(count, conv):
    vectors = make_vectors(count, seed=10 + count)
    assert_close(merge(vectors, "tsv_m", conv=conv), official_tsv_m(tensors(vectors), conv))


def test_tsv_m_counts_directions_as_the_official_int():
    """4 tasks on the 32×27 stem keep int(27/4) = 6 directions each (24 in all, not 28 in rank 27);
    3 tasks on a 2×384 matrix keep int(2/3) = 0 and the official code leaves the layer at 0."""
    four = merge(make_vectors(4, seed=1), "tsv_m")
    assert int(torch.linalg.matrix_rank(four.vector["stem.weight"])) == 24
    three = merge(make_vectors(3, seed=1), "tsv_m")
    assert torch.equal(three.vector["blocks.0.attn.weight"], torch.zeros(2, 384, dtype=torch.float64))


# ----- Iso-C / Iso-CTS -----------------------------------------------------------------------------


def official_iso_c(vs: list[dict[str, torch.Tensor]], conv: str = "official") -> dict[str, torch.Tensor]:
    """iso-merging src/utils/iso.py L5-27."""
    new_vector = {}
    for key, first in vs[0].items():
        tvs = [v[key] for v in vs]
        new_vector[key] = sum(tvs) / len(tvs)
        if first.dim() == 2 or (conv == "matrix" and first.dim() > 2):
            summed = (new_vector[key] * len(tvs)).reshape(first.shape[0], -1)
            u, s, vh = torch.linalg.svd(summed, full_matrices=False)
            new_vector[key] = torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), vh)).reshape(first.shape)
    return new_vector


def official_iso_cts(vs: list[dict[str, torch.Tensor]], fraction: float, conv: str = "official") -> dict[str, torch.Tensor]:
    """iso-merging src/utils/iso.py L30-104."""
    new_vector, tasks = {}, len(vs)
    for key, first in vs[0].items():
        if not (first.dim() == 2 or (conv == "matrix" and first.dim() > 2)):  # L39-48
            for i, v in enumerate(vs):
                new_vector[key] = v[key].clone() if i == 0 else new_vector[key] + (v[key] - new_vector[key]) / (i + 1)
            continue
        ws = [v[key].reshape(first.shape[0], -1) for v in vs]
        r = min(ws[0].shape)
        common = int(r * fraction)  # L54-56
        common = r - round((r - common) / tasks) * tasks
        u, s, vh = torch.linalg.svd(sum(ws), full_matrices=False)
        cu, cs, cv = u[:, :common], s[:common], vh[:common, :]
        n = int((r - common) / tasks)  # L65
        for i, w in enumerate(ws):
            u_ts, s_ts, v_ts = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)
            if i == 0:
                all_u, all_s, all_v = torch.zeros_like(u_ts), torch.zeros_like(s_ts), torch.zeros_like(v_ts)
            all_u[:, i * n : (i + 1) * n] = u_ts[:, :n]
            all_s[i * n : (i + 1) * n] = s_ts[:n]
            all_v[i * n : (i + 1) * n, :] = v_ts[:n, :]
        all_u[:, tasks * n : tasks * n + common] = cu  # L83-85
        all_s[tasks * n : tasks * n + common] = cs
        all_v[tasks * n : tasks * n + common, :] = cv
        uu, _, vu = torch.linalg.svd(all_u, full_matrices=False)  # L88-91
        uv, _, vv = torch.linalg.svd(all_v, full_matrices=False)
        flat = torch.ones_like(all_s) * all_s.mean()  # L94
        new_vector[key] = torch.linalg.multi_dot((uu @ vu, torch.diag(flat), uv @ vv)).reshape(first.shape)
    return new_vector


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("conv", ["official", "matrix"])
def test_iso_c_matches_the_official_code(count, conv):
    vectors = make_vectors(count, seed=20 + count)
    assert_close(merge(vectors, "iso_c", conv=conv), official_iso_c(tensors(vectors), conv))


@pytest.mark.parametrize("count,fraction", [(3, 0.8), (4, 0.8), (4, 0.5), (3, 0.5)])
@pytest.mark.parametrize("conv", ["official", "matrix"])
def test_iso_cts_matches_the_official_code(count, fraction, conv):
    vectors = make_vectors(count, seed=30 + count)
    assert_close(merge(vectors, "iso_cts", common=fraction, conv=conv), official_iso_cts(tensors(vectors), fraction, conv))


def test_iso_cts_truncates_the_common_space():
    """A 6×11 matrix, T = 3, common 0.8: official int(4.8) = 4, task part round(2/3)·3 = 3, so
    k_common = 3 and 1 direction per task; round(4.8) = 5 would give k_common = 6 (Iso-C)."""
    vectors = make_vectors(3, seed=7, shapes={"w": (6, 11)})
    merged = merge(vectors, "iso_cts", common=0.8)
    assert_close(merged, official_iso_cts(tensors(vectors), 0.8))
    iso_c = merge(vectors, "iso_c")
    assert not torch.allclose(merged.vector["w"], iso_c.vector["w"])


def test_iso_cts_caps_the_task_part_where_the_official_code_fails():
    """2×384, T = 3, common 0.3: int(0.6) = 0 and round(2/3)·3 = 3 > rank 2, so the official code
    slices with k_common = −1: its slots past the rank are empty and torch broadcasts into them
    silently, dropping the third task and the common subspace. taskvec caps the task part at
    rank // T = 0 instead (Iso-C). (Never reached at the default common = 0.8.)"""
    vectors = make_vectors(3, seed=8, shapes={"blocks.0.attn.weight": (2, 384)})
    rank, tasks = 2, 3
    assert round((rank - int(rank * 0.3)) / tasks) * tasks > rank
    assert_close(merge(vectors, "iso_cts", common=0.3), official_iso_c(tensors(vectors)))


# ----- Consensus (TALL masks) ----------------------------------------------------------------------


def official_consensus(vs: list[dict[str, torch.Tensor]], prun_thre_k: int, lam: float) -> dict[str, torch.Tensor]:
    """tall_masks: masks by `generate_task_masks` (tallmask_utils.py L50-61) with one λ for every
    task, consensus by `construct_consensus_mask` (L214-221), applied to the TA sum (aggregation.py
    L131-136, k = 100: no trim). θ0 = 0 so that |θ0 − θ_t| is |τ_t| exactly in floating point."""
    tv_flat = torch.vstack([flatten(v) for v in vs])
    flat_ptm = torch.zeros(tv_flat.shape[1], dtype=tv_flat.dtype)
    flat_ft = flat_ptm + tv_flat
    flat_multi = flat_ptm + tv_flat.sum(0)
    mask = (flat_ptm - flat_ft).abs() > (flat_multi - flat_ft).abs() * lam
    consensus = mask.double().sum(0) >= prun_thre_k
    return unflatten(tv_flat.sum(dim=0) * consensus, vs[0])


@pytest.mark.parametrize("count,k,lam", [(3, 2, 0.4), (4, 2, 0.5), (4, 1, 0.2), (3, 3, 0.6)])
def test_consensus_matches_the_official_code(count, k, lam):
    vectors = make_vectors(count, seed=40 + count)
    assert_close(merge(vectors, "consensus", k=k, lam=lam), official_consensus(tensors(vectors), k, lam))


def test_consensus_masks_are_strict():
    """An entry with τ = (1, 2, 0) and λ = 0.5: |τ_1| = λ|τ_MTL − τ_1| exactly, so task 1's mask
    is off (official `>`), one vote only, and k = 2 removes the entry."""
    vectors = make_vectors(3, seed=5)
    for t, value in enumerate((1.0, 2.0, 0.0)):
        vectors[t].vector["blocks.1.fc.bias"][0] = value
    merged = merge(vectors, "consensus", k=2, lam=0.5)
    assert_close(merged, official_consensus(tensors(vectors), 2, 0.5))
    assert merged.vector["blocks.1.fc.bias"][0] == 0.0


# ----- Breadcrumbs ---------------------------------------------------------------------------------


def official_breadcrumbs(vs: list[dict[str, torch.Tensor]], beta: float, gamma: float) -> dict[str, torch.Tensor]:
    """breadcrumbs src/task_vectors.py L155-195: `mask_keep_top(mask_remove_top(value))` per
    tensor, then the vectors summed (TA)."""

    def mask_remove_top(tensor: torch.Tensor) -> torch.Tensor:
        if len(tensor.shape) == 0:
            return tensor
        top_k_int = int(tensor.shape[-1] * gamma)
        _, masked_indices = torch.topk(torch.abs(tensor), top_k_int)
        mask = torch.ones(tensor.shape, dtype=tensor.dtype)
        mask.scatter_(len(tensor.shape) - 1, masked_indices, 0.0)
        return mask * tensor

    def mask_keep_top(tensor: torch.Tensor) -> torch.Tensor:
        if len(tensor.shape) == 0:
            return tensor
        top_k_int = int(tensor.shape[-1] * beta)
        _, masked_indices = torch.topk(torch.abs(tensor), top_k_int)
        mask = torch.zeros(tensor.shape, dtype=tensor.dtype)
        mask.scatter_(len(tensor.shape) - 1, masked_indices, 1)
        return mask * tensor

    return {key: sum(mask_keep_top(mask_remove_top(v[key])) for v in vs) for key in vs[0]}


def whole_tensor_breadcrumbs(vs: list[dict[str, torch.Tensor]], beta: float, gamma: float) -> dict[str, torch.Tensor]:
    """ranking="tensor": the same counts over the flattened tensor (mergekit's breadcrumbs ranks
    the whole tensor)."""
    flat = [{k: t.reshape(1, -1) for k, t in v.items()} for v in vs]
    merged = official_breadcrumbs(flat, beta, gamma)
    return {k: merged[k].reshape(vs[0][k].shape) for k in vs[0]}


@pytest.mark.parametrize("count,beta,gamma", [(3, 0.15, 0.006), (4, 0.15, 0.006), (3, 0.3, 0.05)])
def test_breadcrumbs_matches_the_official_code(count, beta, gamma):
    vectors = make_vectors(count, seed=50 + count)
    assert_close(merge(vectors, "breadcrumbs", keep=beta, top=gamma), official_breadcrumbs(tensors(vectors), beta, gamma))
    whole = merge(vectors, "breadcrumbs", keep=beta, top=gamma, ranking="tensor")
    assert_close(whole, whole_tensor_breadcrumbs(tensors(vectors), beta, gamma))


def test_breadcrumbs_defaults_are_the_official_search_start_and_rank_rows():
    method = MERGE_METHODS.get("breadcrumbs")
    assert method.resolve({}) == {"keep": 0.15, "top": 0.006, "ranking": "row"}
    merged = merge(make_vectors(1, seed=3), "breadcrumbs")
    rows = merged.vector["blocks.0.attn.weight"]
    assert [int((row != 0).sum()) for row in rows] == [int(384 * 0.15)] * 2  # per row, not 115 of 768
    assert not merged.vector["blocks.0.conv.weight"].any()  # rows of 3 keep int(0.45) = 0, as officially


# ----- DARE, TA, LiNeS -----------------------------------------------------------------------------


def official_dropped(vs: list[dict[str, torch.Tensor]], p: float, seed: int) -> list[dict[str, torch.Tensor]]:
    """MergeLM `mask_input_with_mask_rate(..., use_rescale=True, mask_strategy="random")`. The
    drop mask is the one taskvec documents (crc32 of "seed/task/name" seeds torch's generator;
    the official code draws `torch.bernoulli(p)` from the global generator)."""
    dropped = []
    for t, v in enumerate(vs):
        out = {}
        for key in v:
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{t}/{key}".encode()))
            mask = (torch.rand(v[key].shape, generator=generator) < p).double()  # 1 = dropped
            out[key] = torch.div(v[key] * (1 - mask), 1 - p)
        dropped.append(out)
    return dropped


def official_dare(vs: list[dict[str, torch.Tensor]], p: float, seed: int) -> dict[str, torch.Tensor]:
    """Dropped vectors summed (MergeLM `task_arithmetic`)."""
    dropped = official_dropped(vs, p, seed)
    return {key: sum(d[key] for d in dropped) for key in vs[0]}


def official_dare_ties(vs: list[dict[str, torch.Tensor]], p: float, seed: int, mask_rate: float) -> dict[str, torch.Tensor]:
    """MergeLM model_merging_methods/merging_methods.py `ties_merging` on the dropped vectors:
    `mask_smallest_magnitude_param_values`, `get_param_signs`, `disjoint_merge`."""
    flat = torch.vstack([flatten(d) for d in official_dropped(vs, p, seed)])
    num_mask_params = int(flat.shape[1] * mask_rate)
    kth_values, _ = flat.abs().kthvalue(k=num_mask_params, dim=1, keepdim=True)
    flat = flat * (flat.abs() >= kth_values)
    param_signs = torch.sign(flat.sum(dim=0))
    majority_sign = torch.sign(param_signs.sum(dim=0))
    param_signs[param_signs == 0] = majority_sign
    preserve = ((param_signs.unsqueeze(0) > 0) & (flat > 0)) | ((param_signs.unsqueeze(0) < 0) & (flat < 0))
    kept = flat * preserve
    merged = kept.sum(dim=0) / torch.clamp((kept != 0).sum(dim=0).double(), min=1.0)
    return unflatten(merged, vs[0])


@pytest.mark.parametrize("count,p", [(3, 0.9), (4, 0.5)])
def test_dare_matches_the_official_drop_and_rescale(count, p):
    vectors = make_vectors(count, seed=60 + count)
    assert_close(merge(vectors, "dare", p=p, seed=2), official_dare(tensors(vectors), p, 2))


@pytest.mark.parametrize("count,p,mask_rate", [(3, 0.5, 0.8), (4, 0.75, 0.5), (3, 0.5, 0.3)])
def test_dare_ties_matches_the_official_code(count, p, mask_rate):
    vectors = make_vectors(count, seed=65 + count)
    merged = merge(vectors, "dare", p=p, seed=1, combine="ties", mask_rate=mask_rate)
    assert_close(merged, official_dare_ties(tensors(vectors), p, 1, mask_rate))


@pytest.mark.parametrize("count", [3, 4])
def test_task_arithmetic_is_the_official_sum(count):
    vectors = make_vectors(count, seed=70 + count)
    vs = tensors(vectors)
    assert_close(merge(vectors, "task_arithmetic"), {k: sum(v[k] for v in vs) for k in vs[0]})


@pytest.mark.parametrize("count", [3, 4])
def test_lines_follows_the_paper(count):
    """λ(ℓ) = α + β ℓ/(L − 1) on blocks ℓ = 0…L−1 (here L = 2), α = 1/T for TA; parameters
    outside the blocks (the stem) get α."""
    vectors = make_vectors(count, seed=80 + count)
    vs, beta = tensors(vectors), 0.7
    depth = {"stem.weight": None, "blocks.0.attn.weight": 0, "blocks.0.conv.weight": 0, "blocks.1.fc.weight": 1, "blocks.1.fc.bias": 1}
    expected = {k: sum(v[k] for v in vs) * (1 / count + (0.0 if depth[k] is None else beta * depth[k])) for k in vs[0]}
    assert_close(merge(vectors, "lines", beta=beta), expected)


# ----- the conventions are named settings ----------------------------------------------------------


def test_conv_convention_is_a_setting_of_every_matrix_merge():
    for name in ("tsv_m", "iso_c", "iso_cts"):
        setting = {s.name: s for s in MERGE_METHODS.get(name).settings}["conv"]
        assert setting.default == "matrix" and setting.choices == ("matrix", "official") and "official" in setting.doc
    vectors = make_vectors(3, seed=90)
    official = merge(vectors, "tsv_m", conv="official")
    assert official.info["merge"]["settings"]["conv"] == "official"
    torch.testing.assert_close(official.vector["blocks.0.conv.weight"], sum(v.vector["blocks.0.conv.weight"] for v in vectors) / 3)
