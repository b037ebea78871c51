"""Batch-invariant mode: a sample's logits are bit-identical whatever its batch and position."""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bitscale.nn as bn
from bitscale import repro
from bitscale.config_file import load_module

_tiny = load_module(pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny.py")
TINY = _tiny.TINY
TINY1 = dataclasses.replace(TINY, num_layers=1)  # the tiny model, one layer (faster compiles)
T = 12          # padded prompt length
PAD = 3         # left padding of the probed row


def probe(model, batch: int, pos: int, seed: int):
    """(prefill logits, first decode-step logits) of one fixed left-padded prompt placed at
    row ``pos`` of a batch whose other rows are random prompts of random lengths."""
    rng = np.random.default_rng(seed)
    prompt = np.random.default_rng(123).integers(0, 256, (T,))
    toks = rng.integers(0, 256, (batch, T))
    mask = (np.arange(T)[None, :] >= rng.integers(0, T - 1, (batch, 1))).astype(np.int32)
    toks[pos], mask[pos] = prompt, (np.arange(T) >= PAD)
    nxt = rng.integers(0, 256, (batch, 1))
    nxt[pos] = 7
    graphdef, state = nnx.split(model)
    l1, l2 = _prefill_decode(graphdef, state, jnp.asarray(toks, jnp.int32), jnp.asarray(mask),
                             jnp.asarray(nxt, jnp.int32))
    return np.asarray(l1[pos, PAD:]), np.asarray(l2[pos])


@functools.partial(jax.jit, static_argnums=0)
def _prefill_decode(graphdef, state, toks, mask, nxt):
    """Prefill into a KV cache, then one decode step (as greedy decoding runs them)."""
    model = nnx.merge(graphdef, state)
    l1, cache = model(toks, attention_mask=mask, cache=model.init_cache(toks.shape[0], T + 2))
    l2, _ = model(nxt, cache=cache)
    return l1, l2


@pytest.fixture(scope="module")
def invariant_model():
    model = repro.make_model(TINY1, "fp32_batch_invariant", rngs=nnx.Rngs(0))
    assert isinstance(model, bn.Llama) and model.row_tile == 1
    # the policy's fixed-order sum reaches every RMSNorm from the constructor
    assert all(m.reduction == repro.BatchInvariance() for _, m in nnx.iter_modules(model)
               if isinstance(m, bn.RMSNorm))
    return model


@pytest.mark.parametrize("tile,batches", [(1, (3, 8, 32)), (8, (3, 32))])
def test_batch_invariant_logits_bit_identical_across_batch_sizes_and_positions(
        invariant_model, tile, batches):
    model = invariant_model if tile == 1 else repro.with_policy(
        invariant_model, repro.batch_invariant("fp32", tile=tile))
    assert model.row_tile == tile
    ref = probe(model, 1, 0, seed=0)
    for batch in batches:
        for pos in sorted({0, batch // 2, batch - 1}):
            got = probe(model, batch, pos, seed=batch + pos)
            for name, a, b in zip(("prefill", "decode"), got, ref):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}: batch {batch} row {pos}")


def test_ordinary_mode_differs_and_invariant_mode_is_the_same_model(invariant_model):
    """Plain float32 logits change with the batch (measured on XLA CPU: batch 1 runs GEMVs,
    batch 3 GEMMs and offloaded softmax fusions). Where a backend happens to be invariant, a
    GPU-style split-K policy whose split count follows the number of rows shows it instead.
    The batch-invariant model holds the same parameters and agrees to float32 noise."""
    plain = bn.Llama(TINY1, "fp32", rngs=nnx.Rngs(0))
    one, three = probe(plain, 1, 0, seed=0), probe(plain, 3, 1, seed=1)
    for a, b in zip(one, three):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    if all(np.array_equal(a, b) for a, b in zip(one, three)):  # backend invariant here
        dependent = repro.with_policy(plain, repro.batch_dependent("fp32"))
        one, three = probe(dependent, 1, 0, seed=0), probe(dependent, 3, 1, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(one, three))
    for a, b in zip(probe(invariant_model, 1, 0, seed=0), one):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_batch_dependent_split_k_emulates_gpu_heuristics():
    hook = repro.BatchDependentSplitK()
    assert [hook.splits(r, 128) for r in (1, 3, 8, 16)] == [8, 6, 2, 1]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    dims = (((1,), (1,)), ((), ()))

    @jax.jit
    def run(x):
        return (hook.dot_general(x[:1], w, dims)[0], hook.dot_general(x, w, dims)[0],
                repro.dot_general(x[:1], w, dims, order="split_k:8")[0])

    one, three, split8 = (np.asarray(y) for y in run(x))
    np.testing.assert_array_equal(one, split8)
    assert not np.array_equal(one, three) and np.abs(one - three).max() < 1e-4


def test_unpadded_cache_is_accepted(invariant_model):
    tiled = repro.with_policy(invariant_model, repro.batch_invariant("fp32", tile=4))
    assert tiled.init_cache(3, 6).k[0].shape[0] == 4  # padded to the tile
    toks = jax.random.randint(jax.random.key(3), (3, 5), 0, TINY.vocab_size)
    _, cache = bn.apply(tiled, toks, cache=bn.init_cache(TINY1, 3, 6))
    assert cache.k[0].shape[0] == 3 and int(cache.index) == 5


def test_row_tiled_dot_rows_do_not_depend_on_the_batch():
    hook = repro.RowTiledDot(4)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    row = rng.standard_normal((40,)).astype(np.float32)
    dot = jax.jit(lambda x: hook.dot_general(x, w, (((1,), (1,)), ((), ()))))
    outs = []
    for m in (1, 3, 9):
        x = rng.standard_normal((m, 40)).astype(np.float32)
        x[m - 1] = row
        y = np.asarray(dot(x))
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
        outs.append(y[m - 1])
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    q = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    k = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    got = hook.dot_general(q, k, (((3,), (3,)), ((0, 1), (0, 1))))
    np.testing.assert_allclose(got, np.einsum("bhqd,bhkd->bhqk", q, k), rtol=1e-5, atol=1e-5)


def test_batch_invariance_errors():
    with pytest.raises(ValueError, match="tile"):
        repro.batch_invariant("fp32", tile=0)
    with pytest.raises(ValueError, match="valid orders"):
        repro.batch_invariant("fp32", order="tree")
    with pytest.raises(ValueError, match="unknown precision policy"):
        bn.resolve_policy("fp64_batch_invariant")
    assert bn.resolve_policy("bf16_batch_invariant").param_dtype == "bfloat16"
    assert repro.row_tile("bf16_batch_invariant") == 1 and repro.row_tile("bf16") is None
