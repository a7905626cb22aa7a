"""Backbones by name: `build_backbone("effnet-lite0")`, `build_backbone("minilm", init="random")`.

Each backbone kind is registered once (`register_backbone`) as a `BackboneKind`: its builder and
what the rest of taskvec needs to know before building it — its modality, the head kind its
heads default to, what it needs on disk (for the dry run), the packages it imports and the
options its builder takes. A name is either a kind's own (`effnet-lite0`) or a family's
(`openclip:ViT-B-32/openai`, `hf-clip:/models/clip`), and `backbone_kind(name)` gives its kind;
nothing elsewhere guesses from a name. Builders registered by where they live
("package.module:function") are imported when first built, so naming, listing and validating
backbones imports no torch.

`Init` is where θ0 comes from, defined here once: checked by `build_backbone`, compared
against by builders.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TaskvecError
from ..needs import Need
from ..registry import Kind
from .head_kinds import AUTO, HeadKind, resolve_head

if TYPE_CHECKING:
    from .base import Backbone, Modality  # one definition of the modalities, beside the Backbone interface


class Init(StrEnum):
    """Where θ0 comes from: the released weights, or the same architecture untrained (random
    values drawn from torch's seed). Members equal their strings, so configs and files keep
    saying "pretrained" and "random"; `Init(text)` refuses anything else in one line."""

    PRETRAINED = "pretrained"
    RANDOM = "random"

    @classmethod
    def _missing_(cls, value: object) -> Init:
        raise TaskvecError(f"unknown init {value!r}; expected 'pretrained' or 'random'")


Builder = Callable[..., "Backbone"]
# (spec, backbone options, init) -> what building needs: `spec` is what follows `family:` in a
# family's names, "" for a kind with a name of its own.
NeedsFunction = Callable[[str, dict, Init], list[Need]]


@dataclass(frozen=True)
class BackboneKind(Kind):
    """A registered backbone kind.

    builder: `builder([spec,] init=..., **options) -> Backbone`, or "package.module:function".
    prefix: a family of names `name:<spec>` (the spec is the builder's first argument).
    modality: "image" or "text"; None: unknown until built (what `Backbone.modality` says).
    head: the head kind its heads take under `[head] kind = "auto"`; None: by modality.
    needs: what building needs, for the dry run: a `NeedsFunction` or "module:function".
    packages: the Python distributions it imports beyond taskvec's own code.
    options: the builder's keyword options (`[backbone_options]`); None: read from its signature.
    accepts_paths: a local model folder or a Hugging Face repo id, given where a backbone name
        is expected, names a model of this kind (`resolve_base`).
    """

    builder: Builder | str = field(default="", compare=False, repr=False)
    prefix: bool = False
    modality: Modality | None = None
    head: HeadKind | None = None
    needs: NeedsFunction | str | None = field(default=None, compare=False, repr=False)
    packages: tuple[str, ...] = ()
    options: tuple[str, ...] | None = None
    accepts_paths: bool = False

    @property
    def pattern(self) -> str:
        """How its names are written: `effnet-lite0`, `openclip:<spec>`."""
        return f"{self.name}:<spec>" if self.prefix else self.name

    @property
    def default_head(self) -> HeadKind | None:
        """The head kind "auto" gives its heads (None: decided by the built model's modality)."""
        if self.head is None and self.modality is None:
            return None
        return resolve_head(AUTO, self.head, self.modality)

    def build_function(self) -> Builder:
        return _load(self.builder)

    def option_names(self) -> list[str]:
        """The keyword options the builder takes (what [backbone_options] may set)."""
        if self.options is not None:
            return list(self.options)
        parameters = list(inspect.signature(self.build_function()).parameters.values())[1 if self.prefix else 0 :]
        return [p.name for p in parameters if p.name != "init" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


# Kinds with names of their own, and families (`name:<spec>`), each in registration order.
_KINDS: dict[str, BackboneKind] = {}
_PREFIX_KINDS: dict[str, BackboneKind] = {}
_LOADED: dict[str, Callable] = {}


def register_backbone(
    name: str,
    builder: Builder | str | None = None,
    *,
    prefix: bool = False,
    label: str = "",
    description: str = "",
    modality: Modality | None = None,
    head: HeadKind | None = None,
    needs: NeedsFunction | str | None = None,
    packages: tuple[str, ...] = (),
    options: tuple[str, ...] | None = None,
    accepts_paths: bool = False,
):
    """Register `builder(init=..., **options) -> Backbone` under a name (or a `name:` prefix),
    with the kind's metadata (see `BackboneKind`; all optional). Registering a name again
    replaces its kind.

    As a decorator: `@register_backbone("mine")`. With `builder="package.module:function"` the
    module is imported when the backbone is first built (taskvec's own backbones)."""
    if modality not in (None, "image", "text"):
        raise ValueError(f"backbone {name!r}: modality must be 'image', 'text' or None, got {modality!r}")
    if accepts_paths and not prefix:
        raise ValueError(f"backbone {name!r}: only a family (prefix=True) can accept folders as names")

    def add(function: Builder | str) -> BackboneKind:
        kind = BackboneKind(
            name=name,
            label=label or name,
            color="",
            description=description,
            builder=function,
            prefix=prefix,
            modality=modality,
            head=head,
            needs=needs,
            packages=tuple(packages),
            options=None if options is None else tuple(options),
            accepts_paths=accepts_paths,
        )
        (_PREFIX_KINDS if prefix else _KINDS)[name] = kind
        return kind

    if builder is not None:
        add(builder)
        return None

    def decorator(function: Builder) -> Builder:
        add(function)
        return function

    return decorator


def backbone_kinds() -> list[BackboneKind]:
    """Every registered kind: names of their own (sorted), then families (sorted)."""
    return [_KINDS[n] for n in sorted(_KINDS)] + [_PREFIX_KINDS[p] for p in sorted(_PREFIX_KINDS)]


def available_backbones() -> list[str]:
    return [kind.pattern for kind in backbone_kinds()]


def backbone_kind(name: str) -> BackboneKind:
    """The kind of a backbone name: `backbone_kind("openclip:ViT-B-32/openai")` is openclip's."""
    return _lookup(name)[0]


def is_registered(name: str) -> bool:
    prefix, sep, _ = name.partition(":")
    return name in _KINDS or bool(sep and prefix in _PREFIX_KINDS)


def _lookup(name: str) -> tuple[BackboneKind, str | None]:
    """The kind and, for a family's name, the spec after `family:`."""
    if name in _KINDS:
        return _KINDS[name], None
    prefix, sep, spec = name.partition(":")
    if sep and prefix in _PREFIX_KINDS:
        return _PREFIX_KINDS[prefix], spec
    raise TaskvecError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")


def _load(reference: Callable | str) -> Callable:
    """A function, or the one "package.module:function" names (imported once)."""
    if not isinstance(reference, str):
        return reference
    if reference not in _LOADED:
        module, _, function = reference.partition(":")
        _LOADED[reference] = getattr(importlib.import_module(module), function)
    return _LOADED[reference]


def build_backbone(name: str, init: Init | str = Init.PRETRAINED, **options) -> Backbone:
    """Build a backbone by registry name; `init="random"` gives the same architecture untrained."""
    init = Init(init)
    kind, spec = _lookup(name)
    check_options(name, options)
    return kind.build_function()(*(() if spec is None else (spec,)), init=init, **options)


def backbone_options(name: str) -> list[str]:
    """The keyword options the backbone's builder takes (what [backbone_options] may set)."""
    return backbone_kind(name).option_names()


def check_options(name: str, options: dict) -> None:
    """A one-line TaskvecError for an option the backbone does not take."""
    allowed = backbone_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TaskvecError(f"unknown key 'backbone_options.{unknown[0]}' for backbone {name!r}; allowed: {', '.join(allowed) or 'none'}")


def backbone_needs(name: str, options: dict[str, Any], init: Init | str) -> list[Need]:
    """What building backbone `name` with these options needs (weights, a model folder), as its
    kind reports it: files looked up, nothing loaded or downloaded. An unknown name is itself
    what is missing."""
    try:
        kind, spec = _lookup(name)
    except TaskvecError as exc:
        return [Need(f"backbone {name}", False, str(exc))]
    if kind.needs is None:
        return []
    return list(_load(kind.needs)(spec or "", dict(options), Init(init)))


def resolve_base(text: str) -> str:
    """A backbone name from what a user typed where one is expected (`--base`): a local folder,
    or a Hugging Face repo id that is not a registered name, names a model of the kind that
    accepts paths (`hf-clip:<folder>`); anything else passes through as it is."""
    from .hub import looks_like_repo_id

    claimant = next((kind for kind in backbone_kinds() if kind.accepts_paths), None)
    if claimant is not None and (Path(text).expanduser().is_dir() or (not is_registered(text) and looks_like_repo_id(text))):
        return f"{claimant.name}:{text}"
    return text
