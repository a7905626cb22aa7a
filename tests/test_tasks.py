"""Tasks: every registered task loads; splits are seeded, disjoint and capped; safe unpickling."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from taskvec.errors import TaskvecError
from taskvec.tasks import Split, Task, available_tasks, get_task, load_task_data, make_splits
from taskvec.tasks._safe_pickle import load_numpy_pickle, loads_numpy
from taskvec.tasks.corpus import MAX_SENTENCES, MAX_WORDS, chunk_text, deduplicate, grouped_split, split_sentences
from taskvec.tasks.image import package_dir, read_idx

IMAGE_TASKS = ["mnist", "ising", "animal-mnist", "digits", "textile"]
TEXT_TASKS = ["movie-sentiment", "review-or-plot", "debate-party", "convention-party", "moral-foundation", "word-polarity"]


def test_all_expected_tasks_are_registered():
    assert set(IMAGE_TASKS + TEXT_TASKS) <= set(available_tasks())


def test_unknown_task_is_a_taskvec_error():
    with pytest.raises(TaskvecError, match="unknown task"):
        get_task("no-such-task")
    with pytest.raises(TaskvecError):
        load_task_data("no-such-task")


def test_missing_data_package_is_a_taskvec_error():
    with pytest.raises(TaskvecError, match="not installed"):
        package_dir("no_such_data_package_xyz")


# ------------------------------------------------------------------------- real tasks


def _check_split(task: Task, split: Split) -> None:
    assert len(split) > 0
    assert split.labels.dtype == np.int64 and split.labels.ndim == 1
    assert split.labels.min() >= 0 and split.labels.max() < task.num_classes
    if task.modality == "image":
        assert isinstance(split.inputs, np.ndarray) and split.inputs.dtype == np.uint8
        assert split.inputs.ndim == 3 or (split.inputs.ndim == 4 and split.inputs.shape[-1] == 3)
        assert max(split.inputs.shape[1:3]) <= 64
        assert len(split.inputs) == len(split.labels)
    else:
        assert isinstance(split.inputs, list) and len(split.inputs) == len(split.labels)
        assert all(isinstance(t, str) and t.strip() for t in split.inputs)


@pytest.mark.parametrize("name", IMAGE_TASKS + TEXT_TASKS)
def test_task_loads_with_valid_labels(name):
    task = get_task(name)
    assert task.name == name
    assert task.source and task.notes
    train, test = task.load()
    _check_split(task, train)
    labels = train.labels
    if test is not None:
        _check_split(task, test)
        labels = np.concatenate([labels, test.labels])
        if task.modality == "image":
            assert train.inputs.shape[1:] == test.inputs.shape[1:]
    # classnames match the labels: every class occurs, none beyond the names
    assert set(np.unique(labels).tolist()) == set(range(task.num_classes))
    assert len(set(task.classnames)) == task.num_classes
    if task.modality == "text":
        assert task.descriptions is not None and len(task.descriptions) == task.num_classes
        assert all(d.strip() for d in task.descriptions)
    # cached: a second load is the same objects
    again = get_task(name).load()
    assert again[0] is train and again[1] is test


@pytest.mark.parametrize("name", IMAGE_TASKS + TEXT_TASKS)
def test_default_splits_of_each_task(name):
    data = make_splits(get_task(name), seed=0, max_train=300, max_val=50, max_test=80)
    for part in (data.train, data.val, data.test):
        _check_split(data.task, part)
    assert len(data.train) <= 300 and len(data.val) <= 50 and len(data.test) <= 80


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_text_tasks_share_no_text_between_train_and_test(name):
    train, test = get_task(name).load()
    if test is None:
        data = make_splits(get_task(name), seed=0)
        train, test = data.train, data.test
    normalize = lambda t: " ".join(t.casefold().split())  # noqa: E731
    assert not {normalize(t) for t in train.inputs} & {normalize(t) for t in test.inputs}


def test_image_inputs_have_no_duplicates_across_splits():
    data = make_splits(get_task("animal-mnist"), seed=0)
    train = {bytes(x) for x in data.train.inputs.reshape(len(data.train), -1)}
    assert not any(bytes(x) in train for x in data.test.inputs.reshape(len(data.test), -1))


def test_real_task_splits_are_seeded():
    task = get_task("digits")
    a, b, c = make_splits(task, seed=0), make_splits(task, seed=0), make_splits(task, seed=1)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(name).inputs, b.split(name).inputs)
        np.testing.assert_array_equal(a.split(name).labels, b.split(name).labels)
    assert not np.array_equal(a.test.inputs, c.test.inputs)
    assert not np.array_equal(a.val.inputs, c.val.inputs)
    # the shipped MNIST test split is kept whole; validation is capped at 5000
    mnist = make_splits(get_task("mnist"), seed=0)
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55000, 5000, 10000)


# --------------------------------------------------------------------- synthetic tasks


def _synthetic(n: int, with_test: int = 0) -> Task:
    def load():
        train = Split(np.arange(n), np.arange(n, dtype=np.int64) % 3)
        if not with_test:
            return train, None
        return train, Split(np.arange(n, n + with_test), np.arange(with_test, dtype=np.int64) % 3)

    return Task(name="synthetic", modality="image", classnames=("a", "b", "c"), load=load)


def _ids(data) -> dict[str, set[int]]:
    return {name: set(data.split(name).inputs.tolist()) for name in ("train", "val", "test")}


def test_make_splits_partitions_without_overlap():
    data = make_splits(_synthetic(1000), seed=3)
    ids = _ids(data)
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(1000))
    assert len(ids["test"]) == 200  # default test_fraction 0.2
    assert len(ids["val"]) == 80  # 10% of the remaining 800
    for part in ("train", "val", "test"):  # labels follow their inputs
        split = data.split(part)
        np.testing.assert_array_equal(split.labels, split.inputs % 3)


def test_make_splits_is_deterministic_per_seed_and_varies_across_seeds():
    task = _synthetic(500)
    assert _ids(make_splits(task, seed=7)) == _ids(make_splits(task, seed=7))
    one, two = _ids(make_splits(task, seed=7)), _ids(make_splits(task, seed=8))
    assert one["test"] != two["test"] and one["val"] != two["val"]


def test_shipped_test_split_is_kept_and_val_carved_from_train():
    data = make_splits(_synthetic(100, with_test=30), seed=0)
    ids = _ids(data)
    assert ids["test"] == set(range(100, 130))
    assert len(ids["val"]) == 10 and ids["train"] | ids["val"] == set(range(100))
    assert not ids["train"] & ids["val"]


def test_val_is_ten_percent_capped():
    task = _synthetic(20000, with_test=10)
    assert len(make_splits(task, seed=0).val) == 2000  # 10%, under the default cap of 5000
    assert len(make_splits(task, seed=0, val_cap=500).val) == 500
    assert len(make_splits(_synthetic(60000, with_test=10), seed=0).val) == 5000  # default cap


def test_max_caps_subsample_within_each_split():
    task = _synthetic(1000)
    full = _ids(make_splits(task, seed=2))
    capped = make_splits(task, seed=2, max_train=50, max_val=5, max_test=20)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (50, 5, 20)
    ids = _ids(capped)
    for part in ("train", "val", "test"):
        assert ids[part] <= full[part]
    assert _ids(make_splits(task, seed=2, max_train=50, max_val=5, max_test=20)) == ids
    # a cap above the split size keeps everything
    assert len(make_splits(task, seed=2, max_train=10**6).train) == len(full["train"])


# ----------------------------------------------------------------------- text helpers


def test_chunks_are_bounded_and_deterministic():
    text = " ".join(f"Sentence number {i} says something about the topic at hand." for i in range(40))
    text += " " + " ".join(["long"] * 150) + "."
    chunks = chunk_text(text)
    assert chunks == chunk_text(text)
    assert all(5 <= len(c.split()) <= MAX_WORDS for c in chunks)
    assert all(len(split_sentences(c)) <= MAX_SENTENCES for c in chunks)
    assert " ".join(chunks).split() == " ".join(text.split()).split()  # nothing lost or reordered
    assert chunk_text("Wrong.") == []  # under 5 words


def test_sentence_splitting_keeps_abbreviations():
    sentences = split_sentences("Based on a Philip K. Dick story. Mr. Smith lives in the U.S. now! Yes.")
    assert sentences == ["Based on a Philip K. Dick story.", "Mr. Smith lives in the U.S. now!", "Yes."]
    assert split_sentences("We support that.Donald Trump agrees (APPLAUSE) fully.") == [
        "We support that.",
        "Donald Trump agrees fully.",
    ]


def test_deduplicate_drops_repeats_and_conflicts():
    examples = [("Hello world", 0, "a"), ("hello  WORLD", 0, "b"), ("same", 0, "a"), ("Same", 1, "c"), ("x", 1, "d")]
    assert deduplicate(examples) == [("Hello world", 0, "a"), ("x", 1, "d")]


def test_grouped_split_never_divides_a_group():
    rng = np.random.default_rng(0)
    examples = []
    for g in range(120):
        label = g % 2
        examples += [(f"g{g} chunk {k}", label, f"speech-{g}") for k in range(int(rng.integers(1, 20)))]
    group_of = {t: g for t, _, g in examples}
    train, test = grouped_split(examples)
    train_groups = {group_of[t] for t in train.inputs}
    test_groups = {group_of[t] for t in test.inputs}
    assert train_groups and test_groups and not train_groups & test_groups
    for label in (0, 1):
        total = sum(1 for _, y, _ in examples if y == label)
        assert 0.2 <= np.sum(test.labels == label) / total < 0.45
    again = grouped_split(examples)
    assert again[1].inputs == test.inputs  # fixed, not seeded


# ------------------------------------------------------------------- safe unpickling


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", [_Evil(), _EvalEvil(), {"a": _Evil()}])
def test_restricted_unpickler_refuses_code(payload):
    with pytest.raises(TaskvecError, match="refusing"):
        loads_numpy(pickle.dumps(payload))


def test_restricted_unpickler_refuses_non_arrays_and_object_arrays():
    with pytest.raises(TaskvecError, match="numpy array"):
        loads_numpy(pickle.dumps([1, 2, 3]))
    with pytest.raises(TaskvecError, match="object"):
        loads_numpy(pickle.dumps(np.array([1, "a"], dtype=object)))
    with pytest.raises(TaskvecError, match="cannot unpickle"):
        loads_numpy(b"not a pickle at all")


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_accepts_numpy_arrays(protocol):
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    out = loads_numpy(pickle.dumps(array, protocol=protocol))
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


def test_restricted_unpickler_maps_numpy1_module_names():
    # numpy 1 wrote `numpy.core.multiarray`; numpy 2 calls it `numpy._core.multiarray`
    data = pickle.dumps(np.arange(5, dtype=np.uint8), protocol=2)  # GLOBAL opcodes, no frames
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    np.testing.assert_array_equal(loads_numpy(data), np.arange(5, dtype=np.uint8))


def test_load_numpy_pickle_reads_gzip_files(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    path = tmp_path / "a.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(array, handle, protocol=4)
    np.testing.assert_array_equal(load_numpy_pickle(path), array)
    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as handle:
        pickle.dump(_Evil(), handle)
    with pytest.raises(TaskvecError):
        load_numpy_pickle(evil)


def test_read_idx_round_trip_and_errors(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(good, "wb") as handle:
        handle.write(b"\x00\x00\x08\x03" + np.array([2, 3, 4], dtype=">u4").tobytes() + images.tobytes())
    np.testing.assert_array_equal(read_idx(good), images)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as handle:
        handle.write(b"\x00\x00\x08\x03" + np.array([2, 3, 5], dtype=">u4").tobytes() + images.tobytes())
    with pytest.raises(TaskvecError):
        read_idx(bad)
