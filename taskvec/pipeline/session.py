"""A command's work in this process: joined to torchrun's process group when launched by it,
with the config's thread count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..config import RunConfig
from ..distributed import cleanup, init_from_env


@contextmanager
def session(cfg: RunConfig) -> Iterator[None]:
    """Fine-tunes and evaluations inside use every rank under torchrun."""
    init_from_env()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        yield
    finally:
        cleanup()
