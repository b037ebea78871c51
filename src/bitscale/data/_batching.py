"""Fixed-shape batches (so jitted steps never recompile) and a resumable deterministic stream.

Layout of one row of ``tokens`` (length ``max_len``)::

    BOS prompt... target... EOS PAD PAD ...

Masks are aligned with ``tokens``: ``mask[t] = 1`` marks token ``t`` as a prediction target. With
next-token logits ``logits = model(tokens)``, the loss is ``CE(logits[:, :-1], tokens[:, 1:])``
weighted by ``mask[:, 1:]`` (so BOS, never predicted, drops out of ``full_mask`` automatically).

References:
    nanodo (https://github.com/google-deepmind/nanodo) fixed-shape data pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from bitscale.data._example import Example, Task
from bitscale.data._tokenizer import Tokenizer

LossOn = Literal["answer", "full"]
BATCH_KEYS = ("tokens", "answer_mask", "full_mask", "loss_mask", "prompt", "prompt_mask",
              "length", "prompt_length")


def make_batch(examples: Sequence[Example], tokenizer: Tokenizer, max_prompt_len: int,
               max_len: int, *, truncate: bool = False,
               loss_on: LossOn = "answer") -> dict[str, np.ndarray]:
    """Tokenize `examples` into fixed-shape int32 arrays.

    Returns a dict with
        tokens [B, max_len]: BOS + prompt + target + EOS, right-padded with PAD.
        answer_mask [B, max_len]: 1 on target tokens and EOS.
        full_mask [B, max_len]: 1 on every non-pad position (BOS included).
        loss_mask [B, max_len]: ``answer_mask`` or ``full_mask`` per `loss_on`.
        prompt [B, max_prompt_len]: BOS + prompt, LEFT-padded with PAD (for sampling).
        prompt_mask [B, max_prompt_len]: 1 on the real prompt positions.
        length [B], prompt_length [B]: real lengths in ``tokens`` and ``prompt``.

    Args:
        truncate: if False, an example longer than ``max_len`` (or a prompt longer than
            ``max_prompt_len``, BOS counted) raises ValueError naming its index and length. If True,
            ``tokens`` is cut on the right (EOS may be lost) and ``prompt`` keeps BOS plus the last
            prompt tokens.
    """
    if not examples:
        raise ValueError("make_batch: empty list of examples")
    if max_prompt_len < 1 or max_len < 2:
        raise ValueError(f"make_batch: need max_prompt_len >= 1 and max_len >= 2, got "
                         f"{max_prompt_len}, {max_len}")
    if loss_on not in ("answer", "full"):
        raise ValueError(f"make_batch: loss_on must be 'answer' or 'full', got {loss_on!r}")
    b = len(examples)
    pad = tokenizer.pad_id
    tokens = np.full((b, max_len), pad, np.int32)
    answer_mask = np.zeros((b, max_len), np.int32)
    full_mask = np.zeros((b, max_len), np.int32)
    prompt = np.full((b, max_prompt_len), pad, np.int32)
    prompt_mask = np.zeros((b, max_prompt_len), np.int32)
    length = np.zeros((b,), np.int32)
    prompt_length = np.zeros((b,), np.int32)
    for i, ex in enumerate(examples):
        p_ids = [tokenizer.bos_id] + tokenizer.encode(ex.prompt)
        seq = p_ids + tokenizer.encode(ex.target) + [tokenizer.eos_id]
        if len(p_ids) > max_prompt_len and not truncate:
            raise ValueError(f"make_batch: example {i} has prompt length {len(p_ids)} "
                             f"(BOS included) > max_prompt_len={max_prompt_len}")
        if len(seq) > max_len and not truncate:
            raise ValueError(f"make_batch: example {i} has length {len(seq)} "
                             f"(BOS and EOS included) > max_len={max_len}")
        n = min(len(seq), max_len)
        tokens[i, :n] = seq[:n]
        full_mask[i, :n] = 1
        answer_mask[i, len(p_ids):n] = 1
        length[i] = n
        if len(p_ids) > max_prompt_len:
            p_ids = p_ids[:1] + p_ids[len(p_ids) - max_prompt_len + 1:]
        prompt[i, max_prompt_len - len(p_ids):] = p_ids
        prompt_mask[i, max_prompt_len - len(p_ids):] = 1
        prompt_length[i] = len(p_ids)
    return {
        "tokens": tokens,
        "answer_mask": answer_mask,
        "full_mask": full_mask,
        "loss_mask": answer_mask.copy() if loss_on == "answer" else full_mask.copy(),
        "prompt": prompt,
        "prompt_mask": prompt_mask,
        "length": length,
        "prompt_length": prompt_length,
    }


def prompt_arrays(examples: Sequence[Example], tokenizer: Tokenizer, max_prompt_len: int, *,
                  truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded ``(prompt, prompt_mask)`` int32 [len(examples), max_prompt_len] of the
    examples' prompts (BOS + prompt; targets ignored), as `make_batch` lays them out."""
    stubs = [dataclasses.replace(ex, target="") for ex in examples]
    arrays = make_batch(stubs, tokenizer, max_prompt_len, max_prompt_len + 1, truncate=truncate)
    return arrays["prompt"], arrays["prompt_mask"]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """One fixed-shape batch of prompts from `prompt_batches`.

    Attributes:
        start: index (in the examples) of the batch's first example.
        real: how many rows are real examples; rows ``real:`` repeat the first one and their
            outputs are to be dropped.
        prompt, prompt_mask: int32 [batch_size, max_prompt_len], left-padded.
    """

    start: int
    real: int
    prompt: np.ndarray
    prompt_mask: np.ndarray


def prompt_batches(examples: Sequence[Example], tokenizer: Tokenizer, batch_size: int,
                   max_prompt_len: int, *, truncate: bool = False) -> Iterator[PromptBatch]:
    """The examples' prompts in batches of one shape [batch_size, max_prompt_len] (one
    compilation for a decoder); the last batch is filled with copies of its first example.

    Raises:
        ValueError: no examples, ``batch_size < 1``, or (without ``truncate``) a prompt longer
            than ``max_prompt_len`` (BOS counted).
    """
    examples = list(examples)
    if not examples:
        raise ValueError("prompt_batches: empty list of examples")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"prompt_batches: batch_size must be an integer >= 1, got "
                         f"{batch_size!r}")
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        real = len(chunk)
        prompt, mask = prompt_arrays(chunk + [chunk[0]] * (batch_size - real), tokenizer,
                                     max_prompt_len, truncate=truncate)
        yield PromptBatch(start, real, prompt, mask)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of the stream.

    Attributes:
        arrays: the `make_batch` dict (fixed shapes, int32).
        examples: the source examples (for reward/verifier checks).
        position: index of this batch in the stream; resume after it with
            ``start=batch.next_position``.
    """

    arrays: dict[str, np.ndarray]
    examples: tuple[Example, ...]
    position: int

    @property
    def next_position(self) -> int:
        return self.position + 1


def batches(task: Task | Sequence[Example], split: str, batch_size: int, seed: int,
            tokenizer: Tokenizer, *, max_prompt_len: int, max_len: int, start: int = 0,
            truncate: bool = False, loss_on: LossOn = "answer") -> Iterator[Batch]:
    """Deterministic infinite stream of fixed-shape batches, resumable at any position.

    Batch ``k`` holds stream examples ``k * batch_size ... (k + 1) * batch_size - 1``. For a `Task`,
    stream example ``i`` is ``task.example(split, seed, i)``. For a list of examples (e.g. from
    `load_gsm8k_jsonl`; `split` is then unused), the list is reshuffled every epoch with a
    permutation seeded by (seed, epoch). Either way, batch ``k`` is a pure function of
    (source, split, batch_size, seed, k), so ``batches(..., start=k)`` continues exactly where a
    stream that yielded batches ``0 .. k - 1`` stopped.
    """
    if batch_size < 1 or start < 0 or seed < 0:
        raise ValueError(f"batches: need batch_size >= 1, start >= 0, seed >= 0; got "
                         f"{batch_size}, {start}, {seed}")
    if isinstance(task, Sequence):
        pool = list(task)
        if not pool:
            raise ValueError("batches: empty list of examples")
        perms: dict[int, np.ndarray] = {}

        def get(i: int) -> Example:
            epoch, j = divmod(i, len(pool))
            if epoch not in perms:
                perms.clear()  # keep one or two epochs in memory
                perms[epoch] = np.random.default_rng([seed, epoch]).permutation(len(pool))
            return pool[int(perms[epoch][j])]
    else:
        def get(i: int) -> Example:
            return task.example(split, seed, i)

    position = start
    while True:
        exs = tuple(get(position * batch_size + j) for j in range(batch_size))
        arrays = make_batch(exs, tokenizer, max_prompt_len, max_len, truncate=truncate,
                            loss_on=loss_on)
        yield Batch(arrays=arrays, examples=exs, position=position)
        position += 1
