# cri-resource-manager: developer and CI entry points.
# `make demo` and `make test` work on a fresh Debian 12 machine as root: they
# install the Debian packages and the Python virtualenv they need.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all deps venv generate check-generated test unit e2e packaging-test demo bench lint \
        install deb rpm clean

all: test

# --- environment ---------------------------------------------------------

$(VENV)/.stamp: requirements/runtime.lock requirements/dev.lock setup.cfg
	scripts/ensure-deps.sh venv
	$(PYTHON) -m venv $(VENV) || (rm -rf $(VENV); /usr/bin/python3 -m venv $(VENV))
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.stamp

deps:
	scripts/ensure-deps.sh venv e2e

# --- generated CRI modules -----------------------------------------------

generate: venv
	$(PY) -m cri_resmgr.cri.generate
	$(PY) -m cri_resmgr.config --write-conf etc/cri-resmgr/cri-resmgr.conf --write-docs docs/configuration.md

check-generated: venv
	$(PY) -m cri_resmgr.cri.generate --check
	$(PY) -m cri_resmgr.config --check-conf etc/cri-resmgr/cri-resmgr.conf --check-docs docs/configuration.md

# --- tests ---------------------------------------------------------------

test: deps venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

unit: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/unit

e2e: deps venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests/e2e

lint: venv
	$(VENV)/bin/ruff check cri_resmgr tests harness bench
	$(VENV)/bin/ruff format --check cri_resmgr tests harness bench

# --- demo and benchmarks -------------------------------------------------

demo: deps venv
	$(PY) -m harness.demo

bench: deps venv
	$(PY) -m bench

# --- packaging -----------------------------------------------------------

clean:
	rm -rf build dist *.egg-info .pytest_cache
