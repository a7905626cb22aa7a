"""open_clip backbones on a tiny random config: θ = image tower, preprocessing, checkpoints,
linearization through attention, fine-tuning in both modes."""

import copy

import clip_tiny
import numpy as np
import pytest
import torch
from jvp_check import assert_jvp_matches_finite_differences
from PIL import Image

from taskvec.config import TrainConfig
from taskvec.errors import TaskvecError
from taskvec.linearization import linearize
from taskvec.models import build_backbone
from taskvec.models.heads import text_head
from taskvec.models.pixels import LazyImages
from taskvec.task_vector import base_identity
from taskvec.train import finetune


@pytest.fixture(scope="module")
def clip():
    return clip_tiny.build()


def _images(n=6, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size + 7, 3), dtype=np.uint8)


def test_parameters_are_the_image_tower_only(clip):
    names = [n for n, _ in clip.named_parameters()]
    assert names and all(n.startswith("visual.") for n in names)
    assert not any("token_embedding" in n or "text_projection" in n or "logit_scale" in n for n in names)
    text_params = sum(p.numel() for p in clip.text_model.parameters())
    assert text_params > 0 and all(not p.requires_grad for p in clip.text_model.parameters())
    assert "_text" not in dict(clip.named_modules())
    assert clip.embed_dim == 16 and clip.modality == "image"


def test_deepcopy_shares_the_frozen_text_tower(clip):
    twin = copy.deepcopy(clip)
    assert twin.text_model is clip.text_model
    assert twin.visual is not clip.visual


def test_prepare_matches_open_clips_own_preprocessing(clip):
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms(clip_tiny.TINY_CLIP, pretrained=None)
    images = _images()
    batch = clip.prepare(images)
    assert isinstance(batch["pixels"], LazyImages) and len(batch["pixels"]) == len(images)
    expected = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    torch.testing.assert_close(batch["pixels"][:], expected, rtol=0, atol=0)
    index = torch.tensor([4, 1, 1])
    torch.testing.assert_close(batch["pixels"][index], expected[index], rtol=0, atol=0)
    gray = images[:2, :, :, 0]
    expected_gray = torch.stack([preprocess(Image.fromarray(im, "L")) for im in gray])
    torch.testing.assert_close(clip.prepare(gray)["pixels"][0:2], expected_gray, rtol=0, atol=0)


def test_pixel_cache_is_bit_identical_and_reused(clip, tmp_path):
    paths = []
    for i, image in enumerate(_images(5, seed=3)):
        path = tmp_path / "src" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(str(path))
    plain = LazyImages(paths, clip.transform)
    cached = LazyImages(paths, clip.transform, cache_dir=tmp_path / "cache", progress=False)
    torch.testing.assert_close(cached[1:4], plain[1:4], rtol=0, atol=0)
    files = list((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 1
    again = LazyImages(list(paths), clip.transform, cache_dir=tmp_path / "cache", progress=False)
    assert again.cache_path() == files[0]
    torch.testing.assert_close(again[torch.tensor([4, 0])], plain[torch.tensor([4, 0])], rtol=0, atol=0)


def test_forward_text_and_head(clip):
    features = clip(**{k: v[:] for k, v in clip.prepare(_images(3)).items()})
    assert features.shape == (3, 16)
    text = clip.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert text.shape == (2, 16) and text.dtype == torch.float32
    head = text_head(text, clip.logit_scale)
    assert head(features).shape == (3, 2)
    assert clip.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_local_checkpoint_and_random_init(tmp_path):
    import open_clip

    clip_tiny.register()
    torch.manual_seed(5)
    source = open_clip.create_model(clip_tiny.TINY_CLIP, pretrained=None)
    ckpt = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), ckpt)
    loaded = build_backbone(f"openclip:{clip_tiny.TINY_CLIP}/{ckpt}")
    for name, p in loaded.visual.state_dict().items():
        torch.testing.assert_close(p, source.visual.state_dict()[name])
    for name, p in loaded.text_model.state_dict().items():
        if not name.startswith("visual"):
            torch.testing.assert_close(p, source.state_dict()[name])
    assert loaded.identity()["pretrained"] == str(ckpt)
    same = build_backbone(f"openclip:{clip_tiny.TINY_CLIP}", pretrained=str(ckpt))
    assert base_identity(same)["fingerprint"] == base_identity(loaded)["fingerprint"]
    random = clip_tiny.build()
    assert base_identity(random)["fingerprint"] != base_identity(loaded)["fingerprint"]


def test_bad_names_are_clear_errors(tmp_path):
    clip_tiny.register()
    with pytest.raises(TaskvecError, match="unknown open_clip architecture.*list_models"):
        build_backbone("openclip:ViT-Q-99/openai")
    with pytest.raises(TaskvecError, match="unknown pretrained tag 'nope'.*openai"):
        build_backbone("openclip:ViT-B-32/nope")
    with pytest.raises(TaskvecError, match="needs pretrained weights"):
        build_backbone(f"openclip:{clip_tiny.TINY_CLIP}")
    with pytest.raises(TaskvecError, match="checkpoint file not found"):
        build_backbone(f"openclip:{clip_tiny.TINY_CLIP}/{tmp_path / 'missing.pt'}")


def test_openai_tags_get_quickgelu():
    from taskvec.models.openclip import _tag_config

    assert _tag_config("ViT-B-32", "openai")["quick_gelu"] is True
    random_b32 = build_backbone("openclip:ViT-B-32/openai", init="random")
    acts = {type(m).__name__ for m in random_b32.modules()}
    assert "QuickGELU" in acts
    assert random_b32.image_size == 224 and random_b32.embed_dim == 512
    assert sum(p.numel() for p in random_b32.parameters()) == 87_849_216


def test_linearized_clip_forward_backward_float32(clip):
    lin = linearize(clip)
    pixels = clip.prepare(_images(4))["pixels"][:]
    lin.train()
    out = lin(pixels=pixels)
    assert out.shape == (4, 16)
    out.square().sum().backward()
    grads = [p.grad for p in lin.model.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_clip_jvp_matches_finite_differences_float64(clip):
    model = copy.deepcopy(clip).double().eval()
    assert_jvp_matches_finite_differences(model, {"pixels": clip.prepare(_images(3))["pixels"][:].double()})


@pytest.mark.parametrize("mode", ["nonlinear", "linear"])
def test_finetuning_the_clip_image_encoder(clip, mode):
    images = _images(24, seed=7)
    labels = torch.as_tensor((images.reshape(24, -1).mean(1) > images.mean()).astype(np.int64))
    inputs = clip.prepare(images)
    head = text_head(clip.encode_text(["dark", "bright"]), clip.logit_scale)
    cfg = TrainConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1)
    vector = finetune(clip, head, inputs, labels, mode=mode, cfg=cfg, task="toy", progress=False)
    assert set(vector.vector) == {n for n, _ in clip.named_parameters()}
    assert vector.norm() > 0
    edited = vector.apply_to(clip)
    assert getattr(edited, "model", edited).text_model is clip.text_model
    with torch.no_grad():
        assert edited(pixels=inputs["pixels"][:2]).shape == (2, 16)


def test_pretrained_tag_loads_from_open_clips_cache_offline(tmp_path, monkeypatch):
    """A pretrained tag resolves through open_clip's Hugging Face cache, with the hub offline."""
    import huggingface_hub.constants
    import open_clip
    import open_clip.pretrained as pretrained
    from safetensors.torch import save_file

    from taskvec.models.openclip import weights_location

    clip_tiny.register()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setitem(pretrained._PRETRAINED, clip_tiny.TINY_CLIP, {"cached": pretrained._pcfg(hf_hub="taskvec-test/tiny-clip/")})
    spec = f"openclip:{clip_tiny.TINY_CLIP}/cached"
    assert weights_location(clip_tiny.TINY_CLIP, "cached", str(tmp_path))[0] is False
    with pytest.raises(TaskvecError, match="could not load open_clip weights.*Hugging Face cache"):
        build_backbone(spec, weights_dir=str(tmp_path))

    torch.manual_seed(11)
    source = open_clip.create_model(clip_tiny.TINY_CLIP, pretrained=None)
    snapshot = tmp_path / "models--taskvec-test--tiny-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
    (tmp_path / "models--taskvec-test--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--taskvec-test--tiny-clip" / "refs" / "main").write_text("0" * 40)
    present, where = weights_location(clip_tiny.TINY_CLIP, "cached", str(tmp_path))
    assert present and where.endswith("open_clip_model.safetensors")
    loaded = build_backbone(spec, weights_dir=str(tmp_path))
    torch.testing.assert_close(loaded.visual.state_dict()["proj"], source.visual.state_dict()["proj"])
    assert loaded.identity() == {"backbone": spec, "arch": clip_tiny.TINY_CLIP, "pretrained": "cached", "init": "pretrained"}


def test_random_init_heads_come_from_the_pretrained_text_tower(tmp_path):
    """The paper re-initializes the image encoder only: in a random-init run, zero-shot heads are
    built by the pre-trained text tower (and logit scale), unless head.text_encoder = "model"."""
    import open_clip

    from taskvec.config import RunConfig
    from taskvec.pipeline.setup import build_head, prepare_tasks
    from taskvec.typed import from_data

    clip_tiny.register()
    torch.manual_seed(11)
    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.create_model(clip_tiny.TINY_CLIP, pretrained=None).state_dict(), ckpt)
    spec = f"openclip:{clip_tiny.TINY_CLIP}/{ckpt}"
    pretrained = build_backbone(spec)
    torch.manual_seed(0)
    random = build_backbone(spec, init="random")

    def head(text_encoder: str):
        cfg = from_data(
            RunConfig,
            {
                "backbone": spec,
                "backbone_options": {},
                "init": "random",
                "tasks": ["toy-squares", "toy-noise"],
                "head": {"kind": "zeroshot", "text_encoder": text_encoder},
                "data": {"max_train": 8},
            },
        )
        return build_head(random, prepare_tasks(random, ["toy-squares"], cfg)["toy-squares"], cfg)

    from_pretrained, from_model = head("pretrained"), head("model")
    task_cfg = from_data(
        RunConfig,
        {
            "backbone": spec,
            "backbone_options": {},
            "tasks": ["toy-squares", "toy-noise"],
            "head": {"kind": "zeroshot"},
            "data": {"max_train": 8},
        },
    )
    reference = build_head(pretrained, prepare_tasks(pretrained, ["toy-squares"], task_cfg)["toy-squares"], task_cfg)
    torch.testing.assert_close(from_pretrained.weight, reference.weight)
    assert from_pretrained.scale == reference.scale == pretrained.logit_scale
    assert not torch.allclose(from_model.weight, reference.weight) and from_model.scale == random.logit_scale
