# Quick start: `make demo` and `make test`. Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-model clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m bitscale.studies.demo

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) benchmarks/quantize_bench.py
	$(PY) benchmarks/kernels_bench.py
	$(PY) benchmarks/kernels_bench_matmul.py

bench-model: $(STAMP)
	$(PY) benchmarks/model_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
