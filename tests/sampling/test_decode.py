"""The cached sampler against cache-free references: recorded log-probs equal log_softmax of a
full forward pass over prompt + samples, greedy equals argmax of that pass and
`bitscale.train.evaluate.greedy_decode`; stop tokens, lengths, padding; input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale import sampling as S
from bitscale.train.evaluate import greedy_decode
from tests.sampling.helpers import EOS, PAD, full_forward_log_probs, make_model, prompts

T = 7


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def batch():
    return prompts([3, 6, 1], 6, seed=1)


def _run(model, batch, strategy, **kw):
    kw = {"key": jax.random.key(3), "max_new_tokens": T, "eos_id": EOS, "pad_id": PAD, **kw}
    out = S.sample(model, *batch, strategy=strategy, **kw)
    return jax.tree.map(np.asarray, out)


def _check_layout(out, max_new_tokens=T):
    b = out.lengths.shape[0]
    assert out.tokens.shape == out.log_probs.shape == (b, max_new_tokens)
    assert out.tokens.dtype == np.int32 and out.log_probs.dtype == np.float32
    assert out.lengths.dtype == np.int32 and out.finished.dtype == bool
    after = np.arange(max_new_tokens)[None, :] >= out.lengths[:, None]
    assert (out.tokens[after] == PAD).all() and (out.log_probs[after] == 0).all()
    assert (out.log_probs[~after] <= 0).all()


def test_cached_log_probs_equal_full_forward(model, batch):
    out = _run(model, batch, S.Temperature(1.0))
    _check_layout(out)
    logp, _ = full_forward_log_probs(model, *batch, out.tokens, out.lengths)
    live = np.arange(T)[None, :] < out.lengths[:, None]
    ref = np.take_along_axis(logp, out.tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out.log_probs[live], ref[live], atol=2e-5)
    assert len(set(out.tokens[0, :out.lengths[0]])) > 1      # actually sampling


def test_greedy_decode_compiles_once_per_shape(model):
    """`greedy_decode` runs the sampler's jitted program: other prompts of the same shape and
    other stop / pad ids (traced, not static) reuse its compilation."""
    from bitscale.sampling import _decode

    prompt, mask = prompts([4, 2], 5, seed=2)
    greedy_decode(model, prompt, mask, 3, EOS, PAD)
    before = _decode._sample._cache_size()
    greedy_decode(model, prompt[::-1].copy(), mask[::-1].copy(), 3, EOS, PAD)
    greedy_decode(model, prompt, mask, 3, eos_id=7, pad_id=5)
    assert _decode._sample._cache_size() == before


def test_greedy_equals_full_forward_argmax_and_greedy_decode(model, batch):
    out = _run(model, batch, S.Greedy())
    _check_layout(out)
    logp, argmax = full_forward_log_probs(model, *batch, out.tokens, out.lengths)
    live = np.arange(T)[None, :] < out.lengths[:, None]
    np.testing.assert_array_equal(out.tokens[live], argmax[live])
    ref_tok, ref_len = greedy_decode(model, *batch, T, EOS, PAD)
    np.testing.assert_array_equal(out.tokens, np.asarray(ref_tok))
    np.testing.assert_array_equal(out.lengths, np.asarray(ref_len))
    np.testing.assert_array_equal(out.finished, out.tokens[np.arange(3), out.lengths - 1] == EOS)


def test_stop_tokens_lengths_and_padding(model, batch):
    free = _run(model, batch, S.Greedy(), eos_id=None)
    assert (free.lengths == T).all() and not free.finished.any()
    first0 = int(free.tokens[0, 0])                           # row 0 stops at its first token
    later1 = int(free.tokens[1, 3])                           # row 1 stops at most at index 3
    out = _run(model, batch, S.Greedy(), eos_id=None, stop_tokens=(first0, later1))
    _check_layout(out)
    stops = np.isin(free.tokens, [first0, later1])
    for r in range(3):
        hits = np.flatnonzero(stops[r])
        n = hits[0] + 1 if len(hits) else T
        assert out.lengths[r] == n and out.finished[r] == bool(len(hits))
        np.testing.assert_array_equal(out.tokens[r, :n], free.tokens[r, :n])
        np.testing.assert_array_equal(out.log_probs[r, :n], free.log_probs[r, :n])
    assert out.lengths[0] == 1 and out.finished[0] and out.lengths[1] <= 4


def test_keys_are_per_row_and_explicit(model, batch):
    a = _run(model, batch, "temperature:1.0")
    b = _run(model, batch, S.Temperature(1.0), key=S.row_keys(jax.random.key(3), 3))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    raw = jax.random.key_data(S.row_keys(jax.random.key(3), 3))       # raw uint32 keys work
    np.testing.assert_array_equal(_run(model, batch, S.Temperature(1.0), key=raw).tokens,
                                  a.tokens)
    # A row's sample follows its prompt and key, whatever its place in the batch.
    perm = np.array([2, 0, 1])
    c = _run(model, (batch[0][perm], batch[1][perm]), S.Temperature(1.0),
             key=S.row_keys(jax.random.key(3), 3)[perm])
    np.testing.assert_array_equal(c.tokens, a.tokens[perm])
    np.testing.assert_allclose(c.log_probs, a.log_probs[perm], atol=1e-6)


def test_single_new_token(model, batch):
    out = _run(model, batch, S.Greedy(), max_new_tokens=1, max_len=10)
    _check_layout(out, 1)
    assert (out.lengths == 1).all()


def _bad(model, batch, **kw):
    args = dict(strategy=S.Greedy(), key=jax.random.key(0), max_new_tokens=4, eos_id=EOS,
                pad_id=PAD)
    prompt, mask = kw.pop("prompt", batch[0]), kw.pop("prompt_mask", batch[1])
    return S.sample(model, prompt, mask, **{**args, **kw})


@pytest.mark.parametrize("kw,match", [
    (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
    (dict(max_len=5), "prompt length 6 is longer than the cache"),
    (dict(max_len=8), "exceed the cache"),
    (dict(max_new_tokens=60), "max_position_embeddings=64"),
    (dict(strategy="beam"), "unknown sampling strategy"),
    (dict(prompt=np.zeros((6,), np.int32)), "prompt must be an int array"),
    (dict(prompt=np.zeros((3, 6), np.float32)), "prompt must be an int array"),
    (dict(prompt_mask=np.ones((3, 5), np.int32)), "prompt_mask shape"),
    (dict(prompt_mask=np.tile([1, 1, 1, 1, 1, 0], (3, 1))), "LEFT-padded"),
    (dict(key=jax.random.split(jax.random.key(0), 2)), "keys of shape \\(3,\\)"),
    (dict(key=jnp.zeros((3,), jnp.float32)), "must be a jax.random key"),
    (dict(stop_tokens=(48,)), "not a token id in \\[0, 48\\)"),
])
def test_bad_inputs_raise(model, batch, kw, match):
    with pytest.raises(ValueError, match=match):
        _bad(model, batch, **kw)
