"""GSM8K-format JSONL loading and the exact final-answer checker.

References:
    Cobbe et al., "Training Verifiers to Solve Math Word Problems", arXiv:2110.14168
    (https://github.com/openai/grade-school-math).
"""

from __future__ import annotations

import functools
import json
import os
import re
from decimal import Decimal, InvalidOperation

from bitscale.data._example import ANSWER_MARK, Example, extract_answer

_NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")
_CALC_RE = re.compile(r"<<[^<>]*>>")


def normalize_number(text: str | None) -> Decimal | None:
    """A GSM8K final answer as an exact `Decimal` ("1,000", "$5", "7." accepted), else None."""
    if text is None:
        return None
    t = text.strip().replace(",", "").removeprefix("$").rstrip(".")
    if not _NUMBER_RE.match(t) or len(t) > 64:
        return None
    try:
        return Decimal(t)
    except InvalidOperation:
        return None


def gsm8k_check(completion: str, example: Example) -> bool:
    """True iff the number after the last ``####`` equals ``example.answer`` exactly."""
    got, want = normalize_number(extract_answer(completion)), normalize_number(example.answer)
    return got is not None and want is not None and got == want


def _line_error(path: str | os.PathLike, lineno: int, why: str) -> ValueError:
    return ValueError(f"{path}:{lineno}: {why}")


def load_gsm8k_jsonl(path: str | os.PathLike, *, strip_calculator: bool = False) -> list[Example]:
    """Read GSM8K JSONL (one ``{"question": ..., "answer": "... #### n"}`` object per line).

    Blank lines are skipped. ``prompt`` is the question plus a newline, ``target`` the reference
    solution (``<<...>>`` calculator annotations removed if `strip_calculator`), ``answer`` the
    final number.

    Raises:
        ValueError: naming the file and 1-based line number of a malformed line.
    """
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            bad = functools.partial(_line_error, path, lineno)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise bad(f"invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise bad(f"expected a JSON object, got {type(obj).__name__}")
            for key in ("question", "answer"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise bad(f"missing or non-string/empty field {key!r}")
            question, solution = obj["question"].strip(), obj["answer"].strip()
            if ANSWER_MARK not in solution:
                raise bad(f"answer has no {ANSWER_MARK!r} final-answer marker")
            final = extract_answer(solution)
            if normalize_number(final) is None:
                raise bad(f"final answer {final!r} is not a number")
            if strip_calculator:
                solution = _CALC_RE.sub("", solution)
            examples.append(Example(prompt=question + "\n", target=solution, answer=final))
    return examples
