"""Tiny, randomly initialized transformers CLIP folders for tests (no weights, no network):
a 2-layer ViT on 32 px images and a 2-layer text tower with a byte-level vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)


def write_tokenizer(folder: Path) -> int:
    """CLIP's tokenizer files with one token per byte (no merges); returns the vocabulary size."""
    from open_clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "model_max_length": 16,
            }
        )
    )
    return len(vocab)


def clip_config(vocab_size: int, **vision):
    from transformers import CLIPConfig

    eos = vocab_size - 1
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            eos_token_id=eos,
            bos_token_id=eos - 1,
            pad_token_id=eos,
        ),
        vision_config={**VISION, **vision},
        projection_dim=16,
    )


def write_base(folder: Path, seed: int = 0, **vision) -> Path:
    """A full CLIPModel folder (both towers, tokenizer, preprocessing)."""
    import torch
    from transformers import CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder)
    torch.manual_seed(seed)
    CLIPModel(clip_config(vocab_size, **vision)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": 32, "width": 32},
                "size": {"shortest_edge": 32},
                "do_center_crop": True,
                "resample": 3,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    return folder


def write_finetuned(base: Path, folder: Path, seed: int, *, vision_only: bool = False, shard: str | None = None) -> Path:
    """The base with its image tower moved (a stand-in for a fine-tune); `vision_only` saves a
    CLIPVisionModel (no projection, no text tower), as FusionBench's model pools do."""
    import torch
    from transformers import CLIPModel, CLIPVisionModel

    model = CLIPModel.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("vision_model.", "visual_projection.")):
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    if vision_only:
        vision = CLIPVisionModel(model.config.vision_config)
        vision.load_state_dict(model.vision_model.state_dict())
        model = vision
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return folder


def image_features(folder: Path, pixels):
    """CLIP's own image features of a folder (the independent reference)."""
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
