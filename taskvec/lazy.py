"""Deferred imports, so that the commands that need no model (`taskvec --help`, `list`, `info`)
start without importing torch, which costs more than a second.

Modules that use torch only inside functions write `torch = lazy_import("torch")`: the real
module is imported at the first attribute access (`torch.zeros`, `torch.Tensor`), and every
access is looked up on the real module (so a test that patches torch patches it here too; the
lookup costs about 1.5 µs, below the overhead of one tensor operation). Annotations stay free (`from __future__ import
annotations`); a type alias names torch in a string (`dict[str, "torch.Tensor"]`).
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class _LazyModule(types.ModuleType):
    _module: types.ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self.__name__)
        return getattr(self._module, attr)


def lazy_import(name: str) -> Any:
    """A stand-in for `import name` that imports the module when first used."""
    return _LazyModule(name)
