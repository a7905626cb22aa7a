"""Tiny models and synthetic tasks shared by the tests (registered under test-only names)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from taskvec.errors import TaskvecError
from taskvec.models import Backbone, register_backbone
from taskvec.tasks import Split, Task, register_task

torch.set_num_threads(2)


class TinyCNN(Backbone):
    """Conv + frozen BatchNorm + ReLU + linear: exercises the same layer kinds as EfficientNet."""

    name = "tiny-cnn"
    modality = "image"

    def __init__(self, image_size: int = 8, width: int = 6, embed_dim: int = 12):
        super().__init__()
        self.image_size, self.embed_dim = image_size, embed_dim
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4, embed_dim)
        with torch.no_grad():  # non-trivial frozen statistics
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def prepare(self, inputs):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        if x.ndim == 3:
            x = x[:, None].repeat(1, 3, 1, 1)
        else:
            x = x.permute(0, 3, 1, 2)
        x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return {"pixels": x / 127.5 - 1.0}

    def forward(self, *, pixels):
        h = torch.relu(self.bn(self.conv(pixels)))
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return torch.tanh(self.fc(h))


class TinyAttention(Backbone):
    """One self-attention block through scaled_dot_product_attention (fused kernel on CPU)."""

    name = "tiny-attn"
    modality = "image"

    def __init__(self, image_size: int = 8, dim: int = 8, embed_dim: int = 8):
        super().__init__()
        self.image_size, self.embed_dim = image_size, embed_dim
        self.embed = nn.Linear(3 * 4 * 4, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, embed_dim)

    prepare = TinyCNN.prepare

    def forward(self, *, pixels):
        n = pixels.shape[0]
        patches = pixels.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(n, -1, 48)
        h = self.embed(patches)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = h + nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return self.out(h.mean(1))


@register_backbone("tiny-cnn")
def build_tiny_cnn(init: str = "pretrained", image_size: int = 8) -> TinyCNN:
    torch.manual_seed(0 if init == "pretrained" else 1)
    return TinyCNN(image_size=image_size)


@register_backbone("tiny-attn")
def build_tiny_attn(init: str = "pretrained", image_size: int = 8) -> TinyAttention:
    torch.manual_seed(0 if init == "pretrained" else 1)
    return TinyAttention(image_size=image_size)


def synthetic_images(kind: str, n: int = 240, seed: int = 0) -> Split:
    """Three tasks with distinct input supports: bright squares top-left, stripes, noise level."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2 if kind != "stripes" else 3, size=n)
    images = np.zeros((n, 8, 8), dtype=np.uint8)
    for i, y in enumerate(labels):
        if kind == "squares":
            images[i, : 3 + 2 * y, : 3 + 2 * y] = 200
            images[i] += rng.integers(0, 40, size=(8, 8)).astype(np.uint8)
        elif kind == "stripes":
            images[i, :, y::3] = 255
        else:
            images[i] = rng.integers(0, 60 + 150 * y, size=(8, 8)).astype(np.uint8)
    return Split(images, labels.astype(np.int64))


for _kind in ("squares", "stripes", "noise"):
    register_task(f"toy-{_kind}")(
        lambda k=_kind: Task(
            name=f"toy-{k}",
            modality="image",
            classnames=tuple(f"{k} {c}" for c in range(3 if k == "stripes" else 2)),
            load=lambda: (synthetic_images(k), None),
            source="tests",
        )
    )


@pytest.fixture
def tiny():
    return build_tiny_cnn()


def tiny_training_setup():
    """tiny-cnn, a prototype head and 96 prepared toy-squares images: what training tests fine-tune."""
    from taskvec.evaluate import encode
    from taskvec.models import build_backbone
    from taskvec.models.heads import prototype_head
    from taskvec.tasks import load_task_data

    model = build_backbone("tiny-cnn")
    data = load_task_data("toy-squares", max_train=96)
    inputs = model.prepare(data.train.inputs)
    labels = torch.as_tensor(data.train.labels)
    head = prototype_head(encode(model, inputs), labels, 2)
    return model, head, inputs, labels


def free_port() -> int:
    """A TCP port free now, for a process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["TaskvecError"]
