"""bitscale.studies: the experiments and reports built on the library (not imported by it).

Each study module has ``run(...) -> results`` (does the work, returns JSON-able numbers plus
the objects later sections reuse) and ``section(results) -> markdown`` (writes its plots next to
the results), and a command line through the one absl launcher (`bitscale._cli.launch_study`):

* `demo` -- ``make demo``: every study below on the demo model, one report;
* `precision` -- the same model trained under each precision recipe, accuracy and step time;
* `tts` -- best-of-N sampling, pass@k, votes and verifiers (of several models, or of one
  checkpoint from the command line);
* `repro` -- greedy or sampled outputs across precisions, batch sizes and reduction orders,
  and logit-level distances;
* `rl` -- GRPO / MC-GRPO runs in low precision from one trained model;
* `formats` -- quantization error of every named format on LLM-like tensors;
* `recipes`, `stability`, `laws_sweep`, `dco` -- longer than the demo's budget, launched by
  ``experiments/`` recipes and recorded in ``docs/``: 4-bit training recipes vs BF16; divergence
  over a seed x learning-rate grid by precision; a sweep of small runs the precision scaling
  laws are fitted to; DCO vs cross-entropy pass@N over training;
* `report` -- the markdown-table and plot helpers they share.

Run one with ``python -m bitscale.studies.<name> --help``.
"""
