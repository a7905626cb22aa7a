"""The `taskvec` command: thin wrappers over the Python API, one module per group of commands
(`runs`, `vectors`, `analyses`, `catalog`); every command imports what it needs when it runs,
so `taskvec --help`, `list` and `info` start without torch."""

from __future__ import annotations

import os
import sys

import typer

from ..errors import TaskvecError
from .common import app

# Each module registers its commands on `app`, in the order `taskvec --help` lists them.
# isort: off
from . import runs, vectors, analyses, catalog  # noqa: E402, F401
# isort: on


def _which_rank() -> str:
    """' (rank i of n)' under torchrun, where every rank prints its own errors; else nothing."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" (rank {os.environ.get('RANK', '?')} of {world})" if world.isdigit() and int(world) > 1 else ""


def _tell_torchrun(exc: Exception) -> None:
    """Under torchrun, the error for its summary of the failed rank (which then stops the others)."""
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input ends with a one-line error and exit status 2, never a traceback."""
    try:
        code = app(args=argv, prog_name="taskvec", standalone_mode=False)
    except TaskvecError as exc:
        typer.echo(f"taskvec: error{_which_rank()}: {exc}", err=True)
        _tell_torchrun(exc)
        sys.exit(2)
    except Exception as exc:  # usage errors (typer raises its own click-like exceptions)
        import click

        if isinstance(exc, (click.exceptions.Abort, typer.Abort)):
            sys.exit(130)
        if isinstance(exc, (click.exceptions.ClickException, typer.TyperException)) and hasattr(exc, "show"):
            if type(exc).__name__ == "NoArgsIsHelpError":  # `taskvec` alone: the help text
                exc.show()
                sys.exit(0)
            typer.echo(f"taskvec: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    if isinstance(code, int) and code:  # typer.Exit(code) returns it in non-standalone mode
        sys.exit(code)


if __name__ == "__main__":
    main()
