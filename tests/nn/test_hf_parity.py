"""Logit parity with transformers (PyTorch, CPU) on tiny random Llama / Qwen2 / Mistral models:
full forward, KV-cache decoding, left-padded batches, sharded checkpoints and `to_hf`."""

import jax.numpy as jnp
import numpy as np
import pytest

import bitscale.data as bdata
import bitscale.nn as bn
from tests.nn.helpers import hf_logits, make_hf_model, random_tokens

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
ARCHS = ("llama", "qwen2", "mistral")
CASES = [(a, g, t) for a in ARCHS for g in (True, False) for t in (False, True)]
TOKENS = random_tokens((2, 12), seed=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(arch, gqa, tied) -> (directory, transformers model, reference logits of TOKENS)."""
    out = {}
    for arch, gqa, tied in CASES:
        m = make_hf_model(arch, gqa=gqa, tied=tied, seed=len(out))
        name = f"{arch}_{'gqa' if gqa else 'mha'}_{'tied' if tied else 'untied'}"
        d = tmp_path_factory.mktemp(name)
        m.save_pretrained(d, safe_serialization=True)
        out[(arch, gqa, tied)] = (str(d), m, hf_logits(m, TOKENS))
    return out


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {k: bn.from_hf(v[0], policy="fp32") for k, v in checkpoints.items()}


@pytest.mark.parametrize("arch,gqa,tied", CASES)
def test_forward_matches_transformers(checkpoints, loaded, arch, gqa, tied):
    _, hf, ref = checkpoints[(arch, gqa, tied)]
    model = loaded[(arch, gqa, tied)]
    assert model.cfg.arch == arch
    assert model.cfg.num_kv_heads == (2 if gqa else 4)
    assert model.cfg.tie_word_embeddings == tied
    assert (model.lm_head is None) == tied
    out = np.asarray(bn.apply(model, jnp.asarray(TOKENS)))
    assert out.dtype == np.float32 and out.shape == (2, 12, 128)
    assert np.abs(ref).max() > 1.0  # logits large enough for the tolerance to mean something
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


def test_llama3_rope_scaling_is_read_and_matters(checkpoints, loaded):
    model = loaded[("llama", True, False)]
    s = model.cfg.rope_scaling
    assert s is not None and s.rope_type == "llama3" and s.factor == 8.0
    assert s.original_max_position_embeddings == 64
    import dataclasses
    plain = dataclasses.replace(model.cfg, rope_scaling=None)
    from bitscale.nn._rope import inv_frequencies
    a, b = inv_frequencies(model.cfg), inv_frequencies(plain)
    assert (a != b).any() and (a == b).any()  # high frequencies kept, low ones scaled
    hf_inv = checkpoints[("llama", True, False)][1].model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(a, hf_inv, rtol=1e-6)


def test_sliding_window_matters(checkpoints, loaded):
    """Mistral (window 5 on every layer) and Qwen2 (layer 1 only) differ from full attention."""
    assert loaded[("mistral", True, False)].cfg.window(0) == 5
    qcfg = loaded[("qwen2", True, False)].cfg
    assert (qcfg.window(0), qcfg.window(1)) == (None, 5)
    d, hf, ref = checkpoints[("mistral", True, False)]
    full = bn.from_hf(d, sliding_window=None)
    out = np.asarray(bn.apply(full, jnp.asarray(TOKENS)))
    assert np.abs(out - ref).max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_with_cache_matches_full_forward(checkpoints, loaded, arch):
    """Prefill 7 tokens, decode 5 one at a time: the same logits as the full forward pass."""
    model = loaded[(arch, True, False)]
    ref = checkpoints[(arch, True, False)][2]
    full = np.asarray(bn.apply(model, jnp.asarray(TOKENS)))
    cache = model.init_cache(2, 16)
    logits, cache = bn.apply(model, jnp.asarray(TOKENS[:, :7]), cache=cache)
    steps = [np.asarray(logits)]
    for i in range(7, 12):
        logits, cache = bn.apply(model, jnp.asarray(TOKENS[:, i:i + 1]), cache=cache)
        steps.append(np.asarray(logits))
    dec = np.concatenate(steps, axis=1)
    assert int(cache.index) == 12 and bool(cache.valid[:, :12].all())
    assert not bool(cache.valid[:, 12:].any())
    np.testing.assert_allclose(dec, full, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dec, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_matches_unpadded_rows(checkpoints, loaded, arch):
    """Row 1 holds 8 real tokens after 4 pads; its logits equal transformers' on the 8 alone.
    Then decode 3 more tokens from the padded cache."""
    model = loaded[(arch, True, False)]
    hf = checkpoints[(arch, True, False)][1]
    short = random_tokens((1, 11), seed=7)
    toks = TOKENS[:, :12].copy()
    toks[1, :4] = 0
    toks[1, 4:] = short[0, :8]
    mask = np.ones((2, 12), np.int32)
    mask[1, :4] = 0
    ref0 = hf_logits(hf, TOKENS[:1, :12])
    ref1 = hf_logits(hf, short)
    out = np.asarray(bn.apply(model, jnp.asarray(toks), attention_mask=jnp.asarray(mask)))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], ref0[0], rtol=0, atol=TOL)
    np.testing.assert_allclose(out[1, 4:], ref1[0, :8], rtol=0, atol=TOL)
    # the same through the cache, continuing row 1 with short[8:11]
    cache = model.init_cache(2, 16)
    _, cache = bn.apply(model, jnp.asarray(toks), attention_mask=jnp.asarray(mask), cache=cache)
    for j in range(3):
        nxt = np.stack([TOKENS[0, :1], short[0, 8 + j:9 + j]]).astype(np.int32)
        logits, cache = bn.apply(model, jnp.asarray(nxt), cache=cache)
        np.testing.assert_allclose(np.asarray(logits)[1, 0], ref1[0, 8 + j], rtol=0, atol=TOL)


def test_sharded_checkpoint(tmp_path):
    hf = make_hf_model("qwen2", gqa=True, tied=False, seed=11)
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    model = bn.from_hf(str(tmp_path))
    out = np.asarray(bn.apply(model, jnp.asarray(TOKENS)))
    np.testing.assert_allclose(out, hf_logits(hf, TOKENS), rtol=0, atol=TOL)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True), ("mistral", False)])
def test_to_hf_round_trip_through_transformers(checkpoints, loaded, tmp_path, arch, tied):
    model = loaded[(arch, True, tied)]
    ref = checkpoints[(arch, True, tied)][2]
    bn.to_hf(model, str(tmp_path / "out"))
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "mistral": transformers.MistralForCausalLM}[arch]
    back = cls.from_pretrained(str(tmp_path / "out"), attn_implementation="eager",
                               dtype=torch.float32)
    np.testing.assert_allclose(hf_logits(back, TOKENS), ref, rtol=0, atol=TOL)
    again = bn.from_hf(str(tmp_path / "out"))
    np.testing.assert_array_equal(np.asarray(bn.apply(again, jnp.asarray(TOKENS))),
                                  np.asarray(bn.apply(model, jnp.asarray(TOKENS))))


def test_to_hf_bf16_sharded(loaded, tmp_path):
    """bf16 tensors through bitscale's own safetensors writer, read by transformers and back."""
    model = loaded[("llama", True, False)]
    bn.to_hf(model, str(tmp_path), dtype="bfloat16", max_shard_bytes=30_000)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path))
    assert back.dtype == torch.bfloat16
    ours = bn.from_hf(str(tmp_path), dtype="bfloat16")
    w = np.asarray(ours.layers[0].attn.q_proj.kernel.get_value().astype(jnp.float32))
    ref = back.model.layers[0].self_attn.q_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(w, ref)
    w32 = np.asarray(model.layers[0].attn.q_proj.kernel.get_value())
    np.testing.assert_array_equal(w, w32.astype(jnp.bfloat16).astype(np.float32))


def test_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {"[UNK]": 0, "hello": 1, "world": 2, "<s>": 3, "</s>": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    for where in (tmp_path, tmp_path / "tokenizer.json"):
        loaded_tok = bdata.load_tokenizer(str(where))
        assert loaded_tok.encode("hello world foo") == [1, 2, 0]
        assert (loaded_tok.bos_id, loaded_tok.eos_id) == (3, 4)
    assert isinstance(bdata.load_tokenizer("char"), bdata.CharTokenizer)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        bdata.load_tokenizer(str(tmp_path / "nope"))
