"""Files: atomic writes and safetensors with JSON metadata. Nothing here unpickles."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from .errors import TaskvecError
from .lazy import lazy_import

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash mid-write leaves the previous file intact instead of a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds (an
    existing `path` is replaced only with `force`, and only then)."""
    path = check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_output_dir(path: str | Path, force: bool = False) -> Path:
    """A folder the command may write: not a file, and not a non-empty folder unless `force`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TaskvecError(f"--out {path} is a file; name a folder to write")
    if path.exists() and any(path.iterdir()) and not force:
        raise TaskvecError(f"{path} exists and is not empty; pass --force to replace it")
    return path


def check_output(path: str | Path, force: bool = False) -> Path:
    """A file the command may write: not a directory, and not an existing file unless `force`."""
    path = Path(path)
    if path.is_dir():
        raise TaskvecError(f"--out {path} is a directory; name the file to write")
    if path.exists() and not force:
        raise TaskvecError(f"{path} exists; pass --force to overwrite it")
    return path


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskvecError(f"corrupt JSON file {path}: {exc}") from None
    except OSError as exc:
        raise TaskvecError(f"cannot read {path}: {exc.strerror or exc}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save tensors as safetensors; metadata values are stored JSON-encoded under their keys."""
    meta = {key: json.dumps(value) for key, value in metadata.items()}
    flat = {key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file written by `save_tensors`; a missing or corrupt file is a TaskvecError."""
    return _read(path, "pt")


def load_arrays(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`load_tensors` as numpy arrays, for readers that need no torch (`taskvec info`)."""
    return _read(path, "numpy")


NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def numpy_readable(path: str | Path) -> bool:
    """Whether every tensor of a safetensors file has a numpy dtype (bfloat16 has none), from
    its header alone; a missing or corrupt file is a TaskvecError."""
    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return all(handle.get_slice(key).get_dtype() in NUMPY_DTYPES for key in handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise TaskvecError(f"corrupt or unreadable safetensors file {path}: {exc}") from None


def load_foreign_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of any safetensors file (other tools' metadata is plain strings, not JSON)."""
    return _read(path, "pt", decode_metadata=False)[0]


def _read(path: str | Path, framework: str, decode_metadata: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise TaskvecError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework=framework) as handle:
            raw = handle.metadata() or {}
            metadata = {key: json.loads(value) for key, value in raw.items()} if decode_metadata else raw
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise TaskvecError(f"corrupt or unreadable safetensors file {path}: {exc}") from None
    return tensors, metadata


def check_tensors(path: str | Path) -> dict[str, Any]:
    """The metadata of a safetensors file, after checking its header covers the whole file
    (a truncated or foreign file is a TaskvecError) without reading the tensors."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            raw_meta = handle.metadata() or {}
        return {key: json.loads(value) for key, value in raw_meta.items()}
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise TaskvecError(f"corrupt or unreadable safetensors file {path}: {exc}") from None
