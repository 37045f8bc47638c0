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
# TensorFlow and JAX); the tests marked serial (their verdict depends on how fast they run) run
# afterwards in one process. TEST_WORKERS=0 runs everything in one process; PYTEST_ARGS adds
# options (-x, -k NAME). (--dist loadgroup would keep a module's costly fixture on one worker,
# but xdist 3.8 cannot group under pytest 9.2: it renames a node id pytest no longer reads.)
TEST_WORKERS ?= auto
PYTEST_ARGS ?=
PYTEST_RUN = -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR) -c $(CURDIR)/pyproject.toml \
	$(PYTEST_ARGS)
# $(call suite,PYTHON,MARKS): the suite against the installed wheel, parallel phase then serial.
suite = cd tests && export FASTBRIDGE_EXPECT_INSTALLED=1 && \
	$(1) $(PYTEST_RUN) -n $(TEST_WORKERS) --maxprocesses=4 -m "not serial $(2)" $(CURDIR)/tests && \
	{ $(1) $(PYTEST_RUN) -p no:xdist -m "serial $(2)" $(CURDIR)/tests || [ $$? = 5 ]; }
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: help setup setup-newest wheel bench test check test-rust lint test-python test-newest \
	suite-python suite-newest soak clean

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
	$(VENV)/bin/mypy python/fastbridge tests/typing examples benches/gpu/*.py
	cd /tmp && $(abspath $(PY)) -m mypy.stubtest fastbridge._core

test-python: wheel  ## pytest against the installed wheel (not the source tree)
	@$(MAKE) --no-print-directory suite-python

test-newest: wheel  ## pytest against the same wheel on the newest stack (Python 3.12)
	@$(MAKE) --no-print-directory suite-newest

suite-python:  # test-python without building the wheel first
	$(call suite,$(abspath $(PY)))

suite-newest:  # test-newest without building the wheel first
	@if ! $(PYTHON_NEWEST) --version >/dev/null 2>&1; then \
		echo "*** test-newest SKIPPED: '$(PYTHON_NEWEST)' does not run here (set PYTHON_NEWEST)"; \
		exit 0; \
	fi; \
	set -e; \
	$(MAKE) --no-print-directory setup-newest; \
	$(PY_NEWEST) -m pip install --quiet --force-reinstall --no-deps dist/fastbridge-*.whl; \
	$(call suite,$(abspath $(PY_NEWEST)))

# The two stacks' suites run side by side: on two cores loaded by other jobs both took 12-13
# minutes together, the 3.11 suite alone 16 (each waits on its subprocesses much of the time).
test: test-rust wheel lint  ## everything CI runs
	@$(MAKE) --no-print-directory -j2 --output-sync=target suite-python suite-newest

check: wheel lint  ## the inner loop: lint and the tests not marked slow (make test runs them all)
	$(call suite,$(abspath $(PY)),and not slow)

clean:  ## remove build outputs and the virtual environment
	rm -rf target dist $(VENV) $(VENV_NEWEST) bench-results
