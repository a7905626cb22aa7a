"""CLIP from Hugging Face transformers: `hf-clip:<local folder or hub repo id>`.

The released CLIP checkpoints fine-tuned on the paper's tasks (FusionBench's model pools and
others) are transformers folders, so this backbone is what lets task arithmetic reach them. θ
is the image tower (`vision_model.*`) and its projection (`visual_projection.weight`), named as
in the checkpoint files; the text tower rides along frozen (`Shared`) for zero-shot heads
(`encode_text`, `logit_scale`), as for open_clip CLIP.

A local folder is read as it is; a repo id is looked up in the Hugging Face cache and, where the
internet is reachable and `HF_HUB_OFFLINE` is unset, downloaded once. Attention runs through
PyTorch SDPA; taskvec's Jacobian-vector products switch it to the MATH kernel (forward-mode AD
has no rule for the fused ones). Images get the folder's own preprocessing
(`preprocessor_config.json`: resize the shortest side, center crop, normalize).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..errors import TaskvecError
from .base import Backbone, Batch, Shared
from .hub import WEIGHT_FILES, read_hf_folder, resolve_folder
from .identity import fingerprint
from .pixels import ImageTransform, LazyImages
from .registry import Init

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPTextConfig

# CLIP's own normalization (used when a folder has no preprocessor_config.json)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def config_of(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise TaskvecError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise TaskvecError(f"cannot read {path}: {exc}") from None


def image_transform(folder: Path, image_size: int) -> ImageTransform:
    """The folder's CLIPImageProcessor settings as taskvec's (resize, crop) + normalization."""
    from torchvision import transforms

    path = folder / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}

    def edge(value: Any, default: int) -> int:
        if isinstance(value, dict):
            value = value.get("shortest_edge") or value.get("height")
        return int(value or default)

    resize = edge(cfg.get("size"), image_size)
    crop = edge(cfg.get("crop_size"), image_size)
    compose = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)),
        ]
    )
    return ImageTransform.from_torchvision(compose, crop)


class HFCLIPVisual(Backbone):
    """The image tower of a transformers CLIPModel; the text tower rides along, frozen."""

    modality = "image"

    def __init__(
        self,
        clip: CLIPModel,
        tokenizer: Any,
        transform: ImageTransform,
        *,
        name: str,
        folder: Path,
        init: str,
        pixel_cache: str | Path | None = None,
    ):
        super().__init__()
        self.name, self.folder, self.init = name, folder, init
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection
        clip.vision_model = nn.Identity()  # the text holder must not keep a second reference to θ
        clip.visual_projection = nn.Identity()  # type: ignore[assignment]  # on purpose, as above: not a Linear any more
        for p in clip.parameters():
            p.requires_grad_(False)
        clip.eval()
        self._text = Shared(clip)
        self._text.tokenizer = tokenizer
        self.embed_dim = int(self.visual_projection.out_features)
        self.image_size = transform.size
        self.transform = transform
        # transformers types text_config with the dict or None its constructor accepts; a built config holds a CLIPTextConfig.
        self.text_length = int(cast("CLIPTextConfig", clip.config.text_config).max_position_embeddings)
        self.pixel_cache = str(Path(pixel_cache).expanduser()) if pixel_cache else None
        self._text_fingerprint: str | None = None

    def prepare(self, inputs: Any) -> Batch:
        """Raw images (file paths, or uint8 N×H×W[×3]) -> {"pixels": lazily preprocessed N×3×S×S}."""
        return {"pixels": LazyImages(inputs, self.transform, cache_dir=self.pixel_cache)}  # type: ignore[dict-item]

    def forward(self, *, pixels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # the keys its prepare() makes
        dtype = self.visual_projection.weight.dtype
        pooled = self.vision_model(pixel_values=pixels.to(dtype)).pooler_output
        return self.visual_projection(pooled)

    @property
    def logit_scale(self) -> float:
        return float(self._text.model.logit_scale.detach().exp())

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], device: str | torch.device | None = None, batch_size: int = 256) -> torch.Tensor:
        """Un-normalized text embeddings (N × embed_dim), float32 on the CPU."""
        model = self._text.model
        device = device or self.visual_projection.weight.device
        model.to(device)  # type: ignore[arg-type]  # transformers types `to` as functools.wraps of the unbound nn.Module.to
        texts, out = list(texts), []
        for start in range(0, len(texts), batch_size):
            tokens = self._text.tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=self.text_length, return_tensors="pt"
            ).to(device)
            pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
            out.append(model.text_projection(pooled).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def text_fingerprint(self) -> str:
        """A hash of the text tower's weights (zero-shot heads depend on them, not on θ)."""
        if self._text_fingerprint is None:
            self._text_fingerprint = fingerprint(dict(self._text.model.state_dict()))
        return self._text_fingerprint

    def identity(self) -> dict[str, str]:
        """Not the folder's path (one model has many spellings of it): the weights' fingerprint,
        which `base_identity` adds, tells bases apart."""
        return {"backbone": "hf-clip", "init": self.init}

    def export(self, folder: Path, card: str) -> None:
        """A transformers CLIPModel folder: the base folder's files with θ replaced (one
        model.safetensors), which `CLIPModel.from_pretrained` loads."""
        import shutil

        from safetensors.torch import save_file

        tensors = read_hf_folder(self.folder)
        for name, value in self.state_dict().items():
            tensors[name] = value.detach().to("cpu").contiguous()
        for item in self.folder.iterdir():
            if item.is_file() and item.suffix in (".json", ".txt") and item.name not in WEIGHT_FILES:
                shutil.copy2(item, folder / item.name)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "README.md").write_text(card)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading bars and reports on stderr would break the CLI's one-line output."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_hf_clip(
    spec: str,
    init: Init = Init.PRETRAINED,
    *,
    weights_dir: str | None = None,
    pixel_cache: str | None = None,
    attn_implementation: str = "sdpa",
) -> HFCLIPVisual:
    """`hf-clip:<folder or repo id>`: a transformers CLIPModel (both towers) as a backbone."""
    from .hf_text import _zero_dropout

    folder = resolve_folder(spec, weights_dir)
    config = config_of(folder)
    if config.get("model_type") != "clip" or "text_config" not in config:
        kind = (config.get("architectures") or [config.get("model_type")])[0]
        raise TaskvecError(
            f"hf-clip needs a full CLIP model (image and text towers, for zero-shot heads); {folder} holds {kind}. "
            "Fine-tuned image towers are read by `taskvec vector`."
        )
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    try:
        with _quiet_transformers():
            clip_config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
            _zero_dropout(clip_config.vision_config)
            _zero_dropout(clip_config.text_config)
            if init == Init.PRETRAINED:
                if not any((folder / f).is_file() for f in WEIGHT_FILES):
                    raise TaskvecError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES)})")
                model = CLIPModel.from_pretrained(
                    str(folder), config=clip_config, local_files_only=True, attn_implementation=attn_implementation, dtype=torch.float32
                )
            else:
                model = CLIPModel._from_config(clip_config, attn_implementation=attn_implementation, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TaskvecError(f"cannot load CLIP from {folder}: {str(exc).splitlines()[0][:300]}") from None
    # transformers types vision_config with the dict or None its constructor accepts (and image_size with the pairs it
    # accepts); a loaded CLIP config holds a CLIPVisionConfig, whose image_size is CLIP's one int.
    vision_config: Any = clip_config.vision_config
    transform = image_transform(folder, int(vision_config.image_size))
    return HFCLIPVisual(model, tokenizer, transform, name=f"hf-clip:{spec}", folder=folder, init=str(init), pixel_cache=pixel_cache)
