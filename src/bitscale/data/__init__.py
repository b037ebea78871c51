"""Verifiable reasoning data: built-in tasks, GSM8K JSONL, tokenizers and fixed-shape batching.

Every built-in task is a frozen dataclass with ``generate(split, n, seed)`` (deterministic; train
and test disjoint by a hash of the canonical problem) and an exact ``check(completion, example)``
that reads the answer after the last ``####``.
"""

from bitscale.data._arithmetic import ARITHMETIC_OPS, ARITHMETIC_STYLES, Arithmetic, worked_steps
from bitscale.data._batching import (
    BATCH_KEYS,
    Batch,
    PromptBatch,
    batches,
    make_batch,
    prompt_arrays,
    prompt_batches,
)
from bitscale.data._countdown import COUNTDOWN_OPS, Countdown, check_countdown
from bitscale.data._example import (
    ANSWER_MARK,
    SPLITS,
    Example,
    Task,
    check_int_answer,
    extract_answer,
    parse_int,
    split_of,
)
from bitscale.data._expr import parse_expression
from bitscale.data._gsm8k import gsm8k_check, load_gsm8k_jsonl
from bitscale.data._modular import MODULAR_OPS, ModularArithmetic
from bitscale.data._tasks import TASKS, make_task
from bitscale.data._tokenizer import (
    BOS_ID,
    CHARS,
    EOS_ID,
    PAD_ID,
    CharTokenizer,
    HFTokenizer,
    Tokenizer,
    load_hf_tokenizer,
    load_tokenizer,
)

__all__ = [
    "ANSWER_MARK", "ARITHMETIC_OPS", "ARITHMETIC_STYLES", "BATCH_KEYS", "BOS_ID", "CHARS", "COUNTDOWN_OPS", "EOS_ID",
    "MODULAR_OPS", "PAD_ID", "SPLITS", "Arithmetic", "Batch", "CharTokenizer", "Countdown",
    "Example", "HFTokenizer", "ModularArithmetic", "PromptBatch", "Task", "Tokenizer", "batches",
    "check_countdown", "check_int_answer", "extract_answer", "gsm8k_check", "load_gsm8k_jsonl",
    "load_hf_tokenizer", "load_tokenizer", "make_batch", "parse_expression", "parse_int", "prompt_arrays", "prompt_batches",
    "split_of", "worked_steps", "TASKS", "make_task",
]
