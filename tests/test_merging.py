"""Merge methods: each against an independent reference (plain numpy / Python loops written here,
not the package's code), their invariants, validation and metadata."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import scipy.linalg
import torch

from taskvec.errors import TaskvecError
from taskvec.merging import MERGE_METHODS, depth_index, kth_largest_magnitude, matrix_view, merge
from taskvec.task_vector import TaskVector

BASE = {"backbone": "test", "fingerprint": "abc"}
# name -> (shape, scale, block depth or None); scales differ so that a global top-k differs from a per-tensor one
PARAMS = {
    "_conv_stem.weight": ((4, 3, 1, 1), 0.5, None),  # before the blocks; a 1×1 convolution
    "_blocks.0.conv.weight": ((4, 3, 3, 3), 1.0, 0),  # a conv kernel: the matrix (4, 27)
    "_blocks.1.fc.weight": ((6, 4), 2.0, 1),
    "_blocks.1.fc.bias": ((6,), 1.5, 1),  # not a matrix
    "_blocks.2.proj.weight": ((5, 6), 0.7, 2),
    "head.weight": ((3, 5), 3.0, None),  # after the blocks
}
NAMES = list(PARAMS)
BLOCKS = 3


def make_vectors(count: int = 3, seed: int = 0, mode: str = "nonlinear", names=NAMES) -> list[TaskVector]:
    rng = np.random.default_rng(seed)
    vectors = []
    for i in range(count):
        values = {n: PARAMS[n][1] * rng.standard_normal(PARAMS[n][0]) for n in NAMES}
        vector = {n: torch.tensor(values[n], dtype=torch.float32) for n in names}
        vectors.append(TaskVector(vector, mode, dict(BASE), (f"task{i}",)))
    return vectors


def as_numpy(vectors: list[TaskVector]) -> list[dict[str, np.ndarray]]:
    return [{n: v.vector[n].double().numpy() for n in NAMES} for v in vectors]


def assert_matches(merged: TaskVector, reference: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    assert list(merged.vector) == NAMES
    for name in NAMES:
        got = merged.vector[name]
        assert got.dtype == torch.float32 and tuple(got.shape) == PARAMS[name][0], name
        np.testing.assert_allclose(got.double().numpy(), reference[name], rtol=1e-4, atol=atol, err_msg=name)


def flatten(vector: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([vector[n].ravel() for n in NAMES])


def unflatten(flat: np.ndarray) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name in NAMES:
        shape = PARAMS[name][0]
        size = int(np.prod(shape))
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


# ----- independent references ---------------------------------------------------------------------


def ref_sum(vs):
    out = {}
    for name in NAMES:
        total = np.zeros(PARAMS[name][0])
        for v in vs:
            total = total + v[name]
        out[name] = total
    return out


def ref_elect_mean(columns: np.ndarray) -> np.ndarray:
    """TIES's elect + disjoint mean, entry by entry; an exact cancellation takes the sign of the
    sum of all elected signs (the official majority fallback), and an elected sign ≤ 0 picks the
    negative values."""
    signs = [float(np.sign(columns[:, j].sum())) for j in range(columns.shape[1])]
    majority = float(np.sign(sum(signs)))
    out = np.zeros(columns.shape[1])
    for j in range(columns.shape[1]):
        sign = signs[j] if signs[j] != 0 else majority
        agree = [x for x in columns[:, j] if (x > 0 if sign > 0 else x < 0)]
        out[j] = np.mean(agree) if agree else 0.0
    return out


def ref_ties(vs, k):
    trimmed = []
    for v in vs:
        flat = flatten(v)
        keep = min(flat.size, int(flat.size * k) + 1)  # the official topk_values_mask's count
        threshold = np.sort(np.abs(flat))[::-1][keep - 1]
        trimmed.append(np.where(np.abs(flat) >= threshold, flat, 0.0))
    return unflatten(ref_elect_mean(np.array(trimmed)))


def ref_dare(vs, p, seed, combine, mask_rate=0.0):  # mask_rate 0: no TIES trim after the drop
    dropped = []
    for t, v in enumerate(vs):
        out = {}
        for name in NAMES:  # the documented seed contract: crc32 of "seed/task/name"
            generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{t}/{name}".encode()))
            keep = (torch.rand(PARAMS[name][0], generator=generator) >= p).double().numpy()
            out[name] = v[name] * keep / (1 - p)
        dropped.append(out)
    if combine == "sum":
        return ref_sum(dropped)
    return unflatten(ref_elect_mean(np.array([flatten(d) for d in dropped])))


def ref_breadcrumbs(vs, keep, top, ranking="row"):
    """Per row (last dimension) or whole tensor: mask the int(n·top) largest, keep the int(n·keep) next."""
    masked = []
    for v in vs:
        out = {}
        for name in NAMES:
            rows = v[name].reshape(-1, v[name].shape[-1]) if ranking == "row" else v[name].reshape(1, -1)
            kept = np.zeros_like(rows)
            n = rows.shape[1]
            removed, count = int(n * top), int(n * keep)
            for i, row in enumerate(rows):
                order = np.argsort(-np.abs(row), kind="stable")[removed : removed + count]
                kept[i, order] = row[order]
            out[name] = kept.reshape(v[name].shape)
        masked.append(out)
    return ref_sum(masked)


def polar(matrix: np.ndarray) -> np.ndarray:
    return scipy.linalg.polar(matrix)[0]


def per_layer(vs, merge_matrices, conv="matrix"):
    """Matrices (conv kernels as (out, in·kh·kw) unless conv="official") by `merge_matrices`;
    other tensors averaged."""
    out = {}
    for name in NAMES:
        shape = PARAMS[name][0]
        if len(shape) < 2 or (len(shape) > 2 and conv == "official"):
            out[name] = sum(v[name] for v in vs) / len(vs)
        else:
            out[name] = merge_matrices([v[name].reshape(shape[0], -1) for v in vs]).reshape(shape)
    return out


def ref_tsv_m(vs, share, conv="matrix"):
    def merge_matrices(mats):
        rank = min(mats[0].shape)
        k = int(rank * (share / len(mats)))  # the official int(r · sv_reduction)
        if k == 0:
            return np.zeros_like(mats[0])
        us, ss, vhs = [], [], []
        for m in mats:
            u, s, vh = np.linalg.svd(m, full_matrices=False)
            us.append(u[:, :k]), ss.append(s[:k]), vhs.append(vh[:k])
        u, s, vh = np.hstack(us), np.concatenate(ss), np.vstack(vhs)
        return polar(u) @ np.diag(s) @ polar(vh)

    return per_layer(vs, merge_matrices, conv)


def ref_iso_c(vs):
    def merge_matrices(mats):
        u, s, vh = np.linalg.svd(sum(mats), full_matrices=False)
        return s.mean() * u @ vh

    return per_layer(vs, merge_matrices)


def ref_iso_cts(vs, common, conv="matrix"):
    def merge_matrices(mats):
        tasks, rank = len(mats), min(mats[0].shape)
        per_task = min(round((rank - int(rank * common)) / tasks), rank // tasks)
        k_common = rank - per_task * tasks
        u, s, vh = np.linalg.svd(sum(mats), full_matrices=False)
        us, ss, vhs = [u[:, :k_common]], [s[:k_common]], [vh[:k_common]]
        for m in mats:
            projected = m - us[0] @ us[0].T @ m
            ut, st, vht = np.linalg.svd(projected, full_matrices=False)
            us.append(ut[:, :per_task]), ss.append(st[:per_task]), vhs.append(vht[:per_task])
        flat = np.concatenate(ss).mean()
        return flat * polar(np.hstack(us)) @ polar(np.vstack(vhs))

    return per_layer(vs, merge_matrices, conv)


def ref_consensus(vs, k, lam):
    total = flatten(ref_sum(vs))
    flats = [flatten(v) for v in vs]
    out = np.zeros_like(total)
    for j in range(total.size):
        votes = sum(1 for f in flats if abs(f[j]) > lam * abs(total[j] - f[j]))
        out[j] = total[j] if votes >= k else 0.0
    return unflatten(out)


def ref_lines(vs, beta, alpha_scale):
    total = ref_sum(vs)
    shallow = alpha_scale / len(vs)
    out = {}
    for name in NAMES:
        depth = PARAMS[name][2]
        out[name] = total[name] * (shallow if depth is None else shallow + beta * depth / (BLOCKS - 1))
    return out


REFERENCES = {
    "task_arithmetic": (ref_sum, [{}]),
    "ties": (ref_ties, [{"k": 0.2}, {"k": 0.55}]),
    "dare": (ref_dare, [{"p": 0.5, "seed": 3, "combine": "sum"}, {"p": 0.3, "seed": 1, "combine": "ties", "mask_rate": 0.0}]),
    "breadcrumbs": (ref_breadcrumbs, [{"keep": 0.5, "top": 0.2}, {"keep": 0.15, "top": 0.006, "ranking": "tensor"}]),
    "tsv_m": (ref_tsv_m, [{"share": 1.0}, {"share": 2.0}, {"share": 1.0, "conv": "official"}]),
    "iso_c": (ref_iso_c, [{}]),
    "iso_cts": (ref_iso_cts, [{"common": 0.8}, {"common": 0.3}, {"common": 0.8, "conv": "official"}]),
    "consensus": (ref_consensus, [{"k": 2, "lam": 0.4}, {"k": 1, "lam": 0.6}]),
    "lines": (ref_lines, [{"beta": 0.5, "alpha_scale": 1.0}, {"beta": 1.0, "alpha_scale": 2.0}]),
}


def test_every_registered_method_has_a_reference():
    assert set(REFERENCES) == set(MERGE_METHODS.names())


@pytest.mark.parametrize("name,settings", [(n, s) for n, (_, grid) in REFERENCES.items() for s in grid])
def test_method_matches_independent_reference(name, settings):
    vectors = make_vectors()
    reference = REFERENCES[name][0](as_numpy(vectors), **settings)
    merged = merge(vectors, name, **settings)
    assert_matches(merged, reference)
    assert merged.info["merge"]["settings"] == MERGE_METHODS.get(name).resolve(settings)


# Breadcrumbs' official per-row ranking keeps int(0.15·n) = 0 entries of these rows of ≤ 6.
DIRECTION_SETTINGS = {"breadcrumbs": {"ranking": "tensor"}}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_defaults_give_a_direction_of_the_inputs_kind(name):
    vectors = make_vectors(mode="linear")
    merged = merge(vectors, name, **DIRECTION_SETTINGS.get(name, {}))
    assert merged.mode == vectors[0].mode and merged.base == BASE and merged.base is not vectors[0].base
    assert merged.tasks == ("task0", "task1", "task2")
    assert all(torch.isfinite(t).all() for t in merged.vector.values())
    assert any(t.abs().sum() > 0 for t in merged.vector.values())


# ----- invariants ---------------------------------------------------------------------------------


def test_task_arithmetic_is_the_sum():
    vectors = make_vectors()
    merged = merge(vectors)  # the default method
    for name in NAMES:
        assert torch.equal(merged.vector[name], vectors[0].vector[name] + vectors[1].vector[name] + vectors[2].vector[name])


def test_ties_keeping_everything_on_agreeing_signs_is_the_mean():
    vectors = make_vectors()
    signs = {n: torch.sign(vectors[0].vector[n]) for n in NAMES}
    for v in vectors:  # same sign pattern in every task, nowhere zero
        v.vector = {n: signs[n] * (v.vector[n].abs() + 0.1) for n in NAMES}
    merged = merge(vectors, "ties", k=1.0)
    for name in NAMES:
        torch.testing.assert_close(merged.vector[name], sum(v.vector[name] for v in vectors) / 3)


def test_ties_trims_over_the_whole_vector_not_per_tensor():
    vectors = make_vectors(count=1)
    merged = merge(vectors, "ties", k=0.1)
    kept = {n: int((merged.vector[n] != 0).sum()) for n in NAMES}
    assert sum(kept.values()) == round(0.1 * sum(v.numel() for v in vectors[0].vector.values()))
    assert kept["head.weight"] > 0.1 * 15 and kept["_conv_stem.weight"] == 0  # the large-scale tensor wins


def test_dare_without_drop_is_task_arithmetic():
    vectors = make_vectors()
    merged, plain = merge(vectors, "dare", p=0.0), merge(vectors, "task_arithmetic")
    for name in NAMES:
        assert torch.equal(merged.vector[name], plain.vector[name])


def test_dare_is_reproducible_and_independent_of_parameter_order():
    vectors = make_vectors()
    first, again = merge(vectors, "dare", p=0.5, seed=7), merge(vectors, "dare", p=0.5, seed=7)
    other = merge(vectors, "dare", p=0.5, seed=8)
    reordered = [TaskVector(dict(reversed(list(v.vector.items()))), v.mode, dict(v.base), v.tasks) for v in vectors]
    shuffled = merge(reordered, "dare", p=0.5, seed=7)
    for name in NAMES:
        assert torch.equal(first.vector[name], again.vector[name])
        assert torch.equal(first.vector[name], shuffled.vector[name])
    assert any(not torch.equal(first.vector[n], other.vector[n]) for n in NAMES)


def test_dare_keeps_rescaled_entries():
    vectors = make_vectors(count=1)
    merged = merge(vectors, "dare", p=0.75, seed=0)
    entries = torch.cat([merged.vector[n].flatten() for n in NAMES])
    original = torch.cat([vectors[0].vector[n].flatten() for n in NAMES])
    kept = entries != 0
    torch.testing.assert_close(entries[kept], original[kept] * 4)
    assert 0.1 < kept.float().mean() < 0.45  # about 1 − p of 262 entries


def test_breadcrumbs_whole_tensor_ranking_keeps_1x1_convolutions():
    vectors = make_vectors(count=1)
    whole = merge(vectors, "breadcrumbs", keep=0.5, top=0.0, ranking="tensor")
    assert int((whole.vector["_conv_stem.weight"] != 0).sum()) == 6  # half of 12
    rows = merge(vectors, "breadcrumbs", keep=0.5, top=0.0)  # the official per-row ranking
    assert not rows.vector["_conv_stem.weight"].any()  # rows of one entry keep int(0.5) = 0


def test_iso_c_flattens_the_spectrum():
    merged = merge(make_vectors(), "iso_c")
    for name in NAMES:
        matrix = matrix_view(merged.vector[name])
        if matrix is None:
            continue
        singular = torch.linalg.svdvals(matrix.double())
        assert len(singular) == min(matrix.shape)
        torch.testing.assert_close(singular, torch.full_like(singular, float(singular[0])), rtol=1e-4, atol=1e-6)


def test_tsv_m_of_one_task_is_its_truncated_svd():
    vectors = make_vectors(count=1)
    merged = merge(vectors, "tsv_m", share=0.5)
    for name in NAMES:
        tensor = vectors[0].vector[name].double()
        if tensor.ndim < 2:
            torch.testing.assert_close(merged.vector[name].double(), tensor)
            continue
        matrix = tensor.reshape(tensor.shape[0], -1)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        k = int(len(s) * 0.5)
        expected = (u[:, :k] * s[:k]) @ vh[:k]
        torch.testing.assert_close(merged.vector[name].double().reshape(matrix.shape), expected, rtol=1e-4, atol=1e-5)
        assert torch.linalg.matrix_rank(merged.vector[name].double().reshape(matrix.shape), rtol=1e-5) == k


def test_iso_cts_without_task_subspaces_is_iso_c():
    vectors = make_vectors()
    cts, c = merge(vectors, "iso_cts", common=1.0), merge(vectors, "iso_c")
    for name in NAMES:
        torch.testing.assert_close(cts.vector[name], c.vector[name], rtol=1e-4, atol=1e-5)


def test_consensus_with_k_zero_is_task_arithmetic():
    vectors = make_vectors()
    merged, plain = merge(vectors, "consensus", k=0), merge(vectors)
    for name in NAMES:
        torch.testing.assert_close(merged.vector[name], plain.vector[name])


def test_lines_without_layer_increase_is_task_arithmetic():
    vectors = make_vectors()
    merged = merge(vectors, "lines", beta=0.0, alpha_scale=len(vectors))  # α_lines = alpha_scale / T = 1
    plain = merge(vectors)
    for name in NAMES:
        torch.testing.assert_close(merged.vector[name], plain.vector[name])


def test_depth_index_reads_each_backbone_family():
    assert depth_index("_blocks.12._depthwise_conv.weight") == 12
    assert depth_index("transformer.encoder.layer.3.attention.self.query.weight") == 3
    assert depth_index("visual.transformer.resblocks.11.mlp.c_fc.weight") == 11
    assert depth_index("model.layers.5.mlp.weight") == 5
    assert depth_index("blocks.2.attn.qkv.weight") == 2
    for outside in (
        "_conv_stem.weight",
        "_conv_head.weight",
        "visual.conv1.weight",
        "visual.ln_post.weight",
        "visual.proj",
        "transformer.embeddings.word_embeddings.weight",
        "layer1.0.conv1.weight",
    ):
        assert depth_index(outside) is None, outside


def test_matrix_view_flattens_convolutions_only():
    assert matrix_view(torch.zeros(8, 4, 3, 3)).shape == (8, 36)
    assert matrix_view(torch.zeros(5, 7)).shape == (5, 7)
    assert matrix_view(torch.zeros(5)) is None and matrix_view(torch.tensor(1.0)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kth_largest_magnitude_is_exact(dtype):
    rng = np.random.default_rng(1)
    values = [np.round(rng.standard_normal(n) * 4, 1) for n in (1000, 37, 1)] + [np.zeros(5)]  # ties, zeros, signs
    tensors = [torch.tensor(v, dtype=dtype) for v in values]
    ordered = np.sort(np.abs(np.concatenate([t.float().numpy() for t in tensors])))[::-1]
    for k in (1, 2, 17, 500, 1000, len(ordered)):
        assert kth_largest_magnitude(lambda: iter(tensors), k) == ordered[k - 1], k
    with pytest.raises(TaskvecError):
        kth_largest_magnitude(lambda: iter(tensors), len(ordered) + 1)


# ----- validation ---------------------------------------------------------------------------------


def _mismatched() -> dict[str, TaskVector]:
    good = make_vectors(count=1, seed=5)[0]
    shapes = make_vectors(count=1, seed=5)[0]
    shapes.vector["_blocks.1.fc.bias"] = torch.zeros(7)
    return {
        "different base": TaskVector(good.vector, good.mode, {**BASE, "fingerprint": "other"}, ("x",)),
        "combine a nonlinear task vector with a linear": make_vectors(count=1, seed=5, mode="linear")[0],
        "different parameters": make_vectors(count=1, seed=5, names=NAMES[:-1])[0],
        "has shape": shapes,
    }


@pytest.mark.parametrize("name", list(REFERENCES))
def test_every_method_refuses_mismatched_vectors(name):
    vectors = make_vectors(count=2)
    for message, bad in _mismatched().items():
        with pytest.raises(TaskvecError, match=message):
            merge([*vectors, bad], name)
    with pytest.raises(TaskvecError, match="empty"):
        merge([], name)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_every_method_refuses_unknown_settings(name):
    with pytest.raises(TaskvecError, match=f"{name} has no setting 'strength'"):
        merge(make_vectors(), name, strength=1.0)


@pytest.mark.parametrize(
    "name,settings,message",
    [
        ("ties", {"k": 1.5}, "k must be in"),
        ("ties", {"k": 0.0}, "k must be > 0"),
        ("ties", {"k": "20%"}, "must be a number"),
        ("dare", {"p": 1.0}, "p must be in"),
        ("dare", {"combine": "max"}, "combine must be one of"),
        ("dare", {"seed": 1.5}, "seed must be an integer"),
        ("breadcrumbs", {"keep": -0.1}, "keep must be in"),
        ("breadcrumbs", {"keep": 0.9, "top": 0.2}, "keep \\+ top"),
        ("breadcrumbs", {"ranking": "layer"}, "ranking must be one of"),
        ("iso_c", {"conv": "flat"}, "conv must be one of"),
        ("tsv_m", {"share": -1.0}, "share must be ≥ 0"),
        ("tsv_m", {"share": 0.0}, "share must be > 0"),
        ("iso_cts", {"common": 2.0}, "common must be in"),
        ("consensus", {"k": -1}, "k must be ≥ 0"),
        ("consensus", {"lam": -0.5}, "lam must be ≥ 0"),
        ("lines", {"beta": -1.0}, "beta must be ≥ 0"),
        ("lines", {"alpha_scale": float("inf")}, "must be finite"),
    ],
)
def test_out_of_range_settings_are_refused(name, settings, message):
    with pytest.raises(TaskvecError, match=message):
        merge(make_vectors(), name, **settings)


def test_unknown_method_is_refused():
    with pytest.raises(TaskvecError, match="unknown merge method 'average'"):
        merge(make_vectors(), "average")


def test_registry_entries_are_complete():
    reserved = {"#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"}
    colors = [m.color for m in MERGE_METHODS]
    assert len(set(colors)) == len(colors) and not reserved & set(colors)
    for method in MERGE_METHODS:
        assert re.fullmatch(r"#[0-9a-f]{6}", method.color)
        assert method.label and method.description and re.fullmatch(r"https://arxiv\.org/abs/\d{4}\.\d{5}", method.reference)
        assert len(method.alpha_grid([0.0, 0.5, 1.0])) <= 21 and all(a >= 0 for a in method.alpha_grid([0.0]))
        assert method.grid()  # every combination of the declared grids validates
    assert MERGE_METHODS.get("task_arithmetic").alpha_grid([0.0, 0.5]) == (0.0, 0.5)  # empty: the run's grid


# ----- metadata -----------------------------------------------------------------------------------


def test_merge_metadata_survives_save_and_load(tmp_path):
    vectors = make_vectors()
    merged = merge(vectors, "dare", p=0.3, seed=4)
    expected = {
        "method": "dare",
        "settings": {"p": 0.3, "combine": "sum", "seed": 4, "mask_rate": 0.8},
        "inputs": [["task0"], ["task1"], ["task2"]],
    }
    assert merged.info == {"merge": expected}
    path = tmp_path / "merged.safetensors"
    merged.save(path)
    loaded = TaskVector.load(path)
    assert loaded.info == {"merge": expected}
    assert loaded.tasks == ("task0", "task1", "task2") and loaded.mode == merged.mode and loaded.base == BASE
    for name in NAMES:
        assert torch.equal(loaded.vector[name], merged.vector[name])


def test_merging_merged_vectors_records_nested_inputs():
    vectors = make_vectors(count=4)
    pair = merge(vectors[:2], "ties")
    merged = merge([pair, *vectors[2:]], "task_arithmetic")
    assert merged.tasks == ("task0", "task1", "task2", "task3")
    assert merged.info["merge"]["inputs"] == [["task0", "task1"], ["task2"], ["task3"]]


def test_the_registration_order_is_the_documented_one():
    """The order of taskvec/merging/__init__.py's imports is the order of every report and of a
    config's default [merge] methods; sorting those imports (a linter's fix) must not change it."""
    assert MERGE_METHODS.names() == ["task_arithmetic", "ties", "dare", "breadcrumbs", "tsv_m", "iso_c", "iso_cts", "consensus", "lines"]
