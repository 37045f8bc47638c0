"""Shared fixtures. Tests run against the installed wheel (see the Makefile's test-python)."""

from __future__ import annotations

import os

# Before JAX and TensorFlow are imported: 8 host devices for the sharding tests, quiet TF.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "jax")  # fastbridge.keras feeds Keras's JAX backend

import gc
import threading
import time

import fastbridge
import pytest
from fastbridge._put import release_host_arrays

ALL_BACKENDS = ["ring", "numpy", "direct", "copy"]
SLOT_BACKENDS = ["ring", "numpy"]


def producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastbridge-producer")]


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll `condition` (with garbage collection) until it holds or `timeout` passes.

    Each poll also asks JAX to drop the host arrays it has finished with: JAX releases the
    memory a deleted array aliased (a slot's view) only at its next call or in the garbage
    collector's callback, and ``gc.collect()`` does nothing at all while another thread's
    collection is still running (in a long test session, one can be blocked in a finalizer).
    """
    if condition():  # a full collection costs seconds late in a session: only when needed
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        release_host_arrays()
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(scope="module", autouse=True)
def frozen_heap():
    """Full collections skip what is alive when a test module starts: the tests' own garbage
    is still collected, but not re-scanned with TensorFlow's and JAX's half a million objects.

    Freezing changes no test's outcome (objects freed by reference counting are freed as
    before) and turns each of the suite's thousands of ``gc.collect()`` calls from a third of
    a second (several seconds late in a session) into microseconds.
    """
    gc.collect()  # what earlier modules dropped goes now, never into the frozen generation
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def no_leaked_producers():
    """Every test must leave no producer thread behind once its streams are gone."""
    yield
    assert wait_until(lambda: not producer_threads()), (
        f"leaked producer threads: {producer_threads()}"
    )


def test_runs_against_the_installed_wheel():
    """CI builds a wheel and tests that, never the source tree."""
    if os.environ.get("FASTBRIDGE_EXPECT_INSTALLED") != "1":
        pytest.skip("only meaningful under `make test`")
    assert "site-packages" in fastbridge.__file__, fastbridge.__file__
    assert fastbridge.core_available(), "the wheel must contain the Rust extension"
