"""CLIP image encoders from open_clip: `openclip:<arch>/<pretrained tag or checkpoint file>`.

`build_backbone("openclip:ViT-B-32/openai")` loads open_clip's ViT-B-32 with the OpenAI weights
(from open_clip's cache; taskvec never downloads unless open_clip itself is allowed to) and
returns an `OpenCLIPVisual`: its parameters θ are the image tower's only, so fine-tuning and
task vectors touch the image encoder; the text tower is kept, frozen and unregistered, for
zero-shot heads (`encode_text`, `logit_scale`). The pretrained part may also be a local
checkpoint file (`openclip:ViT-B-32//data/ckpt/clip.safetensors`, or the backbone option
`pretrained = "path"`); `init="random"` gives the same architecture untrained.

OpenAI weights were trained with QuickGELU. open_clip 3 builds plain `ViT-B-32` with GELU and
only warns when loading the `openai` tag into it, which silently degrades the model; taskvec
turns QuickGELU on whenever the tag's config says so (as the paper's code, on open_clip 2,
did implicitly).

Images are preprocessed with the model's own evaluation transform (resize shortest side
bicubic, center crop, normalize), lazily: `prepare` returns a `LazyImages` that computes (or
reads from the `pixel_cache` folder) only the images a batch indexes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import TaskvecError
from .base import Backbone, Batch, Shared
from .pixels import ImageTransform, LazyImages
from .registry import Init

LIST_HINT = 'python -c "import open_clip; print(open_clip.list_models())"'


def _open_clip():
    try:
        import open_clip
    except ImportError:  # pragma: no cover - a declared dependency
        raise TaskvecError("open_clip is not installed: pip install 'open-clip-torch==3.3.0'") from None
    return open_clip


@contextmanager
def no_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention's inference fast path (a fused kernel) has no forward-mode AD rule;
    the regular path computes the same attention through scaled_dot_product_attention."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'ViT-B-32/openai' -> ('ViT-B-32', 'openai'); 'ViT-B-32//abs/ckpt.pt' -> (.., '/abs/ckpt.pt')."""
    arch, sep, pretrained = spec.partition("/")
    if not arch:
        raise TaskvecError(f"openclip backbone needs an architecture: 'openclip:<arch>/<pretrained>', got {spec!r}")
    return arch, (pretrained if sep and pretrained else None)


def register_model_config(name: str, config: dict[str, Any], folder: str | Path | None = None) -> Path:
    """Make an open_clip architecture from a config dict available under `name` (tests, custom models)."""
    open_clip = _open_clip()
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="taskvec-openclip-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return path


def _tag_config(arch: str, tag: str | None) -> dict:
    if not tag:
        return {}
    return dict(_open_clip().get_pretrained_cfg(arch, tag) or {})


def _check_arch(arch: str) -> None:
    models = _open_clip().list_models()
    if arch not in models:
        close = [m for m in models if m.lower().startswith(arch.lower()[:5])][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise TaskvecError(f"unknown open_clip architecture {arch!r}{hint}; list them with: {LIST_HINT}")


def weights_location(arch: str, pretrained: str | None, weights_dir: str | None = None) -> tuple[bool, str]:
    """(present, where) for the weights a spec needs, without downloading anything."""
    if not pretrained:
        return False, "no pretrained tag or checkpoint given"
    path = Path(pretrained).expanduser()
    if path.suffix or os.sep in pretrained:
        return path.is_file(), str(path)
    cfg = _tag_config(arch, pretrained)
    if not cfg:
        return False, f"unknown pretrained tag {pretrained!r} for {arch}"
    if cfg.get("file"):
        return Path(cfg["file"]).is_file(), cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        cached: Callable[..., Any] | None
        try:
            from huggingface_hub import try_to_load_from_cache as cached
        except ImportError:  # pragma: no cover
            cached = None
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if cached is not None:
            for name in names:
                found = cached(repo, name, cache_dir=weights_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return True, found
        # open_clip prefers the hub copy whenever huggingface_hub is installed (it is, pinned).
        return False, f"Hugging Face cache ({weights_dir or '~/.cache/huggingface/hub'}): {repo}"
    url = cfg.get("url", "")
    local = Path(weights_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
    return local.is_file(), str(local)


class OpenCLIPVisual(Backbone):
    """The image tower of an open_clip CLIP model; the text tower rides along, frozen."""

    modality = "image"

    def __init__(
        self,
        clip: nn.Module,
        preprocess: Any,
        *,
        name: str,
        arch: str,
        pretrained: str | None,
        init: str,
        pixel_cache: str | Path | None = None,
    ):
        super().__init__()
        self.name, self.arch, self.pretrained, self.init = name, arch, pretrained, init
        self.visual = clip.get_submodule("visual")  # clip.visual, typed as the module it is
        clip.visual = nn.Identity()  # the text holder must not keep a second reference to θ
        for p in clip.parameters():
            p.requires_grad_(False)
        clip.eval()
        # open_clip ships no type information: to mypy its models (CLIP, CustomTextCLIP) are modules whose attributes
        # (text_projection, logit_scale, encode_text) nn.Module's __getattr__ types as Tensor | Module.
        self._text: Shared[Any] = Shared(clip)
        self.embed_dim = int(getattr(self.visual, "output_dim", 0) or self._text.model.text_projection.shape[-1])
        # a plain attribute of open_clip's image towers (an int or an (h, w) pair), not a tensor or module
        size = cast("int | tuple[int, int] | list[int]", self.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        self.image_size = int(size)
        self.transform = ImageTransform.from_torchvision(preprocess, self.image_size)
        self.pixel_cache = str(Path(pixel_cache).expanduser()) if pixel_cache else None
        self._text_fingerprint: str | None = None

    # ----- images -------------------------------------------------------------------------------
    def prepare(self, inputs: Any) -> Batch:
        """Raw images (file paths, or uint8 N×H×W[×3]) -> {"pixels": lazily preprocessed N×3×S×S}."""
        return {"pixels": LazyImages(inputs, self.transform, cache_dir=self.pixel_cache)}  # type: ignore[dict-item]

    def forward(self, *, pixels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # the keys its prepare() makes
        dtype = next(iter(self.visual.parameters())).dtype  # float64 in gradient checks; autocast casts later
        with no_mha_fastpath():
            return self.visual(pixels.to(dtype))

    # ----- text -----------------------------------------------------------------------------------
    @property
    def text_model(self) -> nn.Module:
        return self._text.model

    @property
    def logit_scale(self) -> float:
        """exp(learned temperature): 100 for the OpenAI models."""
        return float(self._text.model.logit_scale.detach().exp())

    def tokenizer(self):
        if self._text.tokenizer is None:
            self._text.tokenizer = _open_clip().get_tokenizer(self.arch)
        return self._text.tokenizer

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], device: str | torch.device | None = None, batch_size: int = 256) -> torch.Tensor:
        """Un-normalized text embeddings (N × embed_dim), float32 on the CPU."""
        model = self._text.model
        if device is None:
            device = next(iter(self.visual.parameters())).device
        model.to(device)
        texts = list(texts)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer()(texts[start : start + batch_size]).to(device)
            with no_mha_fastpath():
                out.append(model.encode_text(tokens).float().cpu())
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)

    def text_fingerprint(self) -> str:
        """A hash of the text tower's weights (zero-shot heads depend on them, not on θ)."""
        if self._text_fingerprint is None:
            digest = hashlib.sha256()
            for name, p in sorted(self._text.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._text_fingerprint = digest.hexdigest()[:16]
        return self._text_fingerprint

    def identity(self) -> dict[str, str]:
        return {"backbone": self.name, "arch": self.arch, "pretrained": str(self.pretrained or ""), "init": self.init}

    def export(self, folder: Path, card: str) -> None:
        """open_clip's whole-model state dict (image tower edited, text tower as loaded), which
        `open_clip.create_model(arch, pretrained=<file>)` loads."""
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").contiguous() for k, v in self._text.model.state_dict().items()}
        state.update({n: v.detach().to("cpu").contiguous() for n, v in self.state_dict().items()})
        save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt", "arch": self.arch})
        (folder / "README.md").write_text(
            card + f"\nLoad: `open_clip.create_model_and_transforms({self.arch!r}, pretrained='open_clip_model.safetensors')`\n"
        )


def build_openclip(
    spec: str,
    init: Init = Init.PRETRAINED,
    *,
    pretrained: str | None = None,
    weights_dir: str | None = None,
    pixel_cache: str | None = None,
    quick_gelu: bool | None = None,
) -> OpenCLIPVisual:
    """`spec` = '<arch>[/<pretrained tag or checkpoint path>]'; options override the tag.

    weights_dir: open_clip's download/cache folder (default: the Hugging Face cache).
    pixel_cache: folder for pre-resized uint8 images (see taskvec.models.pixels).
    quick_gelu: force the activation; default: what the pretrained tag was trained with.
    """
    open_clip = _open_clip()
    arch, tag = parse_spec(spec)
    tag = pretrained or tag
    _check_arch(arch)
    is_file = bool(tag and (Path(tag).expanduser().suffix != "" or os.sep in tag))
    tag_cfg = {} if is_file else _tag_config(arch, tag)
    if tag and not is_file and not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise TaskvecError(
            f"unknown pretrained tag {tag!r} for open_clip {arch}; known tags: {', '.join(tags) or 'none'} (or give a checkpoint file path)"
        )
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        if init == Init.RANDOM:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=None, force_quick_gelu=quick_gelu, **_preprocess_overrides(tag_cfg)
            )
        else:
            if not tag:
                raise TaskvecError(
                    f"openclip:{spec} needs pretrained weights: 'openclip:{arch}/<tag or checkpoint file>' (tags: "
                    f'{", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"}), or init = "random"'
                )
            source = str(Path(tag).expanduser()) if is_file else tag
            if is_file and not Path(source).is_file():
                raise TaskvecError(f"open_clip checkpoint file not found: {source}")
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=source, cache_dir=weights_dir, force_quick_gelu=quick_gelu
                )
            except TaskvecError:
                raise
            except Exception as exc:  # network errors, missing cache, bad checkpoints
                present, where = weights_location(arch, tag, weights_dir)
                raise TaskvecError(
                    f"could not load open_clip weights {arch}/{tag} ({type(exc).__name__}: {str(exc)[:300]}). "
                    f"Expected in {where}. Fetch them once where the internet is reachable with "
                    f"python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{tag}')\" "
                    "and copy the cache, or pass a local checkpoint file."
                ) from None
    finally:
        logging.getLogger().setLevel(previous)
    name = f"openclip:{arch}/{tag}" if tag else f"openclip:{arch}"
    return OpenCLIPVisual(model, preprocess, name=name, arch=arch, pretrained=tag, init=str(init), pixel_cache=pixel_cache)


def _preprocess_overrides(tag_cfg: dict) -> dict:
    """A random-init model preprocesses like its pretrained counterpart would."""
    return {f"image_{k}": tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
