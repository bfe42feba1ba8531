# Two commands do all the set-up on a fresh machine (Python 3.10+, CPU is enough):
#   make demo   set up, then run the main job (python -m dustin demo)
#   make test   set up, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch first, pinned: a looser requirement pulls a multi-GB CUDA build (see DEVELOPERS.md).
TORCH ?= torch==2.13.0

.PHONY: setup test test-all test-tensorrt demo bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

# The TensorRT build check, no GPU needed: a separate venv (.venv-trt: torch 2.14.1 + torch-tensorrt-rtx 2.14.0,
# ~6 GB, ~4 min to build the first time), then engines built and serialised for a tiny pair's verify step, and the
# lowering / cache I/O tests under torch 2.14 (the GPU numerics tests skip without CUDA).
VENV_TRT ?= .venv-trt
test-tensorrt:
	bash scripts/tensorrt/setup-venv.sh $(VENV_TRT)
	$(VENV_TRT)/bin/python scripts/tensorrt/check_engines.py
	$(VENV_TRT)/bin/python -m pytest -q -rs tests/kernels/test_lowering.py tests/tensorrt

demo: setup
	$(PY) -m dustin demo

clean:
	rm -rf $(VENV) $(VENV_TRT) build *.egg-info
