"""Aliasing safety: a slot is reused only when nothing aliases it any more."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SLOT_BACKENDS, wait_until
from fastbridge import PoolExhaustedError, stream
from fastbridge._testing import internals
from hypothesis import given, settings
from hypothesis import strategies as st


def _batches(n, rows=64, cols=128):
    # Batch i is filled with i, so a recycled slot shows up as wrong values.
    return ({"x": np.full((rows, cols), i, np.float32), "i": np.int32(i)} for i in range(n))


@jax.jit
def _heavy(x):
    y = x
    for _ in range(8):
        y = jnp.tanh(y @ jnp.eye(x.shape[1], dtype=x.dtype)) + x
    return y.sum()


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_held_batches_never_change(backend):
    held, pending = [], []
    with stream(_batches(200), backend=backend, prefetch=2) as batches:
        for i, b in enumerate(batches):
            if i % 3 == 0:
                held.append((i, b))
            if i % 5 == 0:
                pending.append(_heavy(b["x"]))  # computations still running on the slot
        stats = batches.stats
    for i, b in held:
        assert int(b["i"]) == i
        np.testing.assert_array_equal(np.asarray(b["x"]), np.full((64, 128), i, np.float32))
    for r in pending:
        r.block_until_ready()
    assert stats.slots < 200, "unheld slots were recycled"
    assert stats.pool_grown > 0, "holding more batches than slots grew the pool"


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_list_of_a_stream_does_not_deadlock(backend):
    with stream(_batches(30), backend=backend, prefetch=1, slots=1) as batches:
        got = list(batches)
    assert [int(b["i"]) for b in got] == list(range(30))


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_pool_cap_raises_a_clear_error(backend):
    with stream(_batches(50), backend=backend, prefetch=1, slots=1, max_pool_bytes=5 * 40960) as s:
        kept = []
        with pytest.raises(PoolExhaustedError, match="max_pool_bytes=204800"):
            for b in s:
                kept.append(b)
        # Everything delivered before the error is intact.
        assert [int(b["i"]) for b in kept] == list(range(len(kept)))
        assert len(kept) >= 4


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_slots_are_freed_after_close_once_batches_are_dropped(backend):
    s = stream(_batches(20), backend=backend, prefetch=2)
    keep = [next(s) for _ in range(3)]
    ring = internals(s).pool
    s.close()
    assert ring.stats()["slots"] >= 3, "held batches keep their slots"
    np.testing.assert_array_equal(np.asarray(keep[2]["x"])[0, 0], 2.0)
    del keep
    assert wait_until(lambda: ring.stats()["slots"] == 0 and ring.stats()["pool_bytes"] == 0)


@settings(max_examples=15, deadline=None)
@given(
    backend=st.sampled_from(SLOT_BACKENDS),
    prefetch=st.integers(1, 3),
    keep=st.lists(st.booleans(), min_size=5, max_size=40),
    release_after=st.integers(0, 5),
)
def test_random_hold_and_release_patterns(backend, prefetch, keep, release_after):
    held: list[tuple[int, dict]] = []
    with stream(_batches(len(keep), rows=8, cols=16), backend=backend, prefetch=prefetch) as s:
        for i, (b, k) in enumerate(zip(s, keep, strict=False)):
            if k:
                held.append((i, b))
            if len(held) > release_after:
                held.pop(0)  # release the oldest held batch while the ring keeps going
            for j, h in held:
                assert float(h["x"][0, 0]) == j
    for j, h in held:
        np.testing.assert_array_equal(np.asarray(h["x"]), np.full((8, 16), j, np.float32))
    del held
    gc.collect()
