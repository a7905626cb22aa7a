"""Backbones by name: `build_backbone("effnet-lite0")`, `build_backbone("minilm", init="random")`."""
from __future__ import annotations

from typing import Callable, Literal

from ..errors import TaskvecError
from .base import Backbone

Init = Literal["pretrained", "random"]
Builder = Callable[..., Backbone]

_BUILDERS: dict[str, Builder] = {}
# Prefix families resolve names such as "hf:/path/to/model" or "openclip:ViT-B-32/openai".
_PREFIX_BUILDERS: dict[str, Builder] = {}


def register_backbone(name: str, *, prefix: bool = False) -> Callable[[Builder], Builder]:
    """Register `builder(init=..., **options) -> Backbone` under a name (or a `name:` prefix)."""

    def decorator(builder: Builder) -> Builder:
        (_PREFIX_BUILDERS if prefix else _BUILDERS)[name] = builder
        return builder

    return decorator


def available_backbones() -> list[str]:
    return sorted(_BUILDERS) + [f"{p}:<spec>" for p in sorted(_PREFIX_BUILDERS)]


def build_backbone(name: str, init: Init = "pretrained", **options) -> Backbone:
    """Build a backbone by registry name; `init="random"` gives the same architecture untrained."""
    if init not in ("pretrained", "random"):
        raise TaskvecError(f"unknown init {init!r}: expected 'pretrained' or 'random'")
    if name in _BUILDERS:
        return _BUILDERS[name](init=init, **options)
    prefix, sep, spec = name.partition(":")
    if sep and prefix in _PREFIX_BUILDERS:
        return _PREFIX_BUILDERS[prefix](spec, init=init, **options)
    raise TaskvecError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
