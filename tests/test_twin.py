"""The NumPy twin follows the core's rules: the same misuse raises the same error with the
same message, and its pool counts held memory as the core's does.

Both read one table (``fastbridge.errors.CORE_MESSAGES``, through ``core_error``); these
tests drive the Rust core ("ring") and the twin ("numpy") through the same calls and compare.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from fastbridge import _native, _put
from fastbridge._numpy_queue import NumpyQueue
from fastbridge._numpy_ring import NumpyLayout, NumpySlotPool
from fastbridge.errors import CORE_MESSAGES, core_error

PAGE = _native.PAGE_SIZE
KITS = {"numpy": (NumpySlotPool, NumpyQueue, NumpyLayout)}
if _native.core is not None:
    KITS["ring"] = (_native.core.SlotPool, _native.core.ReadyQueue, _native.core.Layout)
needs_core = pytest.mark.skipif(_native.core is None, reason="needs the Rust extension")


def _slot(kit, nbytes=PAGE):
    return kit[0](slots=1, lock=False).acquire(nbytes)


def _closed_acquire(kit):
    pool = kit[0](slots=1, lock=False)
    pool.close()
    pool.acquire(16)


def _closed_pop(kit):
    queue = kit[1](1)
    queue.close()
    queue.pop_into([])


def _timed_out(kit):
    pool = kit[0](slots=1, lock=False)
    held = pool.acquire(16)
    try:
        pool.acquire(16, timeout=0)
    finally:
        held.release()


def _second_pool(kit):
    queue = kit[1](2)
    kit[0](slots=1, queue=queue)
    kit[0](slots=1, queue=queue)


def _released(kit):
    slot = _slot(kit)
    slot.release()
    _ = slot.capacity


def _written_after_export(kit):
    slot = _slot(kit)
    leaf = slot.export(0, [4], 2, 32)  # held: the core's slot is writable again once it is gone
    slot.fill([(np.zeros(4, np.float32), 0, 0)])
    del leaf


def _write(kit, sources, layout=None):
    layout = layout or kit[2](1, [(0, 0, 64, 0, 0)], [])
    _slot(kit).write(sources, layout)


MISUSES = {
    "slots 0": lambda kit: kit[0](slots=0),
    "copy_threads 0": lambda kit: kit[0](slots=1, copy_threads=0),
    "queue capacity 0": lambda kit: kit[1](0),
    "queue capacity huge": lambda kit: kit[1](2**40),
    "pop timeout -1": lambda kit: kit[1](1).pop_into([], -1.0),
    "pop timeout nan": lambda kit: kit[1](1).pop_into([], float("nan")),
    "acquire timeout -2.5": lambda kit: kit[0](slots=1).acquire(16, -2.5),
    "acquire when closed": _closed_acquire,
    "pop when closed": _closed_pop,
    "no slot in time": _timed_out,
    "two pools on a queue": _second_pool,
    "released slot": _released,
    "written after export": _written_after_export,
    "pool cap": lambda kit: kit[0](slots=1, max_bytes=PAGE).acquire(PAGE + 1),
    "fills overlap": lambda kit: kit[2](1, [(0, 0, 64, 0, 0), (0, 0, 64, 32, 0)], []),
    "partial elements": lambda kit: kit[2](1, [(0, 0, 12, 0, 2)], []),
    "unknown conversion": lambda kit: kit[2](1, [(0, 0, 8, 0, 9)], []),
    "source out of range": lambda kit: kit[2](1, [(1, 0, 8, 0, 0)], []),
    "unaligned export": lambda kit: kit[2](1, [], [(0, [1], 2, 32, 0), (8, [1], 2, 32, 0)]),
    "wrong source count": lambda kit: _write(kit, [np.zeros(16, np.float32)] * 2),
    "past the source": lambda kit: _write(kit, [np.zeros(4, np.float32)]),
    "not contiguous": lambda kit: _write(kit, [np.zeros((8, 4), np.float32)[:, :2]]),
    "layout too large": lambda kit: _write(
        kit, [np.zeros(4 * PAGE, np.uint8)], kit[2](1, [(0, 0, 4 * PAGE, 0, 0)], [])
    ),
}


def _raised(kit, misuse):
    with pytest.raises(Exception) as caught:
        MISUSES[misuse](kit)
    return type(caught.value), str(caught.value)


@needs_core
@pytest.mark.parametrize("misuse", MISUSES)
def test_the_same_misuse_raises_the_same_error_on_both_backends(misuse):
    ring, numpy = _raised(KITS["ring"], misuse), _raised(KITS["numpy"], misuse)
    assert ring == numpy
    kinds = {kind for kind, _ in CORE_MESSAGES.values()}
    assert ring[0] in kinds, ring


def test_every_message_key_the_core_names_is_in_the_table():
    src = Path(__file__).resolve().parents[1] / "src"
    if not src.is_dir():
        pytest.skip("needs the Rust sources")
    keys = {
        k
        for f in src.glob("*.rs")
        for k in re.findall(r"(?<!`)message!\(\s*\"(\w+)\"", f.read_text())
    }
    assert keys, "no message!(...) call found"
    assert keys <= set(CORE_MESSAGES), keys - set(CORE_MESSAGES)


def test_core_error_fills_the_template_and_leads_with_the_entry():
    error = core_error("fill_units", "fill 3", length=12, start=0, unit=8)
    assert type(error) is ValueError
    assert str(error) == "fill 3: 12 bytes from byte 0 are not whole 8-byte elements"
    assert isinstance(core_error("pool_exhausted", max_bytes=1, held=2, requested=3), MemoryError)


# -- the pool's accounting -----------------------------------------------------------------


def _pool(backend, **settings):
    return KITS[backend][0](lock=False, **settings)


def _batch(pool, pages):
    """What the stream does with one batch: a slot of ``pages`` pages, its view imported into
    JAX (aliased on CPU: JAX holds the view until the array is gone and it has said so)."""
    slot = pool.acquire(pages * PAGE)
    (export,) = slot.write(
        [np.ones(pages * PAGE // 4, np.float32)],
        KITS[backend_of(pool)][2](
            1, [(0, 0, pages * PAGE, 0, 0)], [(0, [pages * PAGE // 4], 2, 32, 0)]
        ),
    )
    slot.release()
    view = export if isinstance(export, np.ndarray) else np.from_dlpack(export)
    device = jax.devices("cpu")[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    put = _put.putter((view.size,), view.dtype, sharding, [device], x64=False)
    return put([view])


def backend_of(pool):
    return "numpy" if isinstance(pool, NumpySlotPool) else "ring"


@pytest.mark.parametrize("backend", KITS)
def test_batches_that_grow_while_the_consumer_holds_nothing_stay_under_the_cap(backend):
    """Eight 1-page slots in flight at once, then 3-page batches one at a time under a
    10-page cap: each dropped batch's slot counts as free before the next is allocated, even
    when its release has only been reported, not yet counted."""
    pool = _pool(backend, slots=8, max_bytes=10 * PAGE)
    in_flight = [_batch(pool, 1) for _ in range(8)]
    assert pool.stats()["pool_bytes"] == 8 * PAGE
    del in_flight
    for _ in range(12):
        _put.release_host_arrays()  # as the stream asks before every acquire
        batch = _batch(pool, 3)
        assert float(batch.sum()) == 3 * PAGE // 4
        del batch
    _put.release_host_arrays()
    stats = pool.stats()
    assert stats["slots_leased"] == 0 and stats["pool_bytes"] <= 10 * PAGE, stats
    pool.close()


@pytest.mark.parametrize("backend", KITS)
def test_a_slot_comes_back_when_its_view_dies_with_an_exception_pending(backend):
    """A Ctrl-C that lands as a view is freed must not lose the slot. Simulated: a profile
    hook raises ``KeyboardInterrupt`` at the first Python call made while the view is freed
    (a finalizer written in Python would be that call, and its release would be lost)."""
    pool = _pool(backend, slots=1)
    slot = pool.acquire(PAGE)
    export = slot.export(0, [16], 2, 32)
    slot.release()
    view = export if isinstance(export, np.ndarray) else np.from_dlpack(export)
    del export
    calls = []

    def interrupt(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
            raise KeyboardInterrupt

    sys.setprofile(interrupt)
    try:
        del view
    finally:
        sys.setprofile(None)
    assert calls == [], f"Python code ran while the view was freed: {calls}"
    stats = pool.stats()
    assert (stats["slots_leased"], stats["slots_free"]) == (0, 1), stats
    pool.acquire(PAGE, timeout=0).release()
    pool.close()


def test_the_errors_module_examples_run():
    import doctest

    import fastbridge.errors

    assert doctest.testmod(fastbridge.errors).failed == 0
