"""Tokenizers with one interface: a fixed character-level vocabulary, and a Hugging Face wrapper.

References:
    Hugging Face `tokenizers` (https://huggingface.co/docs/tokenizers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Fixed order: ids are stable across versions as long as characters are only ever appended.
CHARS = ("0123456789" "abcdefghijklmnopqrstuvwxyz" "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
         " \n" "+-*/=#%()<>.,:;?!'\"$_[]{}^&|@~`\\")


@runtime_checkable
class Tokenizer(Protocol):
    """What `make_batch` needs: special ids, `encode` (no specials added) and `decode`."""

    pad_id: int
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int], errors: str = "strict") -> str: ...


def _cut(ids: Iterable[int], pad_id: int, bos_id: int, eos_id: int) -> list[int]:
    """Ids up to (excluding) the first EOS, with PAD and BOS dropped."""
    out = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        if i not in (pad_id, bos_id):
            out.append(i)
    return out


class CharTokenizer:
    """Character-level tokenizer over `CHARS` with PAD=0, BOS=1, EOS=2 (chars start at 3)."""

    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __init__(self) -> None:
        self._ids = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(CHARS)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(CHARS)

    def encode(self, text: str) -> list[int]:
        """Character ids of `text` (no BOS/EOS). Raises ValueError naming an unknown character."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ValueError(f"CharTokenizer: unknown character {c!r} at position "
                             f"{text.index(c)}") from None

    def decode(self, ids: Iterable[int], errors: str = "strict") -> str:
        """Text of `ids`, stopping at the first EOS and skipping PAD/BOS.

        ``errors="replace"`` writes U+FFFD for an id outside the vocabulary (a model whose
        embedding table is larger than the tokenizer can emit one); ``"strict"`` raises.
        """
        if errors not in ("strict", "replace"):
            raise ValueError(f"CharTokenizer.decode: errors must be 'strict' or 'replace', got "
                             f"{errors!r}")
        out = []
        for i in _cut(ids, PAD_ID, BOS_ID, EOS_ID):
            if not len(SPECIAL_TOKENS) <= i < self.vocab_size:
                if errors == "replace":
                    out.append("\ufffd")
                    continue
                raise ValueError(f"CharTokenizer: id {i} out of range [0, {self.vocab_size})")
            out.append(CHARS[i - len(SPECIAL_TOKENS)])
        return "".join(out)


class HFTokenizer:
    """A `tokenizers.Tokenizer` behind the `Tokenizer` interface (no specials added by `encode`)."""

    def __init__(self, tokenizer, *, pad_id: int, bos_id: int, eos_id: int) -> None:
        self.tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], errors: str = "strict") -> str:
        """Text of `ids`, stopping at the first EOS and skipping PAD/BOS (``errors``: unused,
        the Hugging Face tokenizer decodes every id of its vocabulary)."""
        return self.tokenizer.decode(_cut(ids, self.pad_id, self.bos_id, self.eos_id),
                                     skip_special_tokens=False)


_BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>")
_EOS_CANDIDATES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "<|eot_id|>")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "<|finetune_right_pad_id|>")


def _config_token(config: dict, key: str) -> str | None:
    tok = config.get(key)
    if isinstance(tok, dict):
        tok = tok.get("content")
    return tok if isinstance(tok, str) else None


def load_hf_tokenizer(path: str | os.PathLike, *, bos_token: str | None = None,
                      eos_token: str | None = None, pad_token: str | None = None) -> HFTokenizer:
    """Load ``path/tokenizer.json`` as an `HFTokenizer`.

    Special tokens come from the arguments, else ``path/tokenizer_config.json``, else common names
    (``<s>``, ``</s>``, ``<|begin_of_text|>``, ...). PAD falls back to EOS when absent; masks from
    `make_batch` do not depend on PAD being distinct.

    Raises:
        ValueError: if BOS or EOS cannot be found in the vocabulary.
    """
    from tokenizers import Tokenizer as _HF  # local: keep `import bitscale.data` light

    tok = _HF.from_file(os.path.join(os.fspath(path), "tokenizer.json"))
    config: dict = {}
    cfg_path = os.path.join(os.fspath(path), "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)

    def resolve(given: str | None, key: str, candidates: Sequence[str]) -> int | None:
        names = [given] if given is not None else [_config_token(config, key), *candidates]
        for name in names:
            if name is not None and (i := tok.token_to_id(name)) is not None:
                return i
        if given is not None:
            raise ValueError(f"load_hf_tokenizer: {key} {given!r} not in the vocabulary of {path}")
        return None

    bos = resolve(bos_token, "bos_token", _BOS_CANDIDATES)
    eos = resolve(eos_token, "eos_token", _EOS_CANDIDATES)
    pad = resolve(pad_token, "pad_token", _PAD_CANDIDATES)
    if bos is None or eos is None:
        raise ValueError(f"load_hf_tokenizer: cannot find BOS/EOS tokens in {path}; pass "
                         f"bos_token= and eos_token=")
    return HFTokenizer(tok, pad_id=eos if pad is None else pad, bos_id=bos, eos_id=eos)


def load_tokenizer(spec: str | os.PathLike = "char", **special_tokens: str) -> Tokenizer:
    """The tokenizer a run names: ``"char"`` is the built-in `CharTokenizer`; anything else is a
    Hugging Face ``tokenizer.json`` or the directory holding it (`load_hf_tokenizer`, which
    takes ``bos_token`` / ``eos_token`` / ``pad_token``).

    Raises:
      FileNotFoundError: no tokenizer.json at the path.
    """
    if isinstance(spec, str) and spec == "char":
        if special_tokens:
            raise ValueError(f"the char tokenizer has fixed special tokens; got {special_tokens}")
        return CharTokenizer()
    path = os.fspath(spec)
    directory = os.path.dirname(path) if path.endswith(".json") else path
    if not os.path.exists(os.path.join(directory, "tokenizer.json")):
        raise FileNotFoundError(f"no tokenizer.json at {os.path.join(directory, 'tokenizer.json')}"
                                " (load_tokenizer takes 'char' or a Hugging Face tokenizer "
                                "directory / tokenizer.json)")
    return load_hf_tokenizer(directory, **special_tokens)
