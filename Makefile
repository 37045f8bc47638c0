# fastbridge developer commands. Every target sets up what it needs, so each one works on a
# fresh clone of a machine that has Python 3.11+ and a Rust toolchain.
#   make bench   set up, build and install the wheel, run the copy-versus-zero-copy benchmark
#   make test    set up, build and install the wheel, run every check and test
#   make check   the inner loop: lint and the tests not marked slow, against the built wheel
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The newest stack (jax 0.11+ needs Python >= 3.12): its own venv, the same abi3 wheel.
PYTHON_NEWEST ?= PYENV_VERSION=3.12.1 python3.12
VENV_NEWEST ?= .venv-newest
PY_NEWEST := $(VENV_NEWEST)/bin/python
BENCH_ARGS ?=
# The Python suites run on pytest-xdist workers, one per core and at most 4 (each imports
# TensorFlow and JAX). TEST_WORKERS=0 runs in one process; PYTEST_ARGS adds options (-x, -k).
# (--dist loadgroup would keep a module's costly fixture on one worker, but xdist 3.8 cannot
# group under pytest 9.2: it renames a node id pytest no longer reads.)
TEST_WORKERS ?= auto
PYTEST_ARGS ?=
PYTEST_RUN = -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR) -c $(CURDIR)/pyproject.toml \
	-n $(TEST_WORKERS) --maxprocesses=4 $(PYTEST_ARGS)
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: help setup setup-newest wheel bench test check test-rust lint test-python test-newest \
	soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ -/'

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed  ## create .venv with the pinned dependencies

$(VENV_NEWEST)/.installed: requirements-newest.txt
	$(PYTHON_NEWEST) -m venv $(VENV_NEWEST)
	$(PY_NEWEST) -m pip install --quiet --upgrade pip
	$(PY_NEWEST) -m pip install --quiet -r requirements-newest.txt
	touch $@

setup-newest: $(VENV_NEWEST)/.installed  ## create .venv-newest: Python 3.12 with the newest pinned stack

wheel: setup  ## build the abi3 wheel with maturin and install it into .venv
	rm -rf dist
	$(VENV)/bin/maturin build --release --out dist --interpreter $(PY)
	$(PY) -m pip install --quiet --force-reinstall --no-deps dist/fastbridge-*.whl

bench: wheel  ## the main job: copy versus zero-copy on a built-in synthetic dataset
	cd /tmp && $(abspath $(PY)) -m fastbridge.bench $(BENCH_ARGS) --out $(CURDIR)/bench-results

test-rust: setup  ## cargo test, clippy, fmt, and the loom model check of the pool
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo test --quiet
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --quiet --test loom_pool

soak: wheel  ## the long runs: 100,000 batches through the ring, and the exactly-once model at 200 examples
	cd tests && FASTBRIDGE_SOAK=1 $(abspath $(PY)) -m pytest -q -p no:cacheprovider test_reliability.py -k soak
	cd tests && FASTBRIDGE_MODEL_EXAMPLES=200 FASTBRIDGE_HYPOTHESIS_RANDOM=1 $(abspath $(PY)) -m pytest -q \
		-p no:cacheprovider test_exactly_once.py -k every_batch

lint: setup  ## ruff, mypy --strict (pyproject.toml), and the type stubs checked against the built extension
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(VENV)/bin/mypy python/fastbridge tests/typing examples benches/gpu/check.py benches/gpu/split_cost.py
	cd /tmp && $(abspath $(PY)) -m mypy.stubtest fastbridge._core

test-python: wheel  ## pytest against the installed wheel (not the source tree)
	cd tests && FASTBRIDGE_EXPECT_INSTALLED=1 $(abspath $(PY)) $(PYTEST_RUN) $(CURDIR)/tests

test-newest: wheel  ## pytest against the same wheel on the newest stack (Python 3.12)
	@if ! $(PYTHON_NEWEST) --version >/dev/null 2>&1; then \
		echo "*** test-newest SKIPPED: '$(PYTHON_NEWEST)' does not run here (set PYTHON_NEWEST)"; \
		exit 0; \
	fi; \
	set -e; \
	$(MAKE) --no-print-directory setup-newest; \
	$(PY_NEWEST) -m pip install --quiet --force-reinstall --no-deps dist/fastbridge-*.whl; \
	cd tests && FASTBRIDGE_EXPECT_INSTALLED=1 $(abspath $(PY_NEWEST)) $(PYTEST_RUN) $(CURDIR)/tests

test: test-rust wheel lint test-python test-newest  ## everything CI runs

check: wheel lint  ## the inner loop: lint and the tests not marked slow (make test runs them all)
	cd tests && FASTBRIDGE_EXPECT_INSTALLED=1 $(abspath $(PY)) $(PYTEST_RUN) -m "not slow" \
		$(CURDIR)/tests

clean:  ## remove build outputs and the virtual environment
	rm -rf target dist $(VENV) $(VENV_NEWEST) bench-results
