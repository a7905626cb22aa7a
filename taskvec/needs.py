"""What a piece of work needs before it can start: a dataset, weights, a device.

Stages declare their needs for the dry run (`taskvec run --dry-run`), which lists what is
present and what is missing, one line each, without loading anything. Backbone kinds and
tasks report their own needs in these terms, so the dry run never guesses from a name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    """One thing needed: `what` names it, `present` says whether it is there, `detail` says
    where it was found or how to obtain it."""

    what: str
    present: bool
    detail: str = ""

    def line(self) -> str:
        return f"{self.what}: {self.detail}" if self.detail else self.what
