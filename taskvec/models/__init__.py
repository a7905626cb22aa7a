"""Backbones (encoders) by name, and the frozen classification heads put on them."""
from .base import Backbone, Batch
from .registry import available_backbones, build_backbone, register_backbone

# Importing a family registers its names.
from . import efficientnet as _efficientnet  # noqa: F401,E402
from . import hf_text as _hf_text  # noqa: F401,E402
from . import openclip as _openclip  # noqa: F401,E402

__all__ = ["Backbone", "Batch", "available_backbones", "build_backbone", "register_backbone"]
