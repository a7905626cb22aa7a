"""The encoder interface every backbone implements."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]
Modality = Literal["image", "text"]
ModelT = TypeVar("ModelT", bound=nn.Module)


class Shared(Generic[ModelT]):
    """Holds a frozen part of a model (CLIP's text tower, its tokenizer): not a registered
    module, so not in θ or task vectors, and shared, not copied, by `copy.deepcopy` (edited
    models all reuse one)."""

    def __init__(self, model: ModelT):
        self.model = model
        self.tokenizer: Any = None

    def __deepcopy__(self, memo: dict) -> Shared[ModelT]:
        return self


class Backbone(nn.Module):
    """An encoder f(x; θ): a batch dict of tensors -> features of shape (N, embed_dim).

    `prepare` turns a task's raw inputs (uint8 image arrays or strings) into that batch dict
    once, deterministically, so training and evaluation only index tensors. `forward` takes
    the batch dict as keyword arguments so `torch.func.functional_call` can drive it.
    """

    name: str = "backbone"
    modality: Modality = "image"
    embed_dim: int = 0

    def prepare(self, inputs: Any) -> Batch:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Features of class descriptions, for zero-shot heads. Only text-capable backbones."""
        raise NotImplementedError(f"backbone {self.name!r} cannot embed text")

    def identity(self) -> dict[str, str]:
        """What names this backbone's θ0, stored in task-vector metadata."""
        return {"backbone": self.name}

    def export(self, folder: Path, card: str) -> None:
        """Write this model's weights where other tools read them, with `card` as README.md
        (`taskvec export`). Here the state dict (θ and buffers) as model.safetensors; backbones with a format of their own
        (transformers, open_clip) write that."""
        from safetensors.torch import save_file

        save_file(
            {n: v.detach().to("cpu").contiguous() for n, v in self.state_dict().items()},
            str(folder / "model.safetensors"),
            metadata={"format": "pt", "backbone": self.name},
        )
        (folder / "README.md").write_text(card)

    def train(self, mode: bool = True) -> Backbone:
        """Fine-tuning never updates normalization statistics: f and f_lin must agree at θ0."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self
