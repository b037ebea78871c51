"""Launcher: N samples per held-out problem from a trained model, scored, with the TTS curves.

    python -m bitscale.sample --config=configs/demo.py --checkpoint=runs/demo/fp32 \\
        --workdir=/tmp/tts --n=64 --problems=64 [--strategy=top_p:0.95] [--policy=bf16]

Writes ``<workdir>/samples.jsonl`` (one object per problem: prompt, reference answer, the N
completions, their correctness, weak-verifier verdicts and log-probs), ``<workdir>/curves.json``
(`bitscale.tts_study.analyze`: pass@k with bootstrap bands, power-law fit, majority / log-prob
vote / verifier accuracy against k, the imperfect-verifier limit and K*), ``<workdir>/tts.md`` and
its PNG plots. ``--checkpoint`` is a `bitscale.train` workdir (or its checkpoints directory)
trained with ``--config``; ``--policy`` samples under another precision policy.
"""

from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from bitscale import data as bdata
from bitscale import tts_study
from bitscale._cli import quiet_library_logs
from bitscale.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "The training get_config() file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "bitscale.train workdir (or checkpoints dir) to sample from.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_POLICY = flags.DEFINE_string("policy", None, "Precision policy to sample under "
                              "(default: the config's).")
_N = flags.DEFINE_integer("n", 64, "Samples per problem.")
_PROBLEMS = flags.DEFINE_integer("problems", 64, "Held-out problems.")
_SPLIT = flags.DEFINE_enum("split", "test", list(bdata.SPLITS), "Problem split.")
_STRATEGY = flags.DEFINE_string("strategy", "temperature:1.0", "Sampling strategy.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None,
                                "Tokens per sample (default: data.max_len - 2).")
_COMPLETENESS = flags.DEFINE_float("completeness", 0.9, "Imperfect verifier completeness.")
_SOUNDNESS = flags.DEFINE_float("soundness", 0.9, "Imperfect verifier soundness.")
_FP_COST = flags.DEFINE_float("fp_cost", 1.0, "Cost of an accepted wrong answer (for K*).")
_CHUNK = flags.DEFINE_integer("chunk_size", None, "Samples decoded at once (default: all N).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling and verifier seed.")
flags.mark_flags_as_required(["config", "workdir", "checkpoint"])


def run(cfg, checkpoint: str, workdir: str, settings: tts_study.TTSSettings, *,
        problems: int, split: str = "test", policy: str | None = None,
        step: int | None = None, max_new_tokens: int | None = None) -> dict:
    """Samples, scores and writes everything; returns `tts_study.analyze`'s dict."""
    if problems < 1:
        raise ValueError(f"problems must be >= 1, got {problems}")
    model, step = loop.restore_model(cfg, checkpoint, step, policy=policy)
    task = loop.make_task(cfg)
    tok = bdata.CharTokenizer()
    examples = task.generate(split, problems, int(cfg.seed))
    max_new = int(max_new_tokens or int(cfg.data.max_len) - 2)
    logging.info("sampling %d x %d from %s (step %d) under %s", problems, settings.n, checkpoint,
                 step, model.policy.name)
    samples = tts_study.collect(model, examples, task, tok, settings=settings,
                                max_prompt_len=int(cfg.data.max_prompt_len),
                                max_new_tokens=max_new)
    curves = tts_study.analyze(samples, settings)
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for i, ex in enumerate(examples):
            f.write(json.dumps({
                "prompt": ex.prompt, "answer": ex.answer,
                "completions": samples["completions"][i],
                "correct": samples["correct"][i].tolist(), "weak": samples["weak"][i].tolist(),
                "seq_logp": samples["seq_logp"][i].tolist(),
                "finished": samples["finished"][i].tolist()}) + "\n")
    curves = {**curves, "checkpoint": os.path.abspath(checkpoint), "step": step,
              "policy": model.policy.name, "strategy": settings.strategy}
    (out / "curves.json").write_text(json.dumps(curves, indent=1))
    text = tts_study.section({model.policy.name: curves}, out, settings, problems=problems,
                             heading="#")
    (out / "tts.md").write_text(text)
    return curves


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_library_logs()
    settings = tts_study.TTSSettings(
        n=_N.value, strategy=_STRATEGY.value, completeness=_COMPLETENESS.value,
        soundness=_SOUNDNESS.value, fp_cost=_FP_COST.value, chunk_size=_CHUNK.value,
        seed=_SEED.value)
    curves = run(_CONFIG.value, _CHECKPOINT.value, _WORKDIR.value, settings,
                 problems=_PROBLEMS.value, split=_SPLIT.value, policy=_POLICY.value,
                 step=_STEP.value, max_new_tokens=_MAX_NEW.value)
    logging.info("pass@1 %.3f, pass@%d %.3f, majority@%d %.3f, K* %d -> %s", curves["pass1"],
                 settings.n, curves["coverage"][-1], settings.n, curves["majority"][-1],
                 curves["k_star"], _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
