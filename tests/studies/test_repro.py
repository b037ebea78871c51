"""`bitscale.studies.repro`: measured divergence, report files, launcher and errors."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import bitscale.nn as bn
from bitscale import data as bdata
from bitscale import repro as brepro
from bitscale.config_file import load_module
from bitscale.studies import repro
from bitscale.studies.report import parse_markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_config(name: str):
    mod = load_module(ROOT / "configs" / f"{name}.py")
    return mod


TINY = load_config("tiny").TINY
# Random init with a wide initializer: greedy outputs vary from token to token (not one
# repeated id) and logit gaps are small enough for precision to matter.
SMALL = dataclasses.replace(TINY, hidden_size=64, intermediate_size=128, num_layers=1,
                            vocab_size=128, initializer_range=0.2)


@pytest.fixture(scope="module")
def study():
    model = bn.Llama(SMALL, "fp32", rngs=nnx.Rngs(0))
    task, tok = bdata.Arithmetic(digits=2), bdata.CharTokenizer()
    grid = [repro.Cell("bf16", 4), repro.Cell("bf16", 4, "pairwise", "bfloat16"),
            repro.Cell("fp32_batch_invariant", 1), repro.Cell("fp32_batch_invariant", 3)]
    reference = repro.Cell("fp32_batch_invariant", 1)  # in the grid: evaluated once
    result = repro.run(model, task, tok, task.generate("test", 6, 0), grid,
                             reference=reference, max_prompt_len=24, max_new_tokens=12)
    return result


def test_bf16_diverges_and_batch_invariant_fp32_does_not(study):
    cells = {c["cell"]: c for c in study["cells"]}
    assert set(cells) == {"bf16/native/b4", "bf16/pairwise@bfloat16/b4",
                          "fp32_batch_invariant/native/b1", "fp32_batch_invariant/native/b3"}
    first = np.asarray(cells["bf16/pairwise@bfloat16/b4"]["first_divergence"])
    assert (first >= 0).any()                                  # measured: bf16 diverges
    assert study["by_policy"]["bf16"]["diverged_fraction"] > 0  # ... across orders
    bi = study["by_config"]["fp32_batch_invariant/native"]
    assert len(bi["cells"]) == 2 and bi["diverged_fraction"] == 0.0
    assert bi["diverged_from_reference"] == 0.0
    assert bi["accuracy"]["std"] == 0.0 and bi["length"]["avg_std"] == 0.0
    assert cells["fp32_batch_invariant/native/b3"]["first_divergence"] == [-1] * 6
    outs = study["reference"]
    assert outs["cell"] == "fp32_batch_invariant/native/b1" and len(outs["lengths"]) == 6
    assert len(study["curves"]["bf16"]) == 12 and study["curves"]["fp32_batch_invariant"] == [
        0.0] * 12
    # Logit-level distances (teacher forced on the reference's outputs): zero for the
    # batch-invariant cells, positive for bf16; the reference's own row is exactly zero.
    cells = {c["cell"]: c for c in study["cells"]}
    for name in ("fp32_batch_invariant/native/b1", "fp32_batch_invariant/native/b3"):
        d = cells[name]["logits"]
        assert d["mean_kl"] == 0.0 and d["max_abs"] == 0.0 and d["argmax_flips"] == 0.0
    bf = cells["bf16/pairwise@bfloat16/b4"]["logits"]
    assert bf["mean_kl"] > 0 and bf["max_abs"] > 0
    assert bf["positions"] == sum(study["reference"]["lengths"])
    md = repro.section(study)
    assert "mean KL" in md and "`fp32_batch_invariant` over 2 cell(s): bit-identical" in md


def test_report_files(study, tmp_path):
    paths = repro.write_report(study, str(tmp_path), intro="test run")
    assert pathlib.Path(paths["md"]).read_text() == repro.section(study, intro="test run")
    assert json.loads(pathlib.Path(paths["json"]).read_text())["n_problems"] == 6
    md = pathlib.Path(paths["md"]).read_text()
    rows = parse_markdown_table(md)
    assert [r["cell"] for r in rows][0] == "`bf16/native/b4`" and "Std@Acc" in md
    assert pathlib.Path(paths["png"]).read_bytes()[:4] == b"\x89PNG"


def test_grid_and_cell_errors():
    grid = repro.make_grid(["fp32", "bf16"], [1, 8], ["native", "split_k:2"],
                           ["float32", "bfloat16"])
    assert len(grid) == 12 and grid[0].name == "fp32/native/b1"  # native only with float32
    assert repro.Cell("fp16", 2, "split_k:2", "bfloat16").name == "fp16/split_k:2@bfloat16/b2"
    with pytest.raises(ValueError, match="valid orders"):
        repro.Cell("fp32", 1, "reversed")
    with pytest.raises(ValueError, match="unknown precision policy"):
        repro.Cell("fp33", 1)
    with pytest.raises(ValueError, match="emulated order"):
        repro.Cell("fp32", 1, "native", "bfloat16")
    with pytest.raises(ValueError, match="batch_size"):
        repro.Cell("fp32", 0)
    with pytest.raises(ValueError, match="grid is empty"):
        repro.run(None, None, None, [], [], max_prompt_len=4, max_new_tokens=2)
    with pytest.raises(TypeError, match="Cell objects"):
        repro.run(None, None, None, [], ["fp32/native/b1"], max_prompt_len=4, max_new_tokens=2)


def test_config_runner_and_checkpoint(tmp_path):
    """run_from_config end to end (random init, one cell), and restoring a bitscale.train
    checkpoint into the config's model."""
    from bitscale import train

    cfg = load_config("repro").get_config()
    with pytest.raises(AttributeError):
        cfg.grid.batch_size = (1,)  # locked: a misspelt key fails
    cfg.train_model = False
    cfg.eval.num_problems, cfg.eval.max_new_tokens = 2, 3
    cfg.grid.policies, cfg.grid.orders, cfg.grid.batch_sizes = ("fp32",), ("native",), (2,)
    cfg.reference.batch_size = 2
    result = repro.run_from_config(cfg, str(tmp_path / "study"), progress=None)
    assert [c["cell"] for c in result["cells"]] == ["fp32/native/b2"]
    assert result["cells"][0]["diverged_fraction"] == 0.0
    assert sorted(os.listdir(tmp_path / "study")) == ["repro.json", "repro.md",
                                                      "repro_divergence.png"]
    # a checkpoint in bitscale.train's format (TrainState through Checkpointer)
    run = train.RunConfig.of(cfg.run)
    _, state, _ = train.create_train_state(
        bn.Llama(run.model, run.policy, rngs=nnx.Rngs(run.seed)),
        train.make_optimizer(run.optim, run.train.steps), bn.make_mesh())
    params = jax.tree.map(lambda x: x + 1.0, state.params)
    ckpt = train.Checkpointer(str(tmp_path / "run" / "checkpoints"))
    ckpt.save(7, state._replace(params=params), {"position": 0})
    ckpt.wait()
    ckpt.close()
    model = repro.load_model(cfg.run, str(tmp_path / "run"))
    got = jax.tree.leaves(nnx.state(model, nnx.Param))
    for a, b in zip(got, jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(train.CheckpointError, match="does not exist"):
        repro.load_model(cfg.run, str(tmp_path / "missing"))


def test_launcher_rejects_misspelt_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bitscale.studies.repro",
         f"--config={ROOT / 'configs' / 'repro.py'}",
         f"--workdir={tmp_path}", "--config.grid.batch_size=(1,)"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "batch_size" in proc.stderr


def test_sampled_study_keys_each_problem_not_each_row():
    """Sampled decoding: problem i draws from fold_in(key, i) whatever the batch, so the
    batch-invariant cells agree token for token, and the samples are not the greedy outputs."""
    model = bn.Llama(SMALL, "fp32", rngs=nnx.Rngs(0))
    task, tok = bdata.Arithmetic(digits=2), bdata.CharTokenizer()
    examples = task.generate("test", 5, 0)
    grid = [repro.Cell("fp32_batch_invariant", 1), repro.Cell("fp32_batch_invariant", 3)]
    result = repro.run(model, task, tok, examples, grid, reference=grid[0],
                             max_prompt_len=24, max_new_tokens=10, strategy="temperature:1.0",
                             seed=3)
    assert result["decoding"] == "Temperature(t=1.0)"
    assert [c["diverged_fraction"] for c in result["cells"]] == [0.0, 0.0]
    inv = brepro.with_policy(model, "fp32_batch_invariant")
    kw = dict(batch_size=3, max_prompt_len=24, max_new_tokens=10)
    s1, _ = repro.greedy_outputs(inv, examples, tok, strategy="temperature:1.0", seed=3, **kw)
    s2, _ = repro.greedy_outputs(inv, examples[::-1], tok, strategy="temperature:1.0", seed=3,
                                 **kw)
    g, _ = repro.greedy_outputs(inv, examples, tok, **kw)
    assert not np.array_equal(s1, g)
    # the same problems in another order get other keys (key = position in the list)...
    assert not np.array_equal(s1, s2[::-1])
    # ...and the same list at another batch size gets the same samples
    s3, _ = repro.greedy_outputs(inv, examples, tok, strategy="temperature:1.0", seed=3,
                                 batch_size=1, max_prompt_len=24, max_new_tokens=10)
    np.testing.assert_array_equal(s1, s3)


def test_teacher_forced_log_probs_match_the_sampler():
    """The teacher-forced distribution at each sampled token gives the log-prob the sampler
    recorded while decoding with its KV cache (an independent code path)."""
    from bitscale import sampling

    model = bn.Llama(SMALL, "fp32", rngs=nnx.Rngs(1))
    tok = bdata.CharTokenizer()
    examples = bdata.Arithmetic(digits=2).generate("test", 3, 0)
    pb = next(bdata.prompt_batches(examples, tok, 3, 24))
    out = sampling.sample(model, pb.prompt, pb.prompt_mask, strategy=sampling.parse_strategy(
        "temperature:1.0"), key=jax.random.split(jax.random.key(0), 3), max_new_tokens=9,
        eos_id=tok.eos_id, pad_id=tok.pad_id)
    toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
    lp, mask = repro.teacher_forced_log_probs(model, examples, tok, (toks, lens), batch_size=2,
                                              max_prompt_len=24)
    assert lp.shape == (3, 9, SMALL.vocab_size) and mask.sum() == lens.sum()
    picked = np.take_along_axis(lp, toks[..., None], -1)[..., 0]
    np.testing.assert_allclose(picked[mask], np.asarray(out.log_probs)[mask], atol=2e-5)


def test_batch_split_k_cell_depends_on_the_batch():
    """``batch_split_k``: the split count follows the product's rows, so fp32 logits of one
    sequence change between batch 1 and 16, within float32 rounding."""
    cell1 = repro.Cell("fp32", 1, "batch_split_k")
    assert cell1.name == "fp32/batch_split_k/b1"
    model = bn.Llama(SMALL, "fp32", rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(0), (16, 1), 3, 90)
    forward = nnx.jit(lambda m, t: m(t))
    one = bn.with_policy(model, cell1.make_policy())
    a = np.asarray(forward(one, x[:1]))[0]
    b = np.asarray(forward(one, x))[0]
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="native"):
        repro.Cell("fp32", 1, "batch_split_q")
