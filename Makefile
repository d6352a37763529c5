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

.PHONY: setup demo test test-all bench clean

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

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
