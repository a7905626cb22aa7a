"""The paper's datasets read from fake copies in each on-disk layout; splits, names, templates,
clear errors for missing data, and zero-shot heads."""

import clip_tiny
import fake_paper_data
import numpy as np
import pytest
import torch

from taskvec.errors import TaskvecError
from taskvec.models.zeroshot import head_cache_path, task_prompts, zeroshot_head, zeroshot_weights
from taskvec.tasks import get_task, load_task_data, make_splits
from taskvec.tasks.paper import CONTROL_TASK, PAPER_TASKS, missing_data, torch_random_split

ALL = PAPER_TASKS + (CONTROL_TASK,)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, fake_paper_data.make(root)


@pytest.fixture(scope="module")
def alt_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data-alt")
    return root, fake_paper_data.make(root, ("DTD", "EuroSAT", "SUN397"), alt=True)


@pytest.mark.parametrize("name", ALL)
def test_each_dataset_loads_with_the_papers_splits(root, name):
    path, written = root
    n_train, n_test, n_classes = written[name]
    task = get_task(name, root=path)
    assert task.name == name and task.num_classes == n_classes and task.missing() == []
    data = make_splits(task, seed=0, val_fraction=0.1, val_cap=5000)
    sizes = (len(data.train), len(data.val), len(data.test))
    if name == "EuroSAT":  # the benchmark's fixed val folder
        assert sizes == (n_train, 10, n_test)
    else:
        n_val = max(1, min(int(n_train * 0.1), 5000))
        assert sizes == (n_train - n_val, n_val, n_test)
    for split in (data.train, data.val, data.test):
        assert split.labels.dtype == np.int64 and 0 <= split.labels.min() and split.labels.max() < n_classes
    assert task.templates and all(t.count("{}") == 1 for t in task.templates)


def test_class_names_and_templates(root):
    path, _ = root
    assert get_task("Cars", root=path).classnames[1] == "Acura RL Sedan 2012"
    assert get_task("DTD", root=path).classnames == ("banded", "blotchy", "polka-dotted")
    assert get_task("SUN397", root=path).classnames == ("abbey", "bakery shop", "youth hostel")
    assert get_task("EuroSAT", root=path).classnames[2] == "brushland or shrubland"
    assert get_task("RESISC45", root=path).classnames[2] == "baseball diamond"
    assert get_task("ImageNet", root=path).classnames[0] == "tench"
    counts = {n: len(get_task(n, root=path).templates) for n in ALL}
    assert counts == {"Cars": 8, "DTD": 8, "EuroSAT": 3, "GTSRB": 3, "MNIST": 1, "RESISC45": 18, "SUN397": 2, "SVHN": 1, "ImageNet": 80}
    assert 'a photo of the number: "{}".' in get_task("MNIST").templates
    assert "i love my {}!" in get_task("Cars").templates
    assert "aerial view of the {}." in get_task("RESISC45").templates


def test_labels_follow_the_sources(root):
    path, _ = root
    train, test = get_task("SVHN", root=path).load()
    assert train.inputs.shape == (30, 32, 32, 3) and train.inputs.dtype == np.uint8
    assert train.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # 10 means the digit 0
    train, test = get_task("MNIST", root=path).load()
    assert train.inputs.shape == (40, 28, 28) and test.inputs.shape == (10, 28, 28)
    train, test = get_task("GTSRB", root=path).load()
    assert test.labels.tolist() == [0, 10, 20, 30, 40] and train.labels[:3].tolist() == [0, 0, 1]
    assert all(p.endswith(".ppm") for p in train.inputs)
    train, test = get_task("Cars", root=path).load()
    assert train.labels[:4].tolist() == [0, 1, 2, 0] and train.inputs[0].endswith("cars_train/00000.jpg")
    train, test = get_task("RESISC45", root=path).load()
    assert len(train) == 45 and test.labels.tolist() == list(range(10))


def test_alternative_layouts(alt_root):
    path, written = alt_root
    dtd = load_task_data("DTD", root=path)
    assert len(dtd.train) + len(dtd.val) == 9 and len(dtd.test) == 6
    sun = get_task("SUN397", root=path)
    assert sun.classnames == ("abbey", "bakery shop", "youth hostel")
    train, test = sun.load()
    assert len(train) == 9 and sorted(set(test.labels.tolist())) == [0, 1, 2]
    eurosat = load_task_data("EuroSAT", root=path)
    assert (len(eurosat.train), len(eurosat.val), len(eurosat.test)) == (24, 3, 3)


def test_validation_split_is_the_paper_codes_random_split():
    from torch.utils.data import random_split

    rest, held = torch_random_split(60000, 0.1, 5000, 0)
    train, val = random_split(range(60000), [55000, 5000], generator=torch.Generator().manual_seed(0))
    assert set(held.tolist()) == set(val.indices) and len(rest) == 55000
    assert train.indices[0] == 36044  # the check the paper's code makes for MNIST
    assert len(torch_random_split(1000, 0.1, 5000, 0)[1]) == 100


def test_missing_data_names_the_folder_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("TASKVEC_DATA", raising=False)
    with pytest.raises(TaskvecError, match=r"SVHN: missing .*svhn/train_32x32.mat.*torchvision"):
        get_task("SVHN", root=tmp_path).load()
    with pytest.raises(TaskvecError, match=r"no data root.*TASKVEC_DATA"):
        get_task("GTSRB").load()
    messages = missing_data("SUN397", tmp_path)
    assert len(messages) == 1 and "sun397/train" in messages[0] and "vision.princeton.edu" in messages[0]
    assert get_task("Cars", root=tmp_path).num_classes == 0  # names come from the data
    monkeypatch.setenv("TASKVEC_DATA", str(tmp_path))
    assert "MNIST/raw/train-images-idx3-ubyte" in get_task("MNIST").missing()[0]


def test_nothing_is_downloaded(tmp_path, monkeypatch):
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("taskvec tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    for name in ALL:
        with pytest.raises(TaskvecError):
            get_task(name, root=tmp_path).load()


def test_zero_shot_head_of_a_paper_task(root, tmp_path, monkeypatch):
    path, _ = root
    clip = clip_tiny.build()
    task = get_task("EuroSAT", root=path)
    prompts = task_prompts(task)
    assert len(prompts) == 10 and prompts[0][0] == "a centered satellite photo of annual crop land."
    head = zeroshot_head(clip, task, cache_dir=tmp_path / "heads")
    # rows: normalize each prompt, mean over templates, normalize
    emb = torch.nn.functional.normalize(clip.encode_text(prompts[3]), dim=-1).mean(0)
    torch.testing.assert_close(head.weight[3], emb / emb.norm(), rtol=1e-5, atol=1e-6)
    assert head.scale == pytest.approx(clip.logit_scale) and head.weight.shape == (10, clip.embed_dim)
    assert head_cache_path(tmp_path / "heads", clip, "EuroSAT", prompts).exists()

    def refuse(*args, **kwargs):
        raise AssertionError("re-encoded prompts despite the cache")

    monkeypatch.setattr(type(clip), "encode_text", refuse)
    again = zeroshot_head(clip, task, cache_dir=tmp_path / "heads")
    torch.testing.assert_close(again.weight, head.weight, rtol=0, atol=0)
    other = get_task("DTD", root=path)
    with pytest.raises(AssertionError):  # another task: another key, so it must encode
        zeroshot_head(clip, other, cache_dir=tmp_path / "heads")


def test_zero_shot_pipeline_end_to_end(root):
    """Fake DTD through the tiny CLIP: lazy images, zero-shot head, logits of the right shape."""
    path, _ = root
    clip = clip_tiny.build()
    data = load_task_data("DTD", root=path)
    inputs = clip.prepare(data.test.inputs)
    head = zeroshot_head(clip, data.task)
    with torch.no_grad():
        logits = head(clip(pixels=inputs["pixels"][:]))
    assert logits.shape == (len(data.test), 3)
    weights = zeroshot_weights(clip, [["a {}"], ["b", "c"]])
    assert weights.shape == (2, clip.embed_dim)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))
