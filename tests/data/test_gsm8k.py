"""GSM8K JSONL loader and checker."""

from __future__ import annotations

import json

import pytest

from bitscale.data import Example, gsm8k_check, load_gsm8k_jsonl

GOOD = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72"},
    {"question": "A shop has 1200 pens and sells 1250. Change?", "answer": "1200-1250=-50\n#### -50"},
    {"question": "Big number?", "answer": "So it is\n#### 1,000"},
]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_good(tmp_path):
    exs = load_gsm8k_jsonl(_write(tmp_path / "g.jsonl", GOOD[:1] + [""] + GOOD[1:]))
    assert [e.answer for e in exs] == ["72", "-50", "1,000"]
    assert exs[0].prompt == GOOD[0]["question"] + "\n"
    assert exs[0].target == GOOD[0]["answer"]
    assert all(gsm8k_check(e.target, e) for e in exs)
    stripped = load_gsm8k_jsonl(tmp_path / "g.jsonl", strip_calculator=True)
    assert "<<" not in stripped[0].target and stripped[0].target.endswith("#### 72")


@pytest.mark.parametrize("bad, match", [
    ("{not json", "invalid JSON"),
    ('["a", "b"]', "JSON object"),
    ({"question": "q"}, "'answer'"),
    ({"question": 3, "answer": "#### 3"}, "'question'"),
    ({"question": "q", "answer": "the answer is 3"}, "####"),
    ({"question": "q", "answer": "#### three"}, "not a number"),
    ({"question": "q", "answer": "####"}, "not a number"),
])
def test_malformed_line_names_line_number(tmp_path, bad, match):
    path = _write(tmp_path / "bad.jsonl", [GOOD[0], "", GOOD[1], bad, GOOD[2]])
    with pytest.raises(ValueError, match=match) as info:
        load_gsm8k_jsonl(path)
    assert "bad.jsonl:4:" in str(info.value)


def test_gsm8k_check():
    e = Example(prompt="q\n", target="#### 1,000", answer="1,000")
    assert gsm8k_check("so #### 1000", e)
    assert gsm8k_check("#### $1,000.", e)
    assert gsm8k_check("#### 1000.00", e)
    assert not gsm8k_check("#### 1001", e)
    assert not gsm8k_check("#### 999", e)
    assert not gsm8k_check("1000", e)
    assert not gsm8k_check("#### 1000 apples", e)
    assert not gsm8k_check("#### __import__('os')", e)
    assert gsm8k_check("#### -7", Example("q", "#### -7", "-7"))
