# fastopt developer commands.
#
# `make test`, `make bench` and `make example` set themselves up. They use the interpreter's
# own torch when it has one (the GPU machine has a CUDA torch and no network);
# otherwise they create .venv with the CPU wheel of torch 2.13.0. The
# extension is rebuilt (incrementally, with ninja) whenever a source changes.

PYTHON ?= python3
TORCH_PIN := torch==2.13.0
VENV := .venv
NVCC ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)

HAVE_TORCH := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo yes)
ifeq ($(HAVE_TORCH),yes)
  PY := $(PYTHON)
  ENV_READY :=
else
  PY := $(VENV)/bin/python
  ENV_READY := $(VENV)/.ready
endif

SOURCES := setup.py pyproject.toml $(shell find csrc fastopt -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
BUILT := build/.built-$(subst /,_,$(PY))

# `make bench BENCH_ARGS=--quick` for a short run; see `python -m fastopt.bench -h`.
BENCH_ARGS ?=
EXAMPLE_ARGS ?=

# Optional packages are installed when missing and a registry answers; without
# one (the GPU machine has no network) the step says so and the target goes
# on: the report then skips only its PNG chart.
PIP_TRY := $(PY) -m pip install --quiet --retries 0 --timeout 15

.PHONY: test bench bench-quick bench-readme bench-compare example build cuda-check clean

# Only tests/: the pytest-benchmark files in benchmarks/ are not tests.
test: $(BUILT)
	$(PY) -m pytest tests

bench: $(BUILT)
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PIP_TRY) matplotlib \
		|| echo "matplotlib could not be installed: the report will skip its chart"
	$(PY) -m fastopt.bench $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench BENCH_ARGS="--quick $(BENCH_ARGS)"

# Rewrite README.md's results section from the newest report in benchmarks/results/.
bench-readme: $(BUILT)
	$(PY) -m fastopt.bench.readme

# pytest-benchmark: the first run saves a baseline, later runs compare with the newest saved one.
bench-compare: $(BUILT)
	@$(PY) -c "import pytest_benchmark" 2>/dev/null || $(PY) -m pip install --quiet pytest-benchmark
	$(PY) -m pytest benchmarks/ --benchmark-autosave --benchmark-compare --benchmark-columns=median,iqr,rounds

example: $(BUILT)
	@$(PY) -c "import sklearn" 2>/dev/null || $(PY) -m pip install --quiet scikit-learn
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PIP_TRY) matplotlib \
		|| echo "matplotlib could not be installed: the example will skip its chart"
	$(PY) examples/train_cnn.py $(EXAMPLE_ARGS)

build: $(BUILT)

$(VENV)/.ready:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH_PIN) numpy setuptools wheel ninja pytest
	touch $@

# --no-build-isolation: build against the torch installed here, never a
# downloaded one. --no-deps: torch is already present, so pip needs no network.
$(BUILT): $(SOURCES) $(ENV_READY)
	$(PY) -c "import setuptools, pytest" 2>/dev/null || $(PY) -m pip install --quiet setuptools wheel ninja pytest
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	mkdir -p build && touch $@

# Compile check, with nvcc but no GPU: the torch-free CUDA kernels for sm_80
# and sm_90, and the torch-facing CUDA layer against this torch's headers.
# CI runs it on every change.
cuda-check: $(ENV_READY)
	cmake -S . -B build/cuda-check -DCMAKE_CUDA_COMPILER=$(NVCC) \
		-DFASTOPT_PYTHON="$$($(PY) -c 'import sys; print(sys.executable)')"
	cmake --build build/cuda-check -j2

clean:
	rm -rf build $(VENV) fastopt/_C*.so fastopt/_build_config.py *.egg-info
