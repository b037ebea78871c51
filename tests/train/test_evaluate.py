"""Evaluation: cached greedy decoding against a cache-free reference, EOS handling, task accuracy
and perplexity against numpy float64.

References (independent of the code under test): the reference decoder re-runs the full forward
pass without a cache on the growing left-padded sequence and takes the argmax of the last
position; perplexity is recomputed in numpy float64 from the model's own logits; a model with
constant logits has perplexity exactly the vocabulary size.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitscale import data
from bitscale import nn as bnn
from bitscale.train import evaluate as ev

TOK = data.CharTokenizer()
CFG = bnn.ModelConfig(vocab_size=TOK.vocab_size, hidden_size=64, intermediate_size=128,
                      num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=256,
                      initializer_range=0.5)
PAD, EOS = TOK.pad_id, TOK.eos_id


@pytest.fixture(scope="module")
def model():
    # A large init range makes the random model's argmax vary from step to step (no ties).
    return bnn.Llama(CFG, "fp32", rngs=nnx.Rngs(0))


def _prompts(lengths, p, seed=0):
    """Left-padded random prompts (BOS first) with the given real lengths."""
    rng = np.random.default_rng(seed)
    prompt = np.full((len(lengths), p), PAD, np.int32)
    mask = np.zeros((len(lengths), p), np.int32)
    for i, n in enumerate(lengths):
        prompt[i, p - n:] = [TOK.bos_id] + list(rng.integers(3, CFG.vocab_size, n - 1))
        mask[i, p - n:] = 1
    return prompt, mask


def _naive_greedy(model, prompt, mask, n):
    """No cache: full forward on prompt + generated so far, argmax of the last position."""
    seq, m = jnp.asarray(prompt), jnp.asarray(mask)
    out = []
    for _ in range(n):
        logits = bnn.apply(model, seq, attention_mask=m)
        tok = np.asarray(jnp.argmax(logits[:, -1].astype(jnp.float32), axis=-1), np.int32)
        out.append(tok)
        seq = jnp.concatenate([seq, jnp.asarray(tok)[:, None]], axis=1)
        m = jnp.concatenate([m, jnp.ones((m.shape[0], 1), m.dtype)], axis=1)
    return np.stack(out, axis=1)


def test_greedy_matches_cache_free_reference(model):
    prompt, mask = _prompts([7, 3, 5, 1], 7)
    n = 8
    want = _naive_greedy(model, prompt, mask, n)
    # eos_id = -1 never fires: pure greedy continuation.
    toks, lengths = ev.greedy_decode(model, prompt, mask, n, eos_id=-1, pad_id=PAD)
    assert toks.shape == (4, n) and toks.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(toks), want)
    np.testing.assert_array_equal(np.asarray(lengths), [n] * 4)
    assert len({tuple(r) for r in want}) > 1  # rows really differ
    # A row's continuation does not depend on how much left padding the batch imposes.
    solo, _ = ev.greedy_decode(model, prompt[1:2, -3:], mask[1:2, -3:], n, -1, PAD)
    np.testing.assert_array_equal(np.asarray(solo)[0], want[1])


def test_greedy_eos_and_padding(model):
    prompt, mask = _prompts([6, 4, 2], 6, seed=1)
    n = 10
    free = np.asarray(ev.greedy_decode(model, prompt, mask, n, eos_id=-1, pad_id=PAD)[0])
    # Pick as "EOS" a token that row 0 emits at step k > 0 (first occurrence).
    k = next(j for j in range(1, n) if free[0, j] not in free[0, :j])
    eos = int(free[0, k])
    toks, lengths = ev.greedy_decode(model, prompt, mask, n, eos_id=eos, pad_id=PAD)
    toks, lengths = np.asarray(toks), np.asarray(lengths)
    for r in range(3):
        hits = np.flatnonzero(free[r] == eos)
        length = int(hits[0]) + 1 if hits.size else n
        assert lengths[r] == length
        np.testing.assert_array_equal(toks[r, :length], free[r, :length])
        assert (toks[r, length:] == PAD).all()
    assert lengths[0] == k + 1
    # Every row stops at once (EOS = the first token of row 0 only for a 1-row batch).
    one, len1 = ev.greedy_decode(model, prompt[:1], mask[:1], n, eos_id=int(free[0, 0]),
                                 pad_id=PAD)
    assert int(len1[0]) == 1 and (np.asarray(one)[0, 1:] == PAD).all()
    assert np.asarray(one)[0, 0] == free[0, 0]


class _Everything:
    name = "everything"

    def check(self, completion, example):
        return True


class _EvenLength:
    name = "even"

    def check(self, completion, example):
        return len(completion) % 2 == 0


def _examples(n):
    return data.Arithmetic(digits=2, ops=("+",)).generate("test", n, seed=0)


def test_accuracy_scores_own_completions(model):
    exs = _examples(5)
    kw = {"batch_size": 2, "max_prompt_len": 24, "max_new_tokens": 6}
    res = ev.accuracy(model, exs, _EvenLength(), TOK, **kw)
    assert res["n"] == 5 and len(res["completions"]) == 5
    want = np.mean([len(c) % 2 == 0 for c in res["completions"]])
    assert res["accuracy"] == pytest.approx(want)
    # Completions equal a single-batch greedy decode (dummy padding rows are dropped, rows are
    # independent of their batch-mates).
    b = data.make_batch([dataclasses.replace(e, target="") for e in exs], TOK, 24, 25)
    toks, lengths = ev.greedy_decode(model, b["prompt"], b["prompt_mask"], 6, EOS, PAD)
    want_c = [TOK.decode(np.asarray(toks)[i, :int(lengths[i])]) for i in range(5)]
    assert res["completions"] == want_c
    # Oracle checker: everything accepted.
    assert ev.accuracy(model, exs, _Everything(), TOK, **kw)["accuracy"] == 1.0
    # The real checker on a random model: consistent with scoring the completions directly.
    task = data.Arithmetic(digits=2, ops=("+",))
    res = ev.accuracy(model, exs, task, TOK, **kw)
    assert res["accuracy"] == np.mean([task.check(c, e) for c, e in zip(res["completions"], exs)])


def test_accuracy_rejects_long_prompt(model):
    with pytest.raises(ValueError, match="max_prompt_len"):
        ev.accuracy(model, _examples(1), _Everything(), TOK, batch_size=1, max_prompt_len=4,
                    max_new_tokens=2)


def _np_ppl(logits, tokens, mask):
    x = np.asarray(logits, np.float64)[:, :-1]
    lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    lp = np.take_along_axis(x, tokens[:, 1:, None], -1)[..., 0] - lse
    m = mask[:, 1:].astype(np.float64)
    return -(lp * m).sum(), m.sum()


@pytest.mark.parametrize("which", ["answer", "full"])
def test_perplexity_matches_numpy(model, which):
    exs = _examples(6)
    bs = [data.make_batch(exs[i:i + 3], TOK, 24, 96) for i in (0, 3)]
    total = count = 0.0
    for b in bs:
        logits = bnn.apply(model, b["tokens"], attention_mask=b["full_mask"])
        s, c = _np_ppl(logits, b["tokens"], b[f"{which}_mask"])
        total, count = total + s, count + c
    got = ev.perplexity(model, iter(bs), mask=which)
    assert got == pytest.approx(np.exp(total / count), rel=1e-5)


def test_perplexity_uniform_model_is_vocab_size():
    m = bnn.Llama(CFG, "fp32", rngs=nnx.Rngs(1))
    m.norm.scale[...] = jnp.zeros_like(m.norm.scale[...])  # hidden state 0 -> logits all 0
    b = data.make_batch(_examples(4), TOK, 24, 96, loss_on="full")
    for which in ("answer", "full", "loss"):
        assert ev.perplexity(m, [b], mask=which) == pytest.approx(CFG.vocab_size, rel=1e-6)


def test_perplexity_errors(model):
    with pytest.raises(ValueError, match="mask"):
        ev.perplexity(model, [], mask="prompt")
    with pytest.raises(ValueError, match="no masked"):
        ev.perplexity(model, [])
