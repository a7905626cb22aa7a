"""Kinds of frozen classification head, each defined once: what it is built from, what that
needs on disk, and its builder.

A config names one (`[head] kind`), or "auto": the backbone kind's own head (zero-shot for
CLIP), else text descriptions for text encoders and class prototypes for image encoders. The
setup of a run, the Python API, the CLI and the dry run all ask this registry; the builders
(taskvec.models.heads) are imported when a head is first built, so naming and validating a
kind imports no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import TaskvecError
from ..registry import Kind, Registry

if TYPE_CHECKING:
    from .heads import ClassificationHead, HeadSource

AUTO = "auto"  # a config's `[head] kind` that lets the backbone kind choose

# What building a head reads from a task: its training examples (encoded by θ0), or only its
# class names (which some datasets keep in their files).
Reads = Literal["training data", "class names"]


@dataclass(frozen=True)
class HeadKind(Kind):
    """A way of building a task's frozen head from θ0. `builder`: "module:function" taking a
    `HeadSource`. `text`: built by a text encoder (reports say which one)."""

    reads: Reads = "training data"
    text: bool = False
    builder: str = field(default="", compare=False, repr=False)

    def build(self, source: HeadSource) -> ClassificationHead:
        module, _, function = self.builder.partition(":")
        build: Callable[[HeadSource], ClassificationHead] = getattr(importlib.import_module(module), function)
        return build(source)


HEAD_KINDS: Registry[HeadKind] = Registry("head kind")

PROTOTYPE = HEAD_KINDS.register(
    HeadKind(
        name="prototype",
        label="class prototypes",
        color="#1f77b4",
        reads="training data",
        description="normalized mean of θ0's normalized training features per class",
        builder="taskvec.models.heads:from_prototypes",
    )
)
PROBE = HEAD_KINDS.register(
    HeadKind(
        name="probe",
        label="linear probe",
        color="#ff7f0e",
        reads="training data",
        description="logistic regression on θ0's normalized training features",
        builder="taskvec.models.heads:from_probe",
    )
)
TEXT = HEAD_KINDS.register(
    HeadKind(
        name="text",
        label="class descriptions",
        color="#2ca02c",
        reads="class names",
        text=True,
        description="the text encoder's embedding of one description per class",
        builder="taskvec.models.heads:from_descriptions",
    )
)
ZEROSHOT = HEAD_KINDS.register(
    HeadKind(
        name="zeroshot",
        label="zero-shot",
        color="#d62728",
        reads="class names",
        text=True,
        description="CLIP's zero-shot head: class names under the task's prompt templates, through the text tower",
        builder="taskvec.models.zeroshot:from_templates",
    )
)


def head_choices() -> list[str]:
    """What `[head] kind` accepts."""
    return [AUTO, *HEAD_KINDS.names()]


def check_head_choice(name: str, where: str = "head.kind") -> str:
    if name not in head_choices():
        raise TaskvecError(f"{where}: {name!r} is not one of {head_choices()}")
    return name


def resolve_head(name: str, default: HeadKind | None, modality: str | None) -> HeadKind:
    """The head kind `name` names; "auto" takes the backbone kind's `default`, else text
    descriptions for a text encoder and class prototypes otherwise."""
    if name != AUTO:
        return HEAD_KINDS.get(name)
    if default is not None:
        return default
    return TEXT if modality == "text" else PROTOTYPE
