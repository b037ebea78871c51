"""Character tokenizer and the Hugging Face wrapper."""

from __future__ import annotations

import json

import pytest
from tests.data.helpers import TASKS, examples

from bitscale.data import (
    BOS_ID,
    CHARS,
    EOS_ID,
    PAD_ID,
    CharTokenizer,
    load_hf_tokenizer,
)


def test_char_round_trip_on_all_tasks():
    tok = CharTokenizer()
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert tok.vocab_size == 3 + len(CHARS) == 3 + len(set(CHARS))
    for name in TASKS:
        for e in examples(name, "train", 200):
            text = e.prompt + e.target
            ids = tok.encode(text)
            assert len(ids) == len(text) and min(ids) >= 3 and max(ids) < tok.vocab_size
            assert tok.decode(ids) == text


def test_char_decode_stops_at_eos_and_skips_pad():
    tok = CharTokenizer()
    ids = [BOS_ID] + tok.encode("12 + 3") + [EOS_ID] + tok.encode("junk") + [PAD_ID]
    assert tok.decode([PAD_ID, PAD_ID] + ids) == "12 + 3"
    assert tok.decode(tok.encode("a#b") + [PAD_ID] + tok.encode("c")) == "a#bc"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_char_unknown_character_named():
    with pytest.raises(ValueError, match="'é'"):
        CharTokenizer().encode("caf\u00e9")


def _make_hf(tmp_path, config: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5, "7": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    if config:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": "<pad>"}))
    return tmp_path


@pytest.mark.parametrize("config", [True, False])
def test_hf_wrapper(tmp_path, config):
    tok = load_hf_tokenizer(_make_hf(tmp_path, config))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.encode("hello world 7")
    assert ids == [4, 5, 6]
    assert tok.decode([0, 1] + ids + [2, 4]) == "hello world 7"
    assert tok.vocab_size == 7


def test_hf_missing_special(tmp_path):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        load_hf_tokenizer(_make_hf(tmp_path, False), eos_token="<|nope|>")
