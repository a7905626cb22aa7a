"""Backbones (encoders) by name, and the frozen classification heads put on them.

taskvec's own backbones are registered here by where their builders live: naming, listing and
validating them imports no torch; building one imports its module."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import available_backbones, build_backbone, register_backbone

register_backbone("effnet-lite0", "taskvec.models.efficientnet:build_effnet_lite0")
register_backbone("minilm", "taskvec.models.hf_text:build_minilm")
register_backbone("hf", "taskvec.models.hf_text:build_hf", prefix=True)
register_backbone("openclip", "taskvec.models.openclip:build_openclip", prefix=True)
register_backbone("hf-clip", "taskvec.models.hf_clip:build_hf_clip", prefix=True)

__all__ = ["Backbone", "Batch", "available_backbones", "build_backbone", "register_backbone"]


def __getattr__(name: str) -> Any:  # Backbone is an nn.Module: imported on first use (PEP 562)
    if name in ("Backbone", "Batch"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .base import Backbone, Batch
