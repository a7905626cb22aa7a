"""Which parameters a fine-tune may change, named by a preset or by globs.

A selection is one string, as a config line gives it:

* `all`: every parameter.
* `attention`: the query/key/value/output projections of attention layers (weights and
  biases): the parameters of `nn.MultiheadAttention` modules (open_clip's ViTs) and of the
  `nn.Linear` layers inside a module whose name says attention (`attention`, `attn`), minus
  their normalization layers (Hugging Face BERT-style encoders). Jin et al. (ICLR 2025)
  fine-tune exactly these.
* `last-blocks:N`: the parameters of the last N blocks of the backbone's block list (its
  longest `nn.ModuleList`/`nn.Sequential` of sub-modules: transformer layers, MBConv blocks).
* `norm-bias`: the parameters of normalization layers and every bias.
* `matrices`: the weights that are matrices: `nn.Linear` weights, attention projections and
  1×1 convolution kernels (what low-rank adapters attach to).
* `non-embedding`: every parameter except lookup tables (`nn.Embedding`): a row of a token
  table only matters for the inputs that contain its token.
* anything else: an `fnmatch` glob over parameter names (or a parameter's name), e.g. `*.attn.*`.

A selection is a comma-separated union of these: `last-blocks:3, _conv_head.*`.

Selections that match nothing are an error naming the selection and the backbone, never an
empty fine-tune.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from ..errors import TaskvecError

PRESETS = ("all", "attention", "last-blocks:N", "norm-bias", "matrices", "non-embedding")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_ATTENTION_WORDS = ("attention", "attn")


def select_parameters(module: nn.Module, selection: str) -> list[str]:
    """The names of `module`'s parameters that `selection` names, in the module's order.

    `selection` is a comma-separated union of presets and globs (`last-blocks:3, *.ln_post.*`).
    """
    names = [n for n, _ in module.named_parameters()]
    items = [item.strip() for item in selection.split(",") if item.strip()]
    if not items:
        raise TaskvecError("empty parameter selection: use one of " + ", ".join(PRESETS) + " or globs such as '*.attn.*'")
    chosen: set[str] = set()
    for item in items:
        chosen |= _select_one(module, names, item)
    picked = [n for n in names if n in chosen]
    if not picked:
        raise TaskvecError(
            f"parameter selection {selection!r} matches no parameter of backbone {getattr(module, 'name', type(module).__name__)!r}"
        )
    return picked


def _select_one(module: nn.Module, names: list[str], item: str) -> set[str]:
    if item == "all":
        return set(names)
    if item == "attention":
        return _attention(module)
    if item.startswith("last-blocks:"):
        return _last_blocks(module, item)
    if item == "norm-bias":
        return {
            f"{m}.{p}" if m else p
            for m, sub in module.named_modules()
            if isinstance(sub, _NORMS)
            for p, _ in sub.named_parameters(recurse=False)
        } | {n for n in names if n.rsplit(".", 1)[-1].endswith("bias")}
    if item == "matrices":
        return set(matrix_parameters(module))
    if item == "non-embedding":
        tables = {
            f"{m}.{p}" if m else p
            for m, sub in module.named_modules()
            if isinstance(sub, nn.Embedding)
            for p, _ in sub.named_parameters(recurse=False)
        }
        return set(names) - tables
    if not any(ch in item for ch in "*?[") and item not in names:
        raise TaskvecError(
            f"unknown parameter selection {item!r}: use one of {', '.join(PRESETS)}, a parameter name, or globs such as '*.attn.*'"
        )
    return {n for n in names if fnmatch.fnmatchcase(n, item)}


def matrix_parameters(module: nn.Module) -> list[str]:
    """Weights a low-rank adapter can attach to: Linear weights, attention input/output
    projections, and 1×1 convolution kernels with one group."""
    out = []
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(sub, nn.Linear) or (isinstance(sub, nn.Conv2d) and sub.kernel_size == (1, 1) and sub.groups == 1):
            out.append(f"{dot}weight")
        elif isinstance(sub, nn.MultiheadAttention) and sub.in_proj_weight is not None:
            out.append(f"{dot}in_proj_weight")
    return out


def _attention(module: nn.Module) -> set[str]:
    chosen: set[str] = set()
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(sub, nn.MultiheadAttention):
            chosen |= {dot + n for n, _ in sub.named_parameters()}
        elif isinstance(sub, nn.Linear) and any(w in part.lower() for part in prefix.split(".")[:-1] for w in _ATTENTION_WORDS):
            chosen |= {dot + n for n, _ in sub.named_parameters(recurse=False)}
    return chosen


def block_list(module: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential]:
    """(name, container) of the longest ModuleList/Sequential of sub-modules: the backbone's blocks."""
    best: tuple[str, nn.ModuleList | nn.Sequential] | None = None
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.ModuleList, nn.Sequential)) and len(sub) >= 2 and (best is None or len(sub) > len(best[1])):
            best = (name, sub)
    if best is None:
        raise TaskvecError(f"backbone {getattr(module, 'name', type(module).__name__)!r} has no list of blocks for 'last-blocks:N'")
    return best


def _last_blocks(module: nn.Module, selection: str) -> set[str]:
    count = selection.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise TaskvecError(f"parameter selection {selection!r}: N in 'last-blocks:N' must be a positive integer")
    name, blocks = block_list(module)
    n = int(count)
    if n > len(blocks):
        raise TaskvecError(f"parameter selection {selection!r}: the backbone has only {len(blocks)} blocks ({name})")
    chosen = set()
    for index in range(len(blocks) - n, len(blocks)):
        prefix = f"{name}.{index}." if name else f"{index}."
        chosen |= {prefix + p for p, _ in blocks[index].named_parameters()}
    return chosen
