"""Strategies on fixed logits (no model): greedy limits, chi-square goodness of fit of the
inverse-CDF sampler against numpy softmax, top-p / min-p supports recomputed with numpy in
float64, and parameter validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitscale import sampling as S

N_DRAWS = 20_000


def _logits(shape, scale=2.0, seed=0):
    return np.asarray(np.random.default_rng(seed).normal(0, scale, shape), np.float32)


def _draw(strategy, logits, n=N_DRAWS, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return np.asarray(jax.jit(jax.vmap(strategy.get_next_tokens, in_axes=(None, 0)))(
        jnp.asarray(logits), keys))


def _softmax64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _chi_square_pvalue(counts, probs):
    """Pearson chi-square p-value, cells with expected count < 5 pooled."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert obs.sum() == counts.sum()
    try:
        from scipy import stats
        return float(stats.chisquare(obs, exp).pvalue)
    except ImportError:   # Wilson-Hilferty normal approximation of the chi-square tail
        import math
        df = len(obs) - 1
        stat = float(((obs - exp) ** 2 / exp).sum())
        z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
        return 0.5 * math.erfc(z / math.sqrt(2))


def _draw_rows(strategy, logits, keys):
    """[len(keys), rows] draws: every key samples every row (with split per-row keys)."""
    def one(k):
        return jax.vmap(strategy.get_next_tokens)(jnp.asarray(logits),
                                                  jax.random.split(k, logits.shape[0]))
    return np.asarray(jax.jit(jax.vmap(one))(keys))


def _nucleus(probs, p):
    """Boolean [V] mask of the top-p nucleus of one row, float64, by numpy sort."""
    order = np.argsort(-probs, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    keep = np.zeros(probs.shape, bool)
    keep[order[before < p]] = True
    return keep, np.min(np.abs(np.cumsum(probs[order]) - p))


def test_topk1_and_tiny_temperature_equal_greedy():
    logits = _logits((64, 50), seed=1)
    keys = jax.random.split(jax.random.key(0), 64)
    strategies = (S.Greedy(), S.TopK(1), S.TopK(1, temperature=3.0), S.Temperature(1e-4),
                  S.MinP(1.0), S.TopP(1e-6))

    @jax.jit
    def all_tokens(x, k):
        return [jax.vmap(s.get_next_tokens)(x, k) for s in strategies]

    greedy, *others = map(np.asarray, all_tokens(jnp.asarray(logits), keys))
    np.testing.assert_array_equal(greedy, logits.argmax(-1))
    for strategy, got in zip(strategies[1:], others):
        np.testing.assert_array_equal(got, greedy, err_msg=str(strategy))


@pytest.mark.parametrize("vocab,t", [(37, 0.7), (300, 1.5)])
def test_temperature_matches_softmax_chi_square(vocab, t):
    # 37 and 300 are not multiples of the sampler's block size (tail padding is exercised).
    logits = _logits((vocab,), scale=1.5, seed=vocab)
    counts = np.bincount(_draw(S.Temperature(t), logits), minlength=vocab)
    assert counts.shape == (vocab,)
    assert _chi_square_pvalue(counts, _softmax64(logits / t)) > 1e-3


@pytest.mark.parametrize("strategy", [S.TopK(5, temperature=0.8), S.TopP(0.8), S.MinP(0.05)])
def test_truncated_strategies_match_renormalized_softmax(strategy):
    logits = _logits((40,), scale=1.5, seed=3)
    support = np.isfinite(np.asarray(strategy.process(logits)))
    probs = _softmax64(logits / getattr(strategy, "temperature", 1.0)) * support
    probs /= probs.sum()
    counts = np.bincount(_draw(strategy, logits), minlength=40)
    assert counts[~support].sum() == 0
    assert _chi_square_pvalue(counts[support], probs[support]) > 1e-3


def test_top_p_never_leaves_the_nucleus():
    logits = _logits((32, 60), scale=2.0, seed=4)
    keys = jax.random.split(jax.random.key(1), 200)
    for p in (0.3, 0.9):
        strategy = S.TopP(p)
        draws = _draw_rows(strategy, logits, keys)                  # [200, 32]
        support = np.isfinite(np.asarray(strategy.process(logits)))
        for r in range(32):
            keep, margin = _nucleus(_softmax64(logits[r]), p)
            if margin < 1e-5:   # float32 cumsum may legitimately round the other way
                continue
            np.testing.assert_array_equal(support[r], keep, err_msg=f"p={p} row {r}")
            assert keep[draws[:, r]].all(), f"p={p} row {r} left the nucleus"


def test_min_p_never_emits_tokens_below_threshold():
    logits = _logits((32, 60), scale=2.0, seed=5)
    keys = jax.random.split(jax.random.key(2), 200)
    for p in (0.02, 0.3):
        strategy = S.MinP(p)
        draws = _draw_rows(strategy, logits, keys)
        probs = _softmax64(logits)
        ok = probs >= p * probs.max(-1, keepdims=True) * (1 - 1e-6)
        for r in range(32):
            assert ok[r, draws[:, r]].all(), f"p={p} row {r}"
        np.testing.assert_array_equal(np.isfinite(np.asarray(strategy.process(logits))),
                                      probs >= p * probs.max(-1, keepdims=True))


def test_categorical_never_draws_masked_tokens_and_takes_any_float_dtype():
    logits = np.full((3, 70), -np.inf, np.float32)
    logits[0, 69], logits[1, [0, 64]], logits[2, 5:9] = 0.0, 1.0, -2.0
    draws = _draw(S.Temperature(1.0), logits, n=2000)
    assert (draws[:, 0] == 69).all() and np.isin(draws[:, 1], [0, 64]).all()
    assert np.isin(draws[:, 2], [5, 6, 7, 8]).all()
    assert set(np.unique(draws[:, 1])) == {0, 64}
    tok = jax.jit(S.TopK(3).get_next_tokens)(jnp.asarray(_logits((4, 9)), jnp.bfloat16),
                                             jax.random.key(0))
    assert tok.dtype == jnp.int32 and tok.shape == (4,)
    assert S.Temperature(2.0).process(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.float32


def test_chosen_log_probs_are_raw_log_softmax():
    logits = _logits((5, 30), seed=6)
    tok = np.arange(5) * 3
    lp = np.asarray(S.chosen_log_probs(logits, jnp.asarray(tok)))
    ref = np.log(_softmax64(logits))[np.arange(5), tok]
    np.testing.assert_allclose(lp, ref, atol=1e-5)


@pytest.mark.parametrize("make,match", [
    (lambda: S.Temperature(0.0), "temperature must be"),
    (lambda: S.Temperature(-1.0), "temperature must be"),
    (lambda: S.Temperature(float("inf")), "temperature must be"),
    (lambda: S.TopK(0), "k must be an integer >= 1"),
    (lambda: S.TopK(2.5), "k must be an integer >= 1"),
    (lambda: S.TopK(4, temperature=0), "temperature must be"),
    (lambda: S.TopP(0.0), r"p must be a number in \(0, 1\]"),
    (lambda: S.TopP(1.5), r"p must be a number in \(0, 1\]"),
    (lambda: S.MinP(-0.1), r"p must be a number in \(0, 1\]"),
    (lambda: S.strategy_from_name("beam"), "unknown sampling strategy 'beam'; valid: "),
    (lambda: S.strategy_from_name("top_k", p=0.5), "bad arguments"),
    (lambda: S.parse_strategy("top_p:abc"), "is not a number"),
    (lambda: S.parse_strategy("top_k:temperature=1,3"), "must come first"),
    (lambda: S.parse_strategy("min_p:q=1"), "has no field 'q'"),
])
def test_invalid_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_strategy_names_and_parsing():
    assert S.strategy_from_name("Top-P", p=0.9) == S.TopP(0.9)
    assert S.strategy_from_name("greedy") == S.Greedy()
    assert S.parse_strategy("top_k:40,temperature=0.5") == S.TopK(40, temperature=0.5)
    assert S.parse_strategy("temperature:0.7") == S.Temperature(0.7)
    assert S.parse_strategy("min_p:p=0.1") == S.MinP(0.1)
    assert S.parse_strategy(S.Greedy()) == S.Greedy()
    assert hash(S.TopP(0.9)) == hash(S.TopP(0.9))       # usable as a static jit argument
    with pytest.raises(ValueError, match="valid: \\['greedy', 'min_p', 'temperature'"):
        S.parse_strategy("beam:4")
