"""Backbones by name: `build_backbone("effnet-lite0")`, `build_backbone("minilm", init="random")`."""
from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Callable, Literal, Union

from ..errors import TaskvecError

if TYPE_CHECKING:
    from .base import Backbone

Init = Literal["pretrained", "random"]
Builder = Callable[..., "Backbone"]

# A builder, or where to import it from ("package.module:function"), so that naming and
# listing backbones needs no torch.
_BUILDERS: dict[str, Union[Builder, str]] = {}
# Prefix families resolve names such as "hf:/path/to/model" or "openclip:ViT-B-32/openai".
_PREFIX_BUILDERS: dict[str, Union[Builder, str]] = {}


def register_backbone(name: str, builder: str | None = None, *, prefix: bool = False):
    """Register `builder(init=..., **options) -> Backbone` under a name (or a `name:` prefix).

    As a decorator: `@register_backbone("mine")`. With `builder="package.module:function"` the
    module is imported when the backbone is first built (taskvec's own backbones)."""
    table = _PREFIX_BUILDERS if prefix else _BUILDERS
    if builder is not None:
        table[name] = builder
        return None

    def decorator(function: Builder) -> Builder:
        table[name] = function
        return function

    return decorator


def available_backbones() -> list[str]:
    return sorted(_BUILDERS) + [f"{p}:<spec>" for p in sorted(_PREFIX_BUILDERS)]


def build_backbone(name: str, init: Init = "pretrained", **options) -> Backbone:
    """Build a backbone by registry name; `init="random"` gives the same architecture untrained."""
    if init not in ("pretrained", "random"):
        raise TaskvecError(f"unknown init {init!r}: expected 'pretrained' or 'random'")
    builder, args = _builder(name)
    check_options(name, options)
    return builder(*args, init=init, **options)


def is_registered(name: str) -> bool:
    prefix, sep, _ = name.partition(":")
    return name in _BUILDERS or bool(sep and prefix in _PREFIX_BUILDERS)


def _builder(name: str) -> tuple[Builder, tuple]:
    if name in _BUILDERS:
        return _resolved(_BUILDERS, name), ()
    prefix, sep, spec = name.partition(":")
    if sep and prefix in _PREFIX_BUILDERS:
        return _resolved(_PREFIX_BUILDERS, prefix), (spec,)
    raise TaskvecError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")


def _resolved(table: dict[str, Union[Builder, str]], key: str) -> Builder:
    builder = table[key]
    if isinstance(builder, str):
        module, _, function = builder.partition(":")
        builder = table[key] = getattr(importlib.import_module(module), function)
    return builder


def backbone_options(name: str) -> list[str]:
    """The keyword options the backbone's builder takes (what [backbone_options] may set)."""
    builder, args = _builder(name)
    parameters = list(inspect.signature(builder).parameters.values())[len(args):]
    return [p.name for p in parameters if p.name != "init" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_options(name: str, options: dict) -> None:
    """A one-line TaskvecError for an option the backbone does not take."""
    allowed = backbone_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TaskvecError(f"unknown key 'backbone_options.{unknown[0]}' for backbone {name!r}; allowed: {', '.join(allowed) or 'none'}")
