# Two commands do everything on a fresh Debian machine (as root): `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ABS_PY := $(abspath $(PY))
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
OPENCOOD_VERSION := 0.1.19
PYTEST_ARGS ?=

.PHONY: setup demo test lint test-all test-gpu bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@# open3d needs Debian's libusb-1.0-0
	@if ! ldconfig -p | grep -q libusb-1.0.so.0; then \
	  echo "installing libusb-1.0-0 (needed by open3d)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# the CPU wheel, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	@# the peer (OpenCOOD) without its GUI OpenCV; its Cython IoU kernel compiled in place
	$(PIP) install --no-deps opencoodx==$(OPENCOOD_VERSION)
	@cd $$($(PY) -c "import os, importlib.util as u; print(os.path.dirname(u.find_spec('opencood').origin))")/utils && \
	  C_INCLUDE_PATH=$$($(ABS_PY) -c "import numpy; print(numpy.get_include())") \
	  $(abspath $(VENV))/bin/cythonize -i -q box_overlaps.pyx >/dev/null
	$(PY) -c "import torch, open3d, opencood.utils.eval_utils, coperception; print('setup ok: torch', torch.__version__)"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m coperception.cli demo

test: lint
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

# Layers (import-linter: no package imports a layer above it, so no cycle between packages)
# and ruff (pyflakes, bugbear, import order); both configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check coperception tests benchmarks tools
	$(VENV)/bin/lint-imports

# On a CUDA machine (CUDA torch installed first, then `pip install -e '.[dev]'`): the default suite
# plus the GPU tests, with the GPU visible. GPU_PY is that environment's Python.
GPU_PY ?= python3
test-gpu:
	$(GPU_PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu needs a CUDA device')"
	$(GPU_PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
