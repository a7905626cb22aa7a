"""Evaluation shared among torchrun ranks: 2 gloo processes on the CPU give the single process's
results exactly (accuracies as counts, the same α and settings chosen, the same ξ grid and NTK),
with sets whose rows do not divide evenly among the ranks."""

import json

import _eval_worker
import pytest
import torch
from conftest import free_port

from taskvec.distributed import Ranks


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    _eval_worker.write_inputs(root)
    return root


def _one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: kernels may round by thread count
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_give_the_single_process_results_exactly(folder):
    import torch.multiprocessing as mp

    single = json.loads(json.dumps(_one_thread(lambda: _eval_worker.evaluate_all(folder, Ranks())), sort_keys=True))
    mp.spawn(_eval_worker.run, args=(2, free_port(), str(folder)), nprocs=2, join=True)
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
    # the work was shared: every row evaluated by exactly one rank, both ranks busy, uneven shares
    for key, n in single["rows"].items():
        assert n == _eval_worker.SIZES[tuple(key.split("/"))]
        assert ranks[0]["rows"][key] + ranks[1]["rows"][key] == n
    assert ranks[0]["rows"]["toy-squares/val"] == 24 and ranks[1]["rows"]["toy-squares/val"] == 21
    assert ranks[0]["rows"]["toy-squares/test"] == 16 and ranks[1]["rows"]["toy-squares/test"] == 22
    assert ranks[0]["rows"]["toy-noise/val"] == 0  # one chunk: rank 0 holds nothing and still takes part
    for rank in ranks:
        for section in ("single_task", "counts", "addition", "ties", "negation", "xi", "restricted", "linearity", "ntk"):
            assert rank[section] == single[section], section
    # the comparison has teeth: edits change the numbers, and the merge searched its grid
    assert sum(len({p["val_absolute"] for p in r["curve"]}) > 1 for r in single["addition"].values()) >= 2
    assert all(r["alpha"] > 0 for r in single["negation"].values())
    assert all(len(r["search"]) == 2 for r in single["ties"].values())
    assert all(any(0 < v < 2 for row in r["xi"] for v in row) for r in single["xi"].values())
    assert single["xi"]["linear/13"]["examples"] == {"toy-squares": 13, "toy-stripes": 13}


@pytest.mark.parametrize("n,chunk,count", [(45, 8, 2), (38, 8, 3), (6, 8, 2), (0, 8, 2), (64, 8, 8), (100, 7, 3)])
def test_shares_are_contiguous_whole_chunks_covering_every_row(n, chunk, count):
    spans = Ranks(0, count).spans(n, chunk)
    assert len(spans) == count and spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, in rank order
    assert all(start % chunk == 0 for start, stop in spans if stop > start)  # whole chunks of the global grid
    chunks = [-(-(stop - start) // chunk) for start, stop in spans]
    assert max(chunks) - min(chunks) <= 1  # balanced to one chunk
    assert Ranks(2 % count, count).span(n, chunk) == spans[2 % count]


def test_one_process_collectives_are_the_identity():
    ranks = Ranks()
    counts = torch.tensor([3, 4])
    assert ranks.total(counts) is counts and not ranks.sharded
    rows = torch.randn(5, 2)
    assert ranks.gather(rows, [5]) is rows
    assert ranks.spans(10, 4) == [(0, 10)]
