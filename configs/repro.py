"""Reproducibility study config (`python -m bitscale.studies.repro --config=configs/repro.py
--workdir=/tmp/repro [--checkpoint=<bitscale.train workdir>]`).

``run`` is the tiny training config (configs/tiny.py: model, policy, data, optimizer). Without
``--checkpoint`` the model is trained for ``run.train.steps`` steps into ``<workdir>/train``
(``train_model``; a rerun reuses it) or, with ``--config.train_model=False``, randomly
initialized (a smoke run whose greedy outputs are noise). The grid crosses ``policies`` x
``orders`` x ``acc_dtypes`` x ``batch_sizes`` (`bitscale.studies.repro.make_grid`); every cell is
compared with the ``reference`` cell. The defaults (150 training steps, 36 cells, 32 problems)
take about 6 minutes on 2 CPU cores, mostly compiling one decoder per cell; the 150-step tiny
model does not solve the problems yet (accuracy 0), so the study measures how its outputs
diverge, not accuracy spread. Add ``"bfloat16"`` to ``grid.acc_dtypes`` to emulate hardware
that keeps bfloat16 partial sums.

References:
  Yuan et al., "Give Me FP32 or Give Me Death? Challenges and Solutions for Reproducible
    Reasoning", arXiv:2506.09501.
"""

from __future__ import annotations

import ml_collections

from bitscale.config_file import load_module, sibling

_tiny = load_module(sibling(__file__, "tiny.py"))


def get_config() -> ml_collections.ConfigDict:
    """The tiny model and a small grid (locked)."""
    cfg = ml_collections.ConfigDict()
    cfg.run = _tiny.get_config()          # the bitscale.train config of the model
    cfg.run.train.steps = 150
    cfg.run.train.checkpoint_every = 150
    cfg.run.train.progress = False
    cfg.train_model = True                # no --checkpoint: train run.train.steps steps

    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.split = "test"
    cfg.eval.num_problems = 32
    cfg.eval.seed = 1
    cfg.eval.max_prompt_len = 24          # = run.data.max_prompt_len
    cfg.eval.max_new_tokens = 64
    cfg.eval.strategy = "greedy"          # or a sampling strategy: "temperature:1.0", "top_p:0.9"
    cfg.eval.sample_seed = 0              # problem i samples with fold_in(key(seed), i)

    cfg.grid = ml_collections.ConfigDict()
    cfg.grid.policies = ("fp32", "bf16", "fp16", "layercast", "fp8", "fp32_batch_invariant")
    cfg.grid.orders = ("native", "pairwise", "split_k:4")   # "sequential" is slower
    cfg.grid.acc_dtypes = ("float32",)
    cfg.grid.batch_sizes = (1, 8)

    cfg.reference = ml_collections.ConfigDict()
    cfg.reference.policy = "fp32"
    cfg.reference.batch_size = 1
    cfg.reference.order = "native"
    cfg.reference.acc_dtype = "float32"
    cfg.lock()
    return cfg
