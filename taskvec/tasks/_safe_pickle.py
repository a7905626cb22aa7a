"""A restricted unpickler for data files that ship numpy arrays as pickles.

Project rule: never unpickle arbitrary data. `pickle.load` will call any importable callable
a file names, so a data file could run code. `load_numpy_pickle` resolves only the globals
numpy needs to rebuild a plain array and refuses everything else with a `TaskvecError`:

- `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct` (protocols 0-4),
- `numpy._core.numeric._frombuffer` (what numpy 2 writes with protocol 5),
- `numpy.ndarray` and `numpy.dtype`,
- `_codecs.encode`, which protocols 0-2 use to store bytes, and only with the latin-1 codec.

Pickles written by numpy 1 name `numpy.core.*`, which numpy 2 renamed `numpy._core.*`; the
names are mapped so such files load on numpy 2 without importing the deprecated alias.
The result must be an ndarray with a non-object dtype, so no Python objects come back either.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct
from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]  # private to numpy, absent from its stubs

from ..errors import TaskvecError


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode`, which pickle protocols 0-2 use to store bytes, limited to latin-1."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1") or not isinstance(text, str):
        raise TaskvecError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", "strict")


_ALLOWED: dict[tuple[str, str], object] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        key_module = module
        if module == "numpy.core" or module.startswith("numpy.core."):
            key_module = "numpy._core" + module[len("numpy.core") :]
        try:
            return _ALLOWED[(key_module, name)]
        except KeyError:
            raise TaskvecError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in data pickles") from None

    def persistent_load(self, pid):  # pragma: no cover - defensive, default also refuses
        raise TaskvecError("refusing to unpickle a persistent id: only numpy arrays are allowed")


def loads_numpy(data: bytes, what: str = "pickle") -> np.ndarray:
    """Unpickle `data`, which must hold a single non-object numpy array."""
    return _load(io.BytesIO(data), what)


def load_numpy_pickle(path: str | Path) -> np.ndarray:
    """Read a (possibly gzip'd) pickle file holding one numpy array, without running code."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            magic = raw.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as handle:
            return _load(handle, str(path))
    except OSError as err:
        raise TaskvecError(f"cannot read {path}: {err}") from None


def _load(handle: io.BufferedIOBase, what: str) -> np.ndarray:
    try:
        obj = RestrictedUnpickler(handle).load()
    except TaskvecError:
        raise
    except Exception as err:  # corrupt data: UnpicklingError, EOFError, ValueError, ...
        raise TaskvecError(f"cannot unpickle {what}: {type(err).__name__}: {err}") from None
    if not isinstance(obj, np.ndarray):
        raise TaskvecError(f"{what} does not hold a numpy array (got {type(obj).__name__})")
    if obj.dtype.hasobject:
        raise TaskvecError(f"{what} holds an object array; only plain numeric arrays are allowed")
    return obj
