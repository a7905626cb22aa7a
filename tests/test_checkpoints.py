"""Checkpoints made elsewhere (issue 12): the hf-clip backbone, task vectors from (base,
fine-tuned) checkpoints, and edited models exported in the base's own format. Everything on tiny
randomly initialized CLIPs written to a temp dir, checked against transformers/open_clip's own
forward passes."""

import copy
import re
from pathlib import Path

import clip_tiny
import hf_clip_tiny
import numpy as np
import pytest
import torch
from jvp_check import assert_jvp_matches_finite_differences

from taskvec.checkpoints import export_model, match_keys, vector_from_checkpoints
from taskvec.cli import main
from taskvec.config import RunConfig
from taskvec.errors import TaskvecError
from taskvec.kinds import FINETUNE_MODES
from taskvec.linearization import jvp
from taskvec.models import build_backbone
from taskvec.task_vector import TaskVector, sum_vectors


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfclip")
    base = hf_clip_tiny.write_base(root / "base")
    return {
        "root": root,
        "base": base,
        "ft": hf_clip_tiny.write_finetuned(base, root / "ft", seed=1),
        "vision": hf_clip_tiny.write_finetuned(base, root / "vision", seed=2, vision_only=True, shard="20KB"),
        "other": hf_clip_tiny.write_base(root / "other", hidden_size=48, intermediate_size=96),
    }


@pytest.fixture(scope="module")
def base(folders):
    return build_backbone(f"hf-clip:{folders['base']}")


def _pixels(backbone, n=4, seed=0):
    images = np.random.RandomState(seed).randint(0, 255, (n, 40, 48, 3)).astype(np.uint8)
    return backbone.prepare(images)["pixels"][:]


def test_hf_clip_backbone_is_clips_image_tower(folders, base):
    pixels = _pixels(base)
    torch.testing.assert_close(base(pixels=pixels), hf_clip_tiny.image_features(folders["base"], pixels))
    names = [n for n, _ in base.named_parameters()]
    assert all(n.startswith(("vision_model.", "visual_projection.")) for n in names) and "visual_projection.weight" in names
    text = base.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert text.shape == (2, 16) and not torch.allclose(text[0], text[1])
    assert base.logit_scale == pytest.approx(float(np.exp(2.6592)), rel=1e-3)  # CLIPConfig's default init
    assert copy.deepcopy(base)._text is base._text  # edited copies share the frozen text tower


def test_hf_clip_jvp_matches_finite_differences_float64(base):
    model = copy.deepcopy(base).double().eval()
    assert_jvp_matches_finite_differences(model, {"pixels": _pixels(base, 2).double()})


def test_vector_applied_to_the_base_reproduces_the_finetuned_model(folders, base):
    tau = vector_from_checkpoints(base, folders["ft"], "SUN397")
    edited = tau.apply_to(base)
    from transformers import CLIPModel

    finetuned = CLIPModel.from_pretrained(folders["ft"])
    reference = {n: p for n, p in finetuned.named_parameters()}
    for name, param in edited.named_parameters():
        torch.testing.assert_close(param, reference[name], rtol=0, atol=1e-6)
    pixels = _pixels(base, seed=3)
    torch.testing.assert_close(edited(pixels=pixels), hf_clip_tiny.image_features(folders["ft"], pixels), rtol=1e-5, atol=1e-5)
    assert tau.tasks == ("SUN397",) and not tau.mode.linearized and tau.info["ignored tensors"] > 0  # the text tower


def test_a_sharded_vision_only_checkpoint_keeps_the_projection_and_says_so(folders, base):
    tau = vector_from_checkpoints(base, folders["vision"], "DTD")
    assert tau.info["unchanged from the base (absent from the checkpoint)"] == ["visual_projection.weight"]
    assert float(tau.vector["visual_projection.weight"].abs().max()) == 0.0
    assert float(tau.vector["vision_model.post_layernorm.weight"].abs().max()) > 0.0


def test_export_loads_with_from_pretrained_and_matches_taskvecs_edit(folders, base, tmp_path):
    from transformers import CLIPModel

    merged = sum_vectors([vector_from_checkpoints(base, folders["ft"], "SUN397"), vector_from_checkpoints(base, folders["vision"], "DTD")])
    out = export_model(merged, base, tmp_path / "merged", alpha=0.4)
    loaded = CLIPModel.from_pretrained(out).eval()
    pixels = _pixels(base, seed=5)
    with torch.no_grad():
        theirs = loaded.visual_projection(loaded.vision_model(pixel_values=pixels).pooler_output)
    torch.testing.assert_close(theirs, merged.apply_to(base, 0.4)(pixels=pixels), rtol=1e-5, atol=1e-6)
    card = (out / "README.md").read_text()
    assert "α = 0.4" in card and "SUN397, DTD" in card
    # the text tower is the base's, so zero-shot heads of the export are the base's
    original = CLIPModel.from_pretrained(folders["base"])
    torch.testing.assert_close(loaded.text_projection.weight, original.text_projection.weight)


def test_linearized_checkpoints_give_linear_vectors(folders, base, tmp_path):
    from safetensors.torch import save_file

    theta0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    g = torch.Generator().manual_seed(4)
    theta = {n: p + 0.01 * torch.randn(p.shape, generator=g) for n, p in theta0.items()}
    # the paper's LinearizedModel saves ParameterLists: params0.<i> and params.<i> in θ's order
    state = {f"model.params0.{i}": t for i, t in enumerate(theta0.values())}
    state.update({f"model.params.{i}": t for i, t in enumerate(theta.values())})
    save_file(state, str(tmp_path / "lin.safetensors"))
    tau = vector_from_checkpoints(base, tmp_path / "lin.safetensors", "SUN397")
    assert tau.mode.linearized
    for name in theta0:
        torch.testing.assert_close(tau.vector[name], theta[name] - theta0[name])
    pixels = _pixels(base, 2)
    with torch.no_grad():
        primal, tangent = jvp(base, theta0, {n: theta[n] - theta0[n] for n in theta0}, {"pixels": pixels})
        torch.testing.assert_close(tau.apply_to(base)(pixels=pixels), primal + tangent, rtol=1e-5, atol=1e-5)  # f_lin(θ)
    state = {k: (t + 1.0 if ".params0." in k else t) for k, t in state.items()}
    save_file(state, str(tmp_path / "moved.safetensors"))
    with pytest.raises(TaskvecError, match="linearized around other weights"):
        vector_from_checkpoints(base, tmp_path / "moved.safetensors", "SUN397")


def test_open_clip_export_loads_with_open_clip(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    clip = clip_tiny.build()
    state = {n: p.detach() + 0.01 for n, p in clip.named_parameters()}
    save_file({f"model.{n}": t.contiguous() for n, t in state.items()}, str(tmp_path / "ft.safetensors"))
    tau = vector_from_checkpoints(clip, tmp_path / "ft.safetensors", "MNIST")
    out = export_model(tau, clip, tmp_path / "edited", alpha=0.5)
    model = open_clip.create_model(clip_tiny.TINY_CLIP, pretrained=str(out / "open_clip_model.safetensors")).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), tau.apply_to(clip, 0.5)(pixels=pixels), rtol=1e-5, atol=1e-6)


def test_taskvec_backbones_export_their_state_dict(tiny, tmp_path):
    from safetensors.torch import load_file

    torch.save({"state_dict": {n: p.detach() * 1.1 for n, p in tiny.named_parameters()}}, tmp_path / "ft.pt")
    tau = vector_from_checkpoints(tiny, tmp_path / "ft.pt", "toy-squares")
    out = export_model(tau, tiny, tmp_path / "out", alpha=1.0)
    written = load_file(str(out / "model.safetensors"))
    for name, param in tiny.named_parameters():
        torch.testing.assert_close(written[name], param.detach() * 1.1)


def test_key_matching_handles_added_and_dropped_prefixes():
    names = ["vision_model.a.weight", "vision_model.b.bias", "visual_projection.weight"]
    assert match_keys(names, {"module.vision_model.a.weight", "module.vision_model.b.bias", "module.visual_projection.weight"}) == {
        n: "module." + n for n in names
    }
    assert match_keys(names, {"a.weight", "b.bias"}) == {"vision_model.a.weight": "a.weight", "vision_model.b.bias": "b.bias"}


def test_bad_checkpoints_are_refused(folders, base, tmp_path):
    with pytest.raises(TaskvecError, match="another architecture than the base.*hidden_size 48 vs 32"):
        vector_from_checkpoints(base, folders["other"], "SUN397")
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in folders["vision"].iterdir():
        if "00003" not in item.name:
            (broken / item.name).write_bytes(item.read_bytes())
    with pytest.raises(TaskvecError, match="lacks 1 of its 5 weight shards, e.g. model-00003-of-00005.safetensors"):
        vector_from_checkpoints(base, broken, "SUN397")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")  # a whole module: needs unpickling
    with pytest.raises(TaskvecError, match="Python objects besides tensors"):
        vector_from_checkpoints(base, tmp_path / "pickled.pt", "SUN397")
    with pytest.raises(TaskvecError, match="lacks 40 of the base's 40 parameters"):
        torch.save({"w": torch.zeros(2)}, tmp_path / "foreign.pt")
        vector_from_checkpoints(base, tmp_path / "foreign.pt", "SUN397")
    with pytest.raises(TaskvecError, match="hf-clip needs a full CLIP model"):
        build_backbone(f"hf-clip:{folders['vision']}")
    lin = TaskVector(
        {n: torch.zeros_like(p) for n, p in base.named_parameters()},
        "linear",
        vector_from_checkpoints(base, folders["ft"], "x").base,
        ("x",),
    )
    with pytest.raises(TaskvecError, match="edits the linearized model"):
        export_model(lin, base, tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_cli_vector_and_export(folders, tmp_path, capsys):
    out = tmp_path / "tau.safetensors"
    main(["vector", "--base", str(folders["base"]), "--finetuned", str(folders["vision"]), "--task", "DTD", "--out", str(out)])
    assert "visual_projection.weight" in capsys.readouterr().out
    main(["export", str(out), "--base", str(folders["base"]), "--alpha", "0.5", "--out", str(tmp_path / "model")])
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "config.json").is_file()
    before = (tmp_path / "model" / "model.safetensors").read_bytes()
    for argv, message in [
        (["export", str(out), "--base", str(folders["base"]), "--out", str(tmp_path / "model")], "exists and is not empty; pass --force"),
        (
            [
                "vector",
                "--base",
                str(folders["base"]),
                "--finetuned",
                str(folders["other"]),
                "--task",
                "DTD",
                "--out",
                str(tmp_path / "o.safetensors"),
            ],
            "another architecture",
        ),
        (["vector", "--finetuned", str(folders["ft"]), "--task", "DTD", "--out", str(tmp_path / "o.safetensors")], "name the base model"),
        (["export", str(out), "--base", str(folders["base"]), "--alpha", "nan", "--out", str(tmp_path / "m2")], "--alpha must be a finite"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "m2").exists()


HF8 = Path(__file__).resolve().parents[1] / "configs" / "hf-vit-b-32-8tasks.toml"


def test_the_8_task_config_validates_and_its_dry_run_names_the_missing_models(tmp_path, monkeypatch):
    import dataclasses

    import fake_paper_data
    import huggingface_hub.constants

    from taskvec.config import load_config
    from taskvec.pipeline.plan import check_plan
    from taskvec.protocol import plan_run

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    cfg = load_config(HF8)
    assert cfg.backbone == "hf-clip:openai/clip-vit-base-patch32" and len(cfg.checkpoints["nonlinear"]) == len(cfg.tasks) == 8
    fake_paper_data.make(tmp_path, ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN", "ImageNet"))
    cfg = dataclasses.replace(cfg, device="cpu", data=dataclasses.replace(cfg.data, root=str(tmp_path)))
    stages = plan_run(cfg)
    assert not any(s.key.startswith("finetune/") and s.title.startswith("fine-tune") for s in stages)
    missing = check_plan(stages)
    assert len(missing) == 9  # the base and the eight fine-tuned image towers, nothing else
    assert any(
        m.startswith("model hf-clip:openai/clip-vit-base-patch32") and "huggingface-cli download openai/clip-vit-base-patch32" in m
        for m in missing
    )
    assert sum("huggingface-cli download tanganke/clip-vit-base-patch32_" in m for m in missing) == 8


def test_a_run_takes_vectors_from_checkpoints_and_fine_tunes_the_rest(folders, base, tmp_path):
    from taskvec.pipeline.rundir import RunDir
    from taskvec.protocol import plan_run, run_pipeline
    from taskvec.typed import from_data

    data = {
        "name": "hf",
        "backbone": f"hf-clip:{folders['base']}",
        "tasks": ["toy-squares", "toy-stripes"],
        "backbone_options": {},
        "data": {"max_train": 48, "max_val": 16, "max_test": 16},
        "train": {"modes": ["nonlinear", "linear"], "linear": {"steps": 2, "batch_size": 8, "warmup_steps": 1}},
        "checkpoints": {"nonlinear": {"toy-squares": str(folders["ft"]), "toy-stripes": str(folders["vision"])}},
        "eval": {"alpha_step": 0.5},
        "merge": {"methods": ["task_arithmetic"]},
    }
    cfg = from_data(RunConfig, data)
    titles = [s.title for s in plan_run(cfg)]
    assert (
        f"task vector of toy-squares (nonlinear) from checkpoint {folders['ft']}" in titles and "fine-tune toy-squares (linear)" in titles
    )
    results = run_pipeline(cfg, tmp_path / "run", log=lambda m: None, progress=False)
    saved = TaskVector.load(RunDir(tmp_path / "run").vector("toy-stripes", FINETUNE_MODES.get("nonlinear")))
    expected = vector_from_checkpoints(base, folders["vision"], "toy-stripes")
    for name, tensor in expected.vector.items():
        torch.testing.assert_close(saved.vector[name], tensor)
    assert set(results.single_task.test) >= {"nonlinear", "linear", "posthoc"}
    for bad, message in [
        ({"checkpoints": {"nonlinear": {"MNIST": "x"}}}, "checkpoints.nonlinear names tasks that are not in tasks: ['MNIST']"),
        ({"checkpoints": {"lora": {"toy-squares": "x"}}}, "[checkpoints.lora] gives vectors of a mode that train.modes leaves out"),
        ({"checkpoints": {"nonlinear": {"toy-squares": " "}}}, "checkpoints.nonlinear.toy-squares is empty"),
    ]:
        with pytest.raises(TaskvecError, match=re.escape(message)):
            from_data(RunConfig, {**data, **bad})


def _fake_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """The Hugging Face cache's layout for `repo` holding `folder`'s files (what
    `huggingface-cli download` leaves), so lookups by repo id work offline."""
    revision = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for item in folder.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)


def test_repo_ids_are_read_from_the_hugging_face_cache(folders, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "someone/tiny-clip", folders["base"])
    _fake_hub_cache(cache, "someone/tiny-clip_dtd", folders["vision"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "tau.safetensors"
    main(["vector", "--base", "someone/tiny-clip", "--finetuned", "someone/tiny-clip_dtd", "--task", "DTD", "--out", str(out)])
    by_repo = TaskVector.load(out)
    by_folder = vector_from_checkpoints(build_backbone(f"hf-clip:{folders['base']}"), folders["vision"], "DTD")
    assert by_repo.base["fingerprint"] == by_folder.base["fingerprint"]
    for name, tensor in by_folder.vector.items():
        torch.testing.assert_close(by_repo.vector[name], tensor)
    with pytest.raises(SystemExit):
        main(
            [
                "vector",
                "--base",
                "someone/tiny-clip",
                "--finetuned",
                "someone/absent",
                "--task",
                "DTD",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
    assert "huggingface-cli download someone/absent" in capsys.readouterr().err
