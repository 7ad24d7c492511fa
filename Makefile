# fastopt developer commands.
#
# `make test` and `make bench` set themselves up. They use the interpreter's
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

# `make bench BENCH_ARGS=--quick` for a short run.
BENCH_ARGS ?=

.PHONY: test bench build cuda-check clean

test: $(BUILT)
	$(PY) -m pytest tests

bench: $(BUILT)
	$(PY) benchmarks/bench_optim.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_ema.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_norm.py $(BENCH_ARGS)
	$(PY) benchmarks/bench_dropout.py $(BENCH_ARGS)

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

# Compile check of the torch-free CUDA kernels for sm_80 and sm_90; needs nvcc
# but no GPU and no torch. CI runs it on every change.
cuda-check:
	cmake -S . -B build/cuda-check -DCMAKE_CUDA_COMPILER=$(NVCC)
	cmake --build build/cuda-check -j2

clean:
	rm -rf build $(VENV) fastopt/_C*.so fastopt/_build_config.py *.egg-info
