#!/usr/bin/env bash
# One prepared run on a GPU / TPU machine (the device tool's `run`, from the repository root):
# the compiled kernel tests, the cross-backend self-check and the speed benchmarks, each under
# its own time limit, logs under $OUT. The device image has its own JAX; packages it lacks
# (ml-collections, tensorboardX, hypothesis, pytest-xdist) travel as wheels in ./wheels
# (on this host: `pip download --no-deps -d wheels ml-collections==1.1.0 tensorboardX==2.6.5
# hypothesis==6.170.17 pytest-xdist==3.8.0 execnet`, then pass carry=["wheels"]).
#   bash benchmarks/device_run.sh            # everything, about 9 minutes on an H100
set -u
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G "wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD:$PWD/benchmarks
O=${OUT:-/tmp/out}; mkdir -p "$O"
sec() {  # sec LIMIT NAME CMD...: run CMD with a time limit, log to $O/NAME.log, print its tail
  local t=$1 name=$2; shift 2; echo "=== $name (limit ${t}s)"; local s=$SECONDS
  timeout "$t" "$@" > "$O/$name.log" 2>&1; local rc=$?
  echo "--- $name rc=$rc in $((SECONDS - s))s"; tail -n "${TAILN:-40}" "$O/$name.log"; }
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
# Item 4 on hardware: every kernel test's `compiled` case (skipped on a CPU) and the rest.
TAILN=30 sec 240 kernel_tests python3 -m pytest -q -p no:cacheprovider tests/pallas_kernels
TAILN=30 sec 120 selfcheck python3 -m bitscale.selfcheck --json="$O/selfcheck.json"
# Item 6: ratios against a same-run baseline.
TAILN=30 sec 60 kernels python3 benchmarks/kernels_bench.py --repeats 10
TAILN=40 sec 90 matmul python3 benchmarks/kernels_bench_matmul.py --repeats 10
TAILN=25 sec 120 model python3 benchmarks/model_bench.py --configs 100m \
  --policies bf16,mxfp4,nvfp4,fp8 --batch 8 --seq 1024 --repeats 3
