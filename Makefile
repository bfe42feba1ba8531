# Two commands do all the set-up on a fresh machine (Python 3.10+, CPU is enough):
#   make demo   set up, then run the main job (python -m dustin demo)
#   make test   set up, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch first, pinned: a looser requirement pulls a multi-GB CUDA build (see DEVELOPERS.md).
TORCH ?= torch==2.13.0

.PHONY: setup test test-all demo bench clean
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

demo: setup
	$(PY) -m dustin demo

clean:
	rm -rf $(VENV) build *.egg-info
