"""Best-of-N: the shared-prefill path (one prefill, cache broadcast to N) equals sampling the prompts
repeated N times with the same keys, token for token, chunked or not, with the model's layers
scanned or unrolled; errors."""

import dataclasses

import jax
import numpy as np
import pytest

from bitscale import sampling as S
from tests.sampling.helpers import CFG, EOS, PAD, make_model, prompts

T, N = 6, 5


@pytest.fixture(scope="module")
def model():
    model = make_model(dataclasses.replace(CFG, scan_layers=True))
    assert model.scan
    return model


@pytest.fixture(scope="module")
def batch():
    return prompts([2, 5], 5, seed=2)


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _repeat_path(model, batch, n, key, strategy, **kw):
    """The reference: every prompt repeated n times as rows of one batch, same keys."""
    prompt, mask = batch
    keys = S.sample_keys(key, prompt.shape[0], n).reshape(-1)
    kw = {"max_new_tokens": T, "eos_id": EOS, "pad_id": PAD, **kw}
    out = S.sample(model, np.repeat(prompt, n, 0), np.repeat(mask, n, 0), strategy=strategy,
                   key=keys, **kw)
    b = prompt.shape[0]
    return jax.tree.map(lambda a: np.asarray(a).reshape((b, n) + a.shape[1:]), out)


def _assert_same(got, ref, atol=1e-5):
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    np.testing.assert_array_equal(got.lengths, ref.lengths)
    np.testing.assert_array_equal(got.finished, ref.finished)
    np.testing.assert_allclose(got.log_probs, ref.log_probs, atol=atol)


# One strategy everywhere: the compiled programs are shared by the tests.
STRATEGY = S.MinP(0.02, temperature=1.3)


@pytest.mark.parametrize("chunk_size,unroll", [(None, True), (2, False)])
def test_best_of_n_equals_batch_repeat(model, batch, chunk_size, unroll):
    # unroll=False keeps the model's jax.lax.scan over layers inside the decode step; the
    # reference always unrolls (one compiled program less). Log-probs agree to float32 rounding
    # (~1e-6 relative): the prefill runs on B rows here and on B * N rows in the reference, and
    # XLA's sums differ in the last bits between batch shapes.
    key = jax.random.key(7)
    ref = _repeat_path(model, batch, N, key, STRATEGY)
    got = _np(S.sample_n(model, *batch, N, strategy=STRATEGY, key=key, max_new_tokens=T,
                         eos_id=EOS, pad_id=PAD, chunk_size=chunk_size, unroll_layers=unroll))
    assert got.tokens.shape == (2, N, T) and got.lengths.shape == (2, N)
    _assert_same(got, ref)
    assert len({tuple(r) for r in got.tokens.reshape(-1, T)}) > N     # samples differ


def test_samples_nest_across_n_and_stop_tokens(model, batch):
    key = jax.random.key(1)
    kw = dict(strategy=STRATEGY, key=key, max_new_tokens=T, eos_id=EOS, pad_id=PAD)
    big = _np(S.sample_n(model, *batch, N, **kw))
    # Sample j's key does not depend on N (so, by the batch-repeat equality, neither do its
    # tokens): the samples of N=2 are the first two of N=5.
    np.testing.assert_array_equal(jax.random.key_data(S.sample_keys(key, 2, 2)),
                                  jax.random.key_data(S.sample_keys(key, 2, N))[:, :2])
    # A stop token that some samples emit: lengths / finished / padding follow it.
    stop = int(big.tokens[0, 0, 1])
    out = _np(S.sample_n(model, *batch, N, **kw, stop_tokens=(stop,)))
    ref = _repeat_path(model, batch, N, key, STRATEGY, stop_tokens=(stop,))
    _assert_same(out, ref)
    assert out.finished[0, 0] and out.lengths[0, 0] <= 2
    after = np.arange(T) >= out.lengths[..., None]
    assert (out.tokens[after] == PAD).all() and (out.log_probs[after] == 0).all()


@pytest.mark.parametrize("kw,match", [
    (dict(n=0), "n must be an integer >= 1"),
    (dict(n=2.5), "n must be an integer >= 1"),
    (dict(chunk_size=0), "chunk_size must be an integer >= 1"),
    (dict(key=jax.random.split(jax.random.key(0), 3)), "keys of shape \\(2, 2\\)"),
    (dict(max_len=4), "longer than the cache"),
    (dict(strategy="nope"), "unknown sampling strategy"),
])
def test_bad_inputs_raise(model, batch, kw, match):
    args = dict(n=2, strategy=S.Greedy(), key=jax.random.key(0), max_new_tokens=3,
                eos_id=EOS, pad_id=PAD)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        S.sample_n(model, *batch, args.pop("n"), **args)
