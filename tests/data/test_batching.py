"""Fixed-shape batches, masks, and exact resume of the batch stream."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from tests.data.helpers import examples

from bitscale.data import (
    BATCH_KEYS,
    BOS_ID,
    EOS_ID,
    PAD_ID,
    Arithmetic,
    CharTokenizer,
    Countdown,
    Example,
    batches,
    make_batch,
    prompt_batches,
)

TOK = CharTokenizer()


def test_make_batch_shapes_and_masks():
    exs = list(examples("arithmetic", "train", 8))
    out = make_batch(exs, TOK, max_prompt_len=24, max_len=200)
    assert set(out) == set(BATCH_KEYS)
    for k in ("tokens", "answer_mask", "full_mask", "loss_mask"):
        assert out[k].shape == (8, 200) and out[k].dtype == np.int32, k
    for k in ("prompt", "prompt_mask"):
        assert out[k].shape == (8, 24) and out[k].dtype == np.int32, k
    assert out["length"].shape == out["prompt_length"].shape == (8,)
    np.testing.assert_array_equal(out["loss_mask"], out["answer_mask"])
    for i, e in enumerate(exs):
        p, t = TOK.encode(e.prompt), TOK.encode(e.target)
        n = 1 + len(p) + len(t) + 1
        row = out["tokens"][i]
        assert list(row[:n]) == [BOS_ID] + p + t + [EOS_ID]
        assert (row[n:] == PAD_ID).all() and out["length"][i] == n
        assert list(out["full_mask"][i]) == [1] * n + [0] * (200 - n)
        assert list(out["answer_mask"][i]) == [0] * (1 + len(p)) + [1] * (len(t) + 1) + \
            [0] * (200 - n)
        assert TOK.decode(row[out["answer_mask"][i] == 1]) == e.target
        m = 1 + len(p)
        assert list(out["prompt"][i]) == [PAD_ID] * (24 - m) + [BOS_ID] + p
        assert list(out["prompt_mask"][i]) == [0] * (24 - m) + [1] * m
        assert out["prompt_length"][i] == m
        assert TOK.decode(out["prompt"][i]) == e.prompt
    full = make_batch(exs, TOK, 24, 200, loss_on="full")
    np.testing.assert_array_equal(full["loss_mask"], full["full_mask"])


def test_make_batch_overlong():
    exs = [Example("1 + 1\n", "#### 2", "2"), Example("12345 + 1\n", "#### 12346", "12346")]
    with pytest.raises(ValueError, match="example 1 has prompt length 11"):
        make_batch(exs, TOK, max_prompt_len=8, max_len=64)
    with pytest.raises(ValueError, match="example 1 has length 22"):
        make_batch(exs, TOK, max_prompt_len=16, max_len=18)
    out = make_batch(exs, TOK, max_prompt_len=8, max_len=12, truncate=True)
    assert out["tokens"].shape == (2, 12) and out["prompt"].shape == (2, 8)
    assert list(out["tokens"][1]) == [BOS_ID] + TOK.encode("12345 + 1\n#")
    assert out["prompt"][1, 0] == BOS_ID and TOK.decode(out["prompt"][1]) == "45 + 1\n"
    assert out["answer_mask"][1].sum() == 1 and out["full_mask"][1].sum() == 12
    with pytest.raises(ValueError, match="empty"):
        make_batch([], TOK, 8, 12)


def _stream(source, start, n, seed=3):
    it = batches(source, "train", 4, seed, TOK, max_prompt_len=112, max_len=192, start=start)
    return list(itertools.islice(it, n))


def _assert_same(a, b):
    assert a.position == b.position and a.examples == b.examples
    for k in BATCH_KEYS:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])


@pytest.mark.parametrize("source", [Arithmetic(), Countdown(),
                                    list(examples("arithmetic", "test", 7))])
def test_stream_resume_equals_uninterrupted(source):
    full = _stream(source, 0, 8)
    assert [b.position for b in full] == list(range(8))
    shapes = {tuple(v.shape) for b in full for v in b.arrays.values()}
    assert shapes == {(4, 192), (4, 112), (4,)}
    stopped_at = full[4].next_position
    resumed = _stream(source, stopped_at, 3)
    for a, b in zip(full[5:], resumed):
        _assert_same(a, b)
    assert full[0].examples != full[1].examples
    assert _stream(source, 0, 2, seed=4)[1].examples != full[1].examples


def test_list_stream_covers_each_epoch():
    pool = list(examples("arithmetic", "test", 7))
    seen = [e for b in _stream(pool, 0, 7) for e in b.examples]  # 28 = 4 epochs of 7
    for k in range(4):
        assert sorted(seen[7 * k:7 * k + 7], key=pool.index) == pool
    assert seen[:7] != seen[7:14]  # reshuffled per epoch


def test_task_stream_matches_generate():
    b = _stream(Arithmetic(), 2, 1)[0]
    assert list(b.examples) == Arithmetic().generate("train", 12, 3)[8:12]


def test_prompt_batches_fixed_shape_and_fill():
    exs = list(examples("arithmetic", "test", 7))
    out = list(prompt_batches(exs, TOK, 3, 24))
    assert [(b.start, b.real) for b in out] == [(0, 3), (3, 3), (6, 1)]
    for b in out:
        assert b.prompt.shape == b.prompt_mask.shape == (3, 24)
        for row in range(3):
            ex = exs[b.start + (row if row < b.real else 0)]  # fill rows repeat the first
            want = [BOS_ID] + TOK.encode(ex.prompt)
            assert b.prompt[row, -len(want):].tolist() == want
            assert b.prompt_mask[row].tolist() == [0] * (24 - len(want)) + [1] * len(want)
    assert b.prompt[1:].tolist() == [b.prompt[0].tolist()] * 2


@pytest.mark.parametrize("kw,match", [
    (dict(examples=[]), "empty list of examples"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(max_prompt_len=3), "prompt"),
])
def test_prompt_batches_bad_input(kw, match):
    args = dict(examples=list(examples("arithmetic", "test", 2)), batch_size=2,
                max_prompt_len=24)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        list(prompt_batches(args.pop("examples"), TOK, args["batch_size"],
                            args["max_prompt_len"]))
