"""Model folders and weight files as Hugging Face and transformers lay them out.

Both sides of a model need these: the hf-clip backbone reads its base folder, and
`taskvec.checkpoints` reads fine-tuned folders and state-dict files (and sits above the models
layer), so they live here, below both. A spec is a local folder or file, or a Hugging Face repo
id (`openai/clip-vit-base-patch32`), looked up in the hub cache and, where the internet is
reachable and `HF_HUB_OFFLINE` is unset, downloaded once. torch is imported when a torch file is
read, not before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TaskvecError
from ..lazy import lazy_import
from ..needs import Need

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_import("torch")

# What a transformers folder keeps its weights in (single file or sharded, safetensors or torch).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


# ----- finding a folder ---------------------------------------------------------------------------
def looks_like_repo_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith(("/", ".", "~")) and not Path(spec).suffix


def find_local(spec: str, weights_dir: str | None = None) -> Path | None:
    """The folder of a local path, or of a repo id already in the Hugging Face cache; None when
    neither (nothing is downloaded)."""
    local = Path(spec).expanduser()
    if local.exists():
        return local
    if not looks_like_repo_id(spec):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=spec, cache_dir=weights_dir, local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several kinds)
        return None


def fetch_hint(spec: str) -> str:
    return (
        f"fetch it once where the internet is reachable with `huggingface-cli download {spec}` (or pass its folder)"
        if looks_like_repo_id(spec)
        else "no such file or folder"
    )


def local_need(what: str, spec: str, weights_dir: str | None = None) -> Need:
    """For the dry run: a folder or file that must be on this machine (a local path, or a repo id
    already in the Hugging Face cache), with where it was found or how to fetch it."""
    found = find_local(spec, weights_dir)
    return Need(what, found is not None, str(found) if found is not None else fetch_hint(spec))


def resolve_folder(spec: str, weights_dir: str | None = None) -> Path:
    """A local model folder, or the hub cache's snapshot of repo id `spec` (downloaded if allowed)."""
    if not spec:
        raise TaskvecError(
            "backbone 'hf-clip:' needs a folder or a Hugging Face repo id: hf-clip:/path or hf-clip:openai/clip-vit-base-patch32"
        )
    found = find_local(spec, weights_dir)
    if found is not None:
        if not found.is_dir():
            raise TaskvecError(f"hf-clip needs a model folder, got the file {spec!r}")
        return found
    if not looks_like_repo_id(spec):
        raise TaskvecError(f"hf-clip model folder not found: {spec!r}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=spec, cache_dir=weights_dir, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as exc:  # offline, unknown repo
        raise TaskvecError(
            f"Hugging Face model {spec!r} is neither a local folder nor in the cache ({type(exc).__name__}); {fetch_hint(spec)}"
        ) from None


# ----- reading weights ----------------------------------------------------------------------------
def read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All weights of a transformers folder, single-file or sharded."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
                raise TaskvecError(f"corrupt shard index {index}: {exc}") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise TaskvecError(
                    f"{folder} lacks {len(missing)} of its {len(shards)} weight shards, e.g. {missing[0]} (named in {index_name})"
                )
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(read_tensor_file(folder / shard))
            return tensors
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensor_file(folder / name)
    raise TaskvecError(f"{folder} holds no weights (model.safetensors, sharded safetensors with their index, or pytorch_model.bin)")


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one state-dict file: safetensors, or a torch file read with
    `torch.load(weights_only=True)` (nothing but tensors is unpickled)."""
    if path.suffix == ".safetensors":
        from ..io import load_foreign_tensors

        return load_foreign_tensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise TaskvecError(f"unknown checkpoint format {path.name!r}: expected a folder, .safetensors or {', '.join(TORCH_SUFFIXES)}")
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TaskvecError(
            f"{path} holds Python objects besides tensors (a pickled model?); taskvec reads only weights "
            "(torch.load with weights_only=True): save the model's state_dict() instead"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TaskvecError(f"corrupt or unreadable checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise TaskvecError(f"{path} holds a {type(loaded).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise TaskvecError(f"{path} holds no tensors")
    return tensors
