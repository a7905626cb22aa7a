"""Deferred imports, so that the commands that need no model (`taskvec --help`, `list`, `info`)
start without importing torch, which costs more than a second.

Modules that use torch only inside functions write `torch = lazy_import("torch")`: the real
module is imported at the first attribute access (`torch.zeros`, `torch.Tensor`), after which
the stand-in holds torch's attributes. Annotations stay free (`from __future__ import
annotations`); a type alias names torch in a string (`dict[str, "torch.Tensor"]`).
"""
from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later lookups find them without this hook
        return getattr(module, attr)


def lazy_import(name: str) -> Any:
    """A stand-in for `import name` that imports the module when first used."""
    return _LazyModule(name)
