"""A tiny, randomly initialized open_clip architecture for tests (no weights, no network).

Importing this module registers the open_clip config `taskvec-tiny-clip` (a 2-layer ViT on
32 px images with 8 px patches, and a 2-layer text tower) once per process.
"""

from __future__ import annotations

import tempfile

TINY_CLIP = "taskvec-tiny-clip"
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register() -> str:
    import open_clip

    from taskvec.models.openclip import register_model_config

    if TINY_CLIP not in open_clip.list_models():
        register_model_config(TINY_CLIP, CONFIG, tempfile.mkdtemp(prefix="taskvec-tiny-clip-"))
    return TINY_CLIP


def build(init: str = "random", **options):
    import torch

    from taskvec.models import build_backbone

    register()
    torch.manual_seed(0)
    return build_backbone(f"openclip:{TINY_CLIP}", init=init, **options)
