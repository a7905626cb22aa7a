"""What the commands share: the typer app, the options several commands take, and reading
the config they name."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import TaskvecError
from ..kinds import FINETUNE_MODES

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..models import Backbone

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Task arithmetic in weight space and in the tangent space.")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config (default: the built-in image benchmark).")
ForceOpt = typer.Option(False, "--force", help="Overwrite --out if it exists.")


def config_from(path: Path | None, quick: bool = False, analyses: bool = False, seeds: int | None = None) -> RunConfig:
    """The config a command names (--config; else the default benchmark) with its flags applied."""
    from ..config import load_config, with_analyses, with_seeds
    from ..config import quick as make_quick

    cfg = load_config(path)
    cfg = with_analyses(cfg) if analyses else cfg
    cfg = with_seeds(cfg, seeds) if seeds is not None else cfg
    return make_quick(cfg) if quick else cfg


def _choices(name: str, registry) -> type[enum.Enum]:
    """A str Enum of a registry's names: typer shows them in --help and refuses others."""
    return enum.Enum(name, {n: n for n in registry.names()}, type=str)  # type: ignore[return-value]


if TYPE_CHECKING:

    class ModeChoice(enum.StrEnum):
        """What mypy sees of the enum below, whose members (the registered modes) are made at run time."""

else:
    ModeChoice = _choices("ModeChoice", FINETUNE_MODES)

BaseOpt = typer.Option(
    None,
    "--base",
    "-b",
    help="The base model: a backbone name (see `taskvec list`; e.g. hf-clip:DIR, "
    "openclip:ViT-B-32/openai), or a transformers CLIP folder or repo id. Default: the --config's backbone.",
)


def base_backbone(base: str | None, config: Path | None) -> Backbone:
    """The base backbone of `vector` and `export`: --base, else the config's (with its options)."""
    from ..models import build_backbone

    if base is None:
        if config is None:
            raise TaskvecError("name the base model: --base BACKBONE (or --config FILE)")
        cfg = config_from(config)
        return cfg.build_backbone()
    from ..models.registry import resolve_base

    return build_backbone(resolve_base(base))  # a transformers CLIP folder or repo id: hf-clip
