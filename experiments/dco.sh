#!/usr/bin/env bash
# DCO vs cross-entropy: pass@16 against training steps on a finite pool (issue 17 item 3).
# Trains configs/dco.py with `ce` and `dco16` for 3 seeds (6 runs of 1500 steps) and measures
# 6 checkpoints of each on 256 held-out problems x 16 samples; writes runs/dco/report.md,
# results.json and the plots. Recorded in docs/dco.md (~25 min on a shared 2-core CPU).
# Re-render the report without training: python -m bitscale.studies.dco --from_json=runs/dco/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m bitscale.studies.dco --config=configs/dco.py --out=runs/dco \
  --steps=1500 --seeds=0,1,2 --n=16 --problems=256 --evals=6 "$@"
