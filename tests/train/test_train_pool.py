"""Finite training pool (``cfg.data.train_examples``): a pool run sees only the pool's examples,
every epoch a permutation of it; a killed pool run resumes at the same place in the pool; bad
values are refused before anything is built; a resumed run may not change the pool size.

The loop runs with its step replaced by a no-op (what is tested is the data the loop feeds; the
real step compiles in seconds per run, and `tests/studies/test_dco.py` trains on a pool with it).
Runs: the tiny model, 4 sequences a step, a pool of 8 (two steps an epoch).
"""

from __future__ import annotations

import pathlib
from collections import Counter

import numpy as np
import pytest

from bitscale import data as bdata
from bitscale.config_file import load_module
from bitscale.train import CheckpointError, train
from bitscale.train import _loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
POOL, BATCH, STEPS = 8, 4, 6


def pool_config(**data):
    cfg = load_module(ROOT / "configs" / "tiny.py").get_config()
    with cfg.unlocked():
        cfg.data.train_examples = data.pop("train_examples", POOL)
        cfg.data.ops, cfg.data.style = ("+",), "compact"  # short rows: 2-digit addition
        cfg.data.max_len = 48
        for k, v in data.items():
            cfg.data[k] = v
    cfg.train.steps = STEPS
    cfg.train.batch_size = BATCH
    cfg.train.checkpoint_every = 2
    cfg.train.log_every = 2
    cfg.train.progress = False
    cfg.optim.warmup_steps = 1
    return cfg


def recorded_train(cfg, workdir) -> tuple[dict, list[tuple]]:
    """``train(cfg, workdir)`` with a no-op step; returns its result and the examples of every
    batch the loop drew."""
    seen: list[tuple] = []
    original = bdata.batches

    def recording(*args, **kwargs):
        for batch in original(*args, **kwargs):
            seen.append(batch.examples)
            yield batch

    def no_op_step(*args, **kwargs):
        zero = np.float32(0.0)
        return lambda state, batch: (state, {"loss": zero, "grad_norm": zero, "lr": zero,
                                             "tokens": zero})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_loop.bdata, "batches", recording)
        mp.setattr(_loop, "make_train_step", no_op_step)
        return train(cfg, str(workdir)), seen


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pool")
    result, seen = recorded_train(pool_config(), workdir)
    return workdir, result, seen


def test_pool_run_sees_only_pool_examples(pool_run):
    _, result, seen = pool_run
    cfg = pool_config()
    pool = bdata.make_task(cfg.data).generate("train", POOL, int(cfg.seed))
    assert result["step"] == STEPS and len(seen) == STEPS
    per_epoch = POOL // BATCH
    for e in range(STEPS // per_epoch):  # each epoch is a permutation of the pool
        epoch = [ex for b in seen[e * per_epoch:(e + 1) * per_epoch] for ex in b]
        assert Counter(epoch) == Counter(pool)
    assert seen[:per_epoch] != seen[per_epoch:2 * per_epoch]  # reshuffled between epochs


def test_killed_pool_run_resumes_at_the_same_place(pool_run, tmp_path):
    _, _, full = pool_run
    cfg = pool_config()
    cfg.train.stop_after = 3  # mid-epoch; checkpoint 2 on disk, the restart redoes 3..6
    part, first = recorded_train(cfg, tmp_path)
    assert part["stopped"] and first == full[:3]
    rest, second = recorded_train(pool_config(), tmp_path)
    assert rest["resumed_from"] == 2 and second == full[2:]


def test_resume_with_another_pool_size_fails(pool_run):
    workdir, _, _ = pool_run
    with pytest.raises(CheckpointError, match="train_examples"):
        train(pool_config(train_examples=POOL * 2), str(workdir))


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_bad_pool_size_is_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="data.train_examples must be an int >= 0"):
        train(pool_config(train_examples=bad), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_zero_or_absent_keeps_the_infinite_stream():
    task = bdata.make_task(pool_config().data)
    assert _loop.train_source(task, {"split": "train"}, 0) is task
    assert _loop.train_source(task, {"split": "train", "train_examples": 0}, 0) is task
    assert len(_loop.train_source(task, {"split": "train", "train_examples": 3}, 0)) == 3
