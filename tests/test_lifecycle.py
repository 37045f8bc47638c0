"""Closing, abandoning and running streams side by side leaks nothing and never hangs."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from conftest import ALL_BACKENDS, SLOT_BACKENDS, producer_threads, wait_until
from fastbridge import _core, stream
from fastbridge._testing import internals


def _endless(shape=(32, 32)):
    i = 0
    while True:
        yield np.full(shape, i, np.float32)
        i += 1


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_close_wakes_a_producer_blocked_on_a_free_slot(backend):
    s = stream(_endless(), backend=backend, prefetch=1, slots=1)
    held = [next(s), next(s)]  # the only slot is held: the producer waits for it
    assert wait_until(lambda: internals(s).pool.stats()["slots_leased"] >= 2, timeout=5)
    thread = internals(s).thread
    s.close()
    # close() promises to stop the producer within a second; the bound here only tells a
    # hang from a loaded machine.
    thread.join(timeout=30)
    assert not thread.is_alive(), "close() left the producer blocked on its slot"
    np.testing.assert_array_equal(np.asarray(held[1]), np.full((32, 32), 1.0))
    with pytest.raises(StopIteration):
        next(s)


@pytest.mark.parametrize("backend", ["ring", "numpy", "direct"])
def test_close_wakes_a_producer_blocked_on_a_full_ready_queue(backend):
    s = stream(_endless(), backend=backend, prefetch=2)
    assert wait_until(lambda: len(internals(s).queue) == 2, timeout=5)
    s.close()
    assert wait_until(lambda: not internals(s).thread.is_alive(), timeout=2)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_an_abandoned_stream_is_collected_with_its_thread(backend):
    s = stream(_endless(), backend=backend, prefetch=2)
    next(s)
    ring = internals(s).pool
    del s
    assert wait_until(lambda: not producer_threads(), timeout=5)
    if backend in SLOT_BACKENDS:
        assert wait_until(lambda: ring.stats()["slots"] == 0, timeout=5)


def test_streams_in_several_threads_at_once():
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def consume(backend, offset):
        try:
            barrier.wait()
            source = (np.full((16, 16), offset + i, np.float32) for i in range(50))
            with stream(source, backend=backend, prefetch=2) as s:
                for i, b in enumerate(s):
                    assert float(b[0, 0]) == offset + i
                assert i == 49
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [
        threading.Thread(target=consume, args=(b, k * 1000))
        for k, b in enumerate(["ring", "numpy", "direct", "ring"])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_fill_releases_the_gil():
    """Another Python thread keeps running while a large fill copies (threads meet at a
    barrier; the other thread timestamps its iterations, and we count those inside the fill)."""
    big = np.ones(64 << 20, np.uint8)
    ring = _core.SlotPool(slots=1, copy_threads=1)
    slot = ring.acquire(big.nbytes)
    barrier = threading.Barrier(2)
    done = threading.Event()
    stamps: list[float] = []

    def other():
        barrier.wait()
        while not done.is_set():
            stamps.append(time.perf_counter())

    thread = threading.Thread(target=other)
    thread.start()
    barrier.wait()
    inside = []
    for _ in range(3):
        started = time.perf_counter()
        slot.fill([(big, 0, 0)])
        ended = time.perf_counter()
        inside.append(sum(started < t < ended for t in list(stamps)))
    done.set()
    thread.join()
    # Holding the GIL for the whole copy would leave at most a handful of iterations inside.
    assert max(inside) > 100, inside
    slot.release()
    gc.collect()


def test_iterating_after_close_and_reentering():
    with stream([np.zeros(3)] * 3, backend="ring") as s:
        assert s.backend == "ring"
        next(s)
    with pytest.raises(StopIteration):
        next(s)
    s.close()  # idempotent
    assert "closed" in repr(s)


def _copy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fastbridge-numpy-copy")]


def test_numpy_ring_splits_large_copies_and_stops_its_threads():
    # Above 4 MiB a leaf is copied in parts on copy_threads threads, as the core does; the
    # parts must meet exactly (no gap, no overlap), conversions included, and the helper
    # threads must end with the stream.
    rng = np.random.default_rng(3)
    batches = [
        {
            "x": rng.normal(size=(16, 40_001)),  # 5 MiB of float64, narrowed, odd length
            "b": rng.integers(0, 256, (5 << 20) + 3, dtype=np.uint8),
        }
        for _ in range(3)
    ]
    with stream(batches, backend="numpy", prefetch=1, copy_threads=3) as s:
        got = list(s)
        assert len(_copy_threads()) == 2, "two helpers beside the producer thread"
    for g, want in zip(got, batches, strict=True):
        np.testing.assert_array_equal(np.asarray(g["x"]), want["x"].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(g["b"]), want["b"])
    assert wait_until(lambda: not _copy_threads()), _copy_threads()


class _Source:
    """An iterable whose iterators record whether they were closed (a generator's finally)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.finished: list[int] = []

    def __iter__(self):
        i = 0
        try:
            for i in range(self.n):
                yield np.full((4,), i, np.float32)
        finally:
            self.finished.append(i)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_close_closes_the_iterator_the_stream_opened(backend):
    # A Grain mp_prefetch iterator holds worker processes until close(); a generator's cleanup
    # runs in its finally. Neither may wait for garbage collection after the stream is closed.
    source = _Source(1000)
    s = stream(source, backend=backend, prefetch=2)
    assert float(next(s)[0]) == 0.0
    thread = internals(s).thread
    s.close()
    thread.join(timeout=5)
    assert len(source.finished) == 1, "the iterator that stream() opened was closed"
    assert source.finished[0] < 1000


@pytest.mark.parametrize("backend", ["ring", "numpy"])
def test_the_iterator_is_closed_at_the_source_end(backend):
    source = _Source(3)
    with stream(source, backend=backend) as s:
        assert [float(b[0]) for b in s] == [0.0, 1.0, 2.0]
        assert wait_until(lambda: source.finished == [2], timeout=5)


def test_a_user_iterator_is_left_open_for_the_user():
    # The source is its own iterator: the user may go on reading it after the stream.
    items = iter(_Source(10))
    s = stream(items, backend="numpy", prefetch=1)
    assert float(next(s)[0]) == 0.0
    thread = internals(s).thread
    s.close()
    thread.join(timeout=5)
    assert next(items).shape == (4,), "the user's iterator is still open"
