"""Checkpoints made elsewhere: task vectors from (base, fine-tuned) pairs, and edited models
written back in the base's own format.

Most people start from checkpoints others released (CLIP fine-tuned on the paper's tasks as
transformers folders, open_clip state dicts), so a task vector can come from two checkpoints as
well as from `taskvec finetune`:

    tau = vector_from_checkpoints(build_backbone("hf-clip:/models/clip-vit-b-32"), "/models/clip-vit-b-32-sun397", "SUN397")
    export_model(tau, base, "merged-model/")        # θ0 + α τ in the base's format

Read: a transformers folder (`config.json` with `model.safetensors`, sharded safetensors with
their index, or `pytorch_model.bin`), or one state-dict file (`.safetensors`, or a torch file
read with `torch.load(weights_only=True)`: nothing but tensors is unpickled). The fine-tuned
tensors are found under the base's parameter names, behind whatever prefix the file uses
(`model.`, `module.`, ...). A linearized checkpoint (θ and θ0 of a linearized model, as the
paper's code saves them: `params.<i>` and `params0.<i>` in θ's order, or under θ's names) gives
a linear task vector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TaskvecError, finite
from .kinds import LINEARIZED, NONLINEAR
from .lazy import lazy_import
from .models.hub import looks_like_repo_id, read_hf_folder, read_tensor_file, resolve_folder
from .task_vector import TaskVector, base_identity

if TYPE_CHECKING:
    import torch

    from .models.base import Backbone
else:
    torch = lazy_import("torch")

# transformers classes holding only CLIP's image tower: their files lack the projection, which
# such fine-tunes leave at the base's value (FusionBench's model pools, for instance).
VISION_ONLY = {"clip_vision_model": ("visual_projection.",)}
LINEARIZED_KEYS = ("params0.", "params.")


# ----- reading ------------------------------------------------------------------------------------
def locate(source: str | Path) -> Path:
    """A checkpoint's path: a local folder or file, or a Hugging Face repo id (from the cache,
    downloaded once where allowed)."""
    path = Path(source).expanduser()
    if path.exists() or not looks_like_repo_id(str(source)):
        return path
    return resolve_folder(str(source))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a transformers folder or a state-dict file."""
    path = Path(path).expanduser()
    if path.is_dir():
        return read_hf_folder(path)
    if not path.exists():
        raise TaskvecError(f"checkpoint not found: {path}")
    return read_tensor_file(path)


def _hf_config(path: Path) -> dict | None:
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            return json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TaskvecError(f"cannot read {config}: {exc}") from None
    return None


# ----- matching -----------------------------------------------------------------------------------
def find_prefix(names: list[str], keys: set[str]) -> str:
    """The prefix under which the state holds the most of θ's names ('' when none fits better)."""
    counts: dict[str, int] = {}
    for name in names:
        for key in keys:
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                counts[key[: len(key) - len(name)]] = counts.get(key[: len(key) - len(name)], 0) + 1
    return max(counts, key=lambda p: (counts[p], -len(p))) if counts else ""


def match_keys(names: list[str], keys: set[str]) -> dict[str, str]:
    """θ name -> checkpoint key. A checkpoint may add a prefix (`model.`, `module.`) and may drop
    a leading module name of θ's (`vision_model.` when transformers saves a bare vision tower)."""
    strips = {""} | {n.split(".", 1)[0] + "." for n in names if "." in n}
    best: dict[str, str] = {}
    for strip in sorted(strips):
        renamed = {n: n[len(strip) :] if strip and n.startswith(strip) else n for n in names}
        add = find_prefix(list(renamed.values()), keys)
        found = {n: add + r for n, r in renamed.items() if add + r in keys}
        if len(found) > len(best):
            best = found
    return best


def _compare_configs(base: Backbone, finetuned: Path) -> None:
    """transformers folders: the image towers' architecture fields must agree."""
    base_folder = getattr(base, "folder", None)
    config = _hf_config(finetuned)
    if base_folder is None or config is None:
        return
    base_config = _hf_config(Path(base_folder)) or {}
    theirs = config.get("vision_config", config)
    ours = base_config.get("vision_config", base_config)
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
    differ = [f"{f} {theirs[f]} vs {ours[f]}" for f in fields if f in theirs and f in ours and theirs[f] != ours[f]]
    if differ:
        raise TaskvecError(f"{finetuned} is another architecture than the base {base.name}: {', '.join(differ)} (fine-tuned vs base)")


def _checked(name: str, tensor: torch.Tensor, reference: torch.Tensor, path: Path) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(reference.shape):
        raise TaskvecError(
            f"{path} is another architecture than the base: {name!r} has shape {tuple(tensor.shape)}, the base's {tuple(reference.shape)}"
        )
    if not tensor.is_floating_point():
        raise TaskvecError(f"{path}: {name!r} is not a floating-point tensor ({tensor.dtype})")
    if not torch.isfinite(tensor).all():
        raise TaskvecError(f"{path}: {name!r} holds non-finite values (nan or inf)")
    return tensor.to(reference.dtype)


# ----- task vectors -------------------------------------------------------------------------------
def vector_from_checkpoints(base: Backbone, finetuned: str | Path, task: str) -> TaskVector:
    """τ = θ_ft − θ0 with θ0 the base backbone's parameters; linear when the checkpoint is linearized."""
    path = locate(finetuned)
    _compare_configs(base, path)
    state = read_state_dict(path)
    theta0 = {n: p.detach() for n, p in base.named_parameters()}
    source = {"base": base.name, "finetuned": str(path)}
    if any("params0" in key.split(".") for key in state):
        finetuned_params = _linearized(state, theta0, path)
        return TaskVector.from_weights(
            theta0,
            finetuned_params,
            mode=LINEARIZED,
            base=base_identity(base),
            task=task,
            info={"source": source, "linearized checkpoint": True},
        )
    keys = match_keys(list(theta0), set(state))
    config = _hf_config(path) or {}
    may_lack = VISION_ONLY.get(config.get("model_type", ""), ())
    finetuned_params, unchanged, missing = {}, [], []
    for name, reference in theta0.items():
        if name in keys:
            finetuned_params[name] = _checked(name, state[keys[name]], reference, path)
        elif name.startswith(may_lack):
            finetuned_params[name] = reference
            unchanged.append(name)
        else:
            missing.append(name)
    if missing:
        raise TaskvecError(
            f"{path} lacks {len(missing)} of the base's {len(theta0)} parameters, e.g. {missing[:3]} "
            f"(under any prefix): is it a fine-tune of {base.name}?"
        )
    info: dict[str, Any] = {"source": source, "ignored tensors": len(set(state) - set(keys.values()))}
    if unchanged:
        info["unchanged from the base (absent from the checkpoint)"] = unchanged
    return TaskVector.from_weights(theta0, finetuned_params, mode=NONLINEAR, base=base_identity(base), task=task, info=info)


def _indexed_under(key: str, part: str) -> bool:
    pieces = key.split(".")
    return len(pieces) >= 2 and pieces[-2] == part and pieces[-1].isdigit()


def _linearized(state: dict[str, torch.Tensor], theta0: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """θ of a linearized checkpoint, after checking its θ0 is the base's."""
    names = list(theta0)
    parts = {}
    for part in LINEARIZED_KEYS:
        by_name = find_prefix([part + n for n in names], set(state))
        if all(by_name + part + n in state for n in names):
            parts[part] = {n: state[by_name + part + n] for n in names}
            continue
        indexed = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in state.items() if _indexed_under(k, part[:-1]))
        if len(indexed) != len(names):
            raise TaskvecError(
                f"{path}: a linearized checkpoint needs {part}<name> or {part}<index> for each of the base's "
                f"{len(names)} parameters; found {len(indexed)}"
            )
        parts[part] = dict(zip(names, (v for _, v in indexed)))
    params0 = {n: _checked(n, t, theta0[n], path) for n, t in parts["params0."].items()}
    params = {n: _checked(n, t, theta0[n], path) for n, t in parts["params."].items()}
    off = [n for n in names if not torch.allclose(params0[n], theta0[n], rtol=1e-4, atol=1e-6)]
    if off:
        raise TaskvecError(
            f"{path} was linearized around other weights than the base's (e.g. {off[0]!r}): use the base it was trained from"
        )
    return params


# ----- export -------------------------------------------------------------------------------------
def model_card(vector: TaskVector, base: Backbone, alpha: float) -> str:
    """A README saying which vectors, method, settings and α made the exported model."""
    from ._version import __version__

    recipe = vector.info.get("merge")
    lines = [
        f"# {base.name} edited with task arithmetic",
        "",
        f"θ = θ0 + α·τ with α = {alpha:g}, made by taskvec {__version__} (`taskvec export`).",
        "",
        f"- base model: `{base.name}` (weights fingerprint {vector.base.get('fingerprint', '?')})",
        f"- tasks: {', '.join(vector.tasks)}",
        f"- fine-tuning mode of the vectors: {vector.mode.label} (`{vector.mode.name}`)",
    ]
    if recipe:
        lines.append(f"- merge method and settings: `{json.dumps(recipe, sort_keys=True)}`")
    lines += ["", "The task vector's metadata:", "", "```json", json.dumps(vector.info, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def export_model(vector: TaskVector, base: Backbone, out: str | Path, alpha: float = 1.0, force: bool = False) -> Path:
    """Write θ0 + α τ in the base's own format (a transformers folder for hf-clip, an open_clip
    state dict for openclip, θ as safetensors otherwise) with a model card; atomically."""
    from .io import atomic_dir

    finite(alpha, "--alpha")
    if vector.applies_to_f_lin:  # L-LoRA's per-layer linearization edits f: those export
        raise TaskvecError(
            f"a {vector.mode.name} task vector edits the linearized model f_lin, which other tools do not load; "
            "export takes vectors that edit f (or evaluate f_lin with taskvec)"
        )
    edited = vector.apply_to(base, alpha)
    with atomic_dir(out, force) as folder:
        edited.export(folder, model_card(vector, base, alpha))
    return Path(out)
