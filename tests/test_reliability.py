"""Reliability under abuse: randomized lifetimes, a soak, and fault injection.

Everything here runs against real JAX and TensorFlow (no mocks). docs/RELIABILITY.md lists
each guarantee and the test that checks it. The 100,000-batch soak is opt-in:

    FASTBRIDGE_SOAK=1 python -m pytest -q -p no:cacheprovider tests/test_reliability.py -k soak
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import fastbridge
import jax
import jax.numpy as jnp
import numpy as np
import psutil
import pytest
from conftest import SLOT_BACKENDS, wait_until
from fastbridge import SourceError, StructureChangedError, stream
from fastbridge._testing import internals
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

PAGE = 4096


def ring_stats(s: fastbridge.Stream) -> dict:
    return internals(s).pool.stats()


def slots_return(s: fastbridge.Stream, timeout: float = 10.0) -> bool:
    """Whether every slot of a closed stream is freed once nothing holds it (polls with gc)."""
    return wait_until(lambda: ring_stats(s)["slots"] == 0, timeout)


# -- a source whose every value is a function of the batch index ------------------------------

# Rows of the ``x`` leaf by batch index: 64 B, 1.75 KiB and 18.75 KiB (five pages), so slots
# are reused, replaced by larger ones and reused again.
ROWS = (1, 7, 300)
COLS = 16


def batch_for(index: int) -> dict[str, np.ndarray]:
    rows = ROWS[index % len(ROWS)]
    x = np.arange(rows * COLS, dtype=np.float32).reshape(rows, COLS) + np.float32(index * 1000)
    # ``i`` is int64 so every backend narrows it (JAX's x64 is off): ``direct`` puts narrowed
    # leaves in slots too, and the row count varies so those slots get replaced as well.
    i = np.concatenate([[index, -index, 7], np.arange(rows) - index]).astype(np.int64)
    return {"x": x, "i": i}


def expected_sum(index: int) -> float:
    b = batch_for(index)
    return float(b["x"].astype(np.float64).sum() + b["i"].astype(np.float64).sum())


def check_batch(batch: dict, index: int) -> None:
    expected = batch_for(index)
    np.testing.assert_array_equal(np.asarray(batch["x"]), expected["x"], err_msg=f"batch {index}")
    np.testing.assert_array_equal(np.asarray(batch["i"]), expected["i"], err_msg=f"batch {index}")


# Both leaves (``i`` narrowed to int32), each 64-byte aligned, in whole pages.
MAX_SLOT_BYTES = -(-(64 * 5 + max(ROWS) * COLS * 4 + (3 + max(ROWS)) * 4) // PAGE) * PAGE


@jax.jit
def reduce_batch(batch: dict) -> jax.Array:
    return batch["x"].sum(dtype=jnp.float32) + batch["i"].sum().astype(jnp.float32)


# -- the stateful test --------------------------------------------------------------------------

PREFETCH = 2
SLOTS = 2
BATCHES = 40


class StreamLifetimes(RuleBasedStateMachine):
    """Random next / hold / release / jit-use / close / gc sequences against one stream.

    Invariants: every batch still held (and every jitted result computed from a batch that was
    released right after) equals the values computed from its index; the pool never holds
    more than the held batches need plus a fixed margin; after close and dropping everything,
    every slot is freed.
    """

    backend = "ring"

    @initialize()
    def open_stream(self) -> None:
        self.stream = stream(
            (batch_for(i) for i in range(BATCHES)),
            backend=self.backend,
            prefetch=PREFETCH,
            slots=SLOTS,
        )
        self.next_index = 0
        self.held: dict[int, dict] = {}
        self.pending: list[tuple[jax.Array, int]] = []
        self.closed = False
        self.exhausted = False
        self.peak_held = 0

    def _next(self) -> tuple[int, dict] | None:
        try:
            batch = next(self.stream)
        except StopIteration:
            assert self.closed or self.next_index == BATCHES, (
                f"stream ended early at {self.next_index}"
            )
            self.exhausted = True
            return None
        index = self.next_index
        self.next_index += 1
        check_batch(batch, index)
        return index, batch

    @precondition(lambda self: not self.exhausted)
    @rule()
    def next_and_drop(self) -> None:
        self._next()

    @precondition(lambda self: not self.exhausted)
    @rule()
    def next_and_hold(self) -> None:
        got = self._next()
        if got is not None:
            self.held[got[0]] = got[1]
            self.peak_held = max(self.peak_held, len(self.held))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.held)), label="release")
        del self.held[index]

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), release_now=st.booleans())
    def use_in_jit(self, data: st.DataObject, release_now: bool) -> None:
        index = data.draw(st.sampled_from(sorted(self.held)), label="jit")
        # Dispatch is asynchronous: when the batch is released right away, the slot must not
        # return (and be overwritten) before the computation has read it.
        result = reduce_batch(self.held[index])
        if release_now:
            del self.held[index]
            self.pending.append((result, index))
        else:
            assert float(result) == pytest.approx(expected_sum(index), rel=1e-6)

    @rule()
    def check_pending(self) -> None:
        for result, index in self.pending:
            assert float(result) == pytest.approx(expected_sum(index), rel=1e-6), index
        self.pending.clear()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.stream.close()
        self.closed = True
        self.exhausted = True
        with pytest.raises(StopIteration):
            next(self.stream)

    @rule()
    def collect(self) -> None:
        gc.collect()

    @invariant()
    def held_batches_never_change(self) -> None:
        for index, batch in self.held.items():
            check_batch(batch, index)

    @invariant()
    def memory_stays_bounded(self) -> None:
        # The pool grows only while the consumer waits with every slot held, so it never
        # needs more slots than the most batches ever held at once, plus the in-flight ones.
        bound_slots = max(SLOTS, self.peak_held + PREFETCH + 2)
        stats = ring_stats(self.stream)
        assert stats["slots"] <= bound_slots, (stats, self.peak_held)
        assert stats["pool_bytes"] <= bound_slots * MAX_SLOT_BYTES, (stats, self.peak_held)
        # Leased slots: held batches, the ready queue, the slot being filled, and batches
        # dropped a moment ago whose JAX arrays are still being freed.
        if stats["slots_leased"] > len(self.held) + PREFETCH + 1:
            assert wait_until(
                lambda: ring_stats(self.stream)["slots_leased"] <= len(self.held) + PREFETCH + 1,
                timeout=5.0,
            ), (ring_stats(self.stream), len(self.held))

    def teardown(self) -> None:
        stream_ = getattr(self, "stream", None)
        if stream_ is None:
            return
        self.check_pending()
        grown = ring_stats(stream_)["pool_grown"]
        # Shown by --hypothesis-show-statistics: growth and closing with batches held happen.
        event(f"pool grew: {grown > 0}")
        event(f"closed while holding batches: {bool(self.held)}")
        stream_.close()
        self.held.clear()
        assert slots_return(stream_), f"slots never came back: {ring_stats(stream_)}"
        stats = ring_stats(stream_)
        assert (stats["slots_leased"], stats["pool_bytes"]) == (0, 0), stats


class RingLifetimes(StreamLifetimes):
    backend = "ring"


class NumpyLifetimes(StreamLifetimes):
    backend = "numpy"


class DirectLifetimes(StreamLifetimes):
    """``direct`` aliases ``x`` and writes only the narrowed ``i`` into slots."""

    backend = "direct"


_STATEFUL = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=os.environ.get("FASTBRIDGE_HYPOTHESIS_RANDOM") != "1",
)
TestRingLifetimes = RingLifetimes.TestCase
TestRingLifetimes.settings = _STATEFUL
TestNumpyLifetimes = NumpyLifetimes.TestCase
TestNumpyLifetimes.settings = _STATEFUL
TestDirectLifetimes = DirectLifetimes.TestCase
TestDirectLifetimes.settings = _STATEFUL


# -- soak --------------------------------------------------------------------------------------

SOAK_SIZES = (1 << 10, 64 << 10, 1 << 20)  # bytes of the uint8 leaf, cycled irregularly


def soak_source(count: int):
    for index in range(count):
        size = SOAK_SIZES[(index * 7 + index // 5) % len(SOAK_SIZES)]
        yield {"x": np.full(size, index % 251, np.uint8), "i": np.array([index], np.int64)}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def consume_soak(s: fastbridge.Stream, count: int, process: psutil.Process) -> int:
    """Consume the soak stream like a training loop that keeps a few recent batches. Returns
    the RSS after warm-up. A function of its own, so no batch outlives it in a local."""
    kept: collections.deque = collections.deque(maxlen=3)
    warmup = min(500, count // 5)
    rss_warm = 0
    for index, batch in enumerate(s):
        if index % 97 == 0:  # spot checks: values and a jitted use
            assert int(batch["i"][0]) == index
            x = batch["x"]
            assert int(x[0]) == int(x[-1]) == index % 251
            assert int(jnp.sum(x, dtype=jnp.uint32)) == (index % 251) * x.size
        if index % 5 == 0:
            kept.append((index, batch))
        if index == warmup:
            gc.collect()
            rss_warm = process.memory_info().rss
        for k, old in kept:  # kept batches never change while newer ones stream past
            if (index + k) % 211 == 0:
                assert int(old["x"][0]) == k % 251
    return rss_warm


def run_soak(count: int, rss_bound_mib: float) -> dict:
    process = psutil.Process()
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    with stream(soak_source(count), backend="ring", prefetch=3) as s:
        rss_warm = consume_soak(s, count, process)
        stats = s.stats
    assert stats.batches == count
    gc.collect()
    rss_end = process.memory_info().rss
    growth_mib = (rss_end - rss_warm) / 2**20
    assert slots_return(s), f"slots leaked: {ring_stats(s)}"
    assert wait_until(lambda: set(threading.enumerate()) <= threads_before), (
        f"leaked threads: {set(threading.enumerate()) - threads_before}"
    )
    assert wait_until(lambda: open_fds() <= fds_before), (
        f"leaked fds: {open_fds()} open, {fds_before} before"
    )
    assert growth_mib < rss_bound_mib, f"RSS grew {growth_mib:.1f} MiB after warm-up"
    # The pool holds the kept batches, the ready queue and the slot being filled.
    assert stats.slots <= 3 + 3 + 2 + 2, stats
    figures = {
        "batches": count,
        "rss_growth_mib": round(growth_mib, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "slots": stats.slots,
        "pool_mib": round(stats.pool_bytes / 2**20, 2),
        "pool_grown": stats.pool_grown,
        "batches_per_second": round(stats.batches_per_second),
        "seconds": round(stats.elapsed_seconds, 1),
    }
    print(f"soak figures: {figures}")
    return figures


def test_soak_short():
    """3,000 batches of 1 KiB to 1 MiB: RSS grows < 48 MiB after warm-up, no leaks."""
    run_soak(3_000, rss_bound_mib=48)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FASTBRIDGE_SOAK") != "1", reason="long soak: set FASTBRIDGE_SOAK=1 to run"
)
def test_soak_long():
    """100,000 batches: the same bound as the short soak, so growth cannot be per batch."""
    run_soak(100_000, rss_bound_mib=48)


# -- fault injection: in process ------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("backend", ["ring", "numpy", "direct", "copy"])
@pytest.mark.parametrize("fail_at", [0, 1, 13])
def test_source_error_after_every_good_batch(backend, fail_at):
    original = Boom(f"disk on fire at {fail_at}")

    def source():
        for index in range(30):
            if index == fail_at:
                raise original
            yield batch_for(index)

    with stream(source(), backend=backend, prefetch=2) as s:
        got = []
        with pytest.raises(SourceError) as caught:
            for batch in s:
                check_batch(batch, len(got))
                got.append(batch)
        assert len(got) == fail_at, "every batch before the failure is delivered, in order"
        assert caught.value.__cause__ is original
        assert caught.value.batch_index == fail_at
        assert "Boom" in str(caught.value) and f"batch {fail_at}" in str(caught.value)
        with pytest.raises(StopIteration):
            next(s)
        for index, kept in enumerate(got):  # delivered batches survive the failure
            check_batch(kept, index)
    if backend in SLOT_BACKENDS:
        got.clear()
        kept = batch = None
        assert slots_return(s)


def test_source_error_at_a_random_batch():
    rng = np.random.default_rng()
    fail_at = int(rng.integers(0, 60))

    def source():
        for index in range(100):
            if index == fail_at:
                raise KeyError(f"missing shard {index}")
            yield batch_for(index)

    s = stream(source(), backend="ring", prefetch=3)
    count = 0
    with pytest.raises(SourceError) as caught:
        for batch in s:
            check_batch(batch, count)
            count += 1
    assert count == fail_at, f"fail_at={fail_at}"
    assert isinstance(caught.value.__cause__, KeyError)
    s.close()


@pytest.mark.parametrize("backend", ["ring", "numpy", "direct", "copy"])
def test_structure_change_names_the_leaf(backend):
    def source():
        yield {"x": np.zeros(4, np.float32), "y": np.ones(2, np.int32)}
        yield {"x": np.zeros(4, np.float32), "y": np.ones(2, np.int32)}
        yield {"x": np.zeros(4, np.float32), "y": np.ones(2, np.int32), "extra": np.zeros(1)}

    with stream(source(), backend=backend, prefetch=2) as s:
        assert len([next(s), next(s)]) == 2
        with pytest.raises(StructureChangedError) as caught:
            next(s)
    message = str(caught.value)
    assert "extra" in message and "batch 2" in message, message


@pytest.mark.parametrize("backend", ["ring", "numpy", "direct", "copy"])
def test_dtype_change_names_the_leaf_and_both_dtypes(backend):
    def source():
        yield {"x": np.zeros(4, np.float32), "labels": np.arange(3, dtype=np.int32)}
        yield {"x": np.zeros(4, np.float32), "labels": np.arange(3, dtype=np.int16)}

    with stream(source(), backend=backend, prefetch=2) as s:
        first = next(s)
        with pytest.raises(StructureChangedError) as caught:
            next(s)
    message = str(caught.value)
    assert "labels" in message and "int32" in message and "int16" in message, message
    np.testing.assert_array_equal(np.asarray(first["labels"]), np.arange(3))


def test_structure_change_from_tf_data():
    tf = pytest.importorskip("tensorflow")
    first = tf.data.Dataset.from_tensors({"x": tf.zeros([4], tf.float32)})
    second = tf.data.Dataset.from_tensors({"x": tf.zeros([4], tf.float32), "z": tf.ones([1])})
    # A tf.data pipeline has one structure; a Python source mixing datasets can change it.
    source = [b for ds in (first, second) for b in ds.as_numpy_iterator()]
    with stream(source, backend="ring", prefetch=2) as s:
        next(s)
        with pytest.raises(StructureChangedError, match="z"):
            next(s)


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_leaves_larger_than_a_slot_grow_it(backend):
    small = {"x": np.full(16, 1, np.float32)}
    big = {"x": np.arange(5 << 18, dtype=np.float32)}  # 5 MiB, far beyond the first slot
    source = [small, big, small, big]
    with stream(source, backend=backend, prefetch=1, slots=1) as s:
        first = next(s)
        start_bytes = s.stats.pool_bytes
        second = next(s)
        np.testing.assert_array_equal(np.asarray(first["x"]), small["x"])
        np.testing.assert_array_equal(np.asarray(second["x"]), big["x"])
        assert s.stats.pool_bytes >= big["x"].nbytes > start_bytes
        del first, second
        rest = list(s)
        np.testing.assert_array_equal(np.asarray(rest[0]["x"]), small["x"])
        np.testing.assert_array_equal(np.asarray(rest[1]["x"]), big["x"])
    del rest
    assert slots_return(s)


# -- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(prefetch=0), ValueError, ["prefetch", "from 1 to", "0"]),
        (dict(prefetch=True), TypeError, ["prefetch", "from 1 to", "True"]),
        (dict(prefetch=2.5), TypeError, ["prefetch", "from 1 to", "2.5"]),
        (dict(backend="bogus"), ValueError, ["backend", "'ring'", "'numpy'", "'bogus'"]),
        (dict(max_pool_bytes=-1), ValueError, ["max_pool_bytes", "from 1 to", "None", "-1"]),
        (dict(max_pool_bytes=0), ValueError, ["max_pool_bytes", "from 1 to", "0"]),
        (dict(slots=0), ValueError, ["slots", "from 1 to", "0"]),
        (dict(copy_threads=0), ValueError, ["copy_threads", "from 1 to", "0"]),
        (dict(device="nope"), ValueError, ["device", "'nope'", "cpu"]),
        (dict(device=3.5), TypeError, ["device", "jax.Device", "3.5"]),
    ],
)
def test_bad_arguments_name_the_argument_and_allowed_values(kwargs, error, words):
    with pytest.raises(error) as caught:
        stream([batch_for(0)], **kwargs)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


@pytest.mark.parametrize("source", [42, None, "a string", b"bytes"])
def test_bad_source_names_what_is_accepted(source):
    with pytest.raises(TypeError) as caught:
        stream(source)
    message = str(caught.value)
    assert "source" in message and "tf.data.Dataset" in message and "iterable" in message


def test_max_pool_bytes_cap_gives_a_clear_error():
    source = (batch_for(2) for _ in range(50))  # 5-page slots
    with stream(source, backend="ring", prefetch=1, slots=1, max_pool_bytes=3 * PAGE) as s:
        with pytest.raises(fastbridge.PoolExhaustedError) as caught:
            list(s)  # keeps every batch: the pool must grow, and hits the cap
    assert "max_pool_bytes" in str(caught.value)


# -- fault injection: in a subprocess ----------------------------------------------------------

PRELUDE = """
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import jax, jax.numpy as jnp
import fastbridge
from fastbridge import stream
from fastbridge._testing import internals
"""


def python_script(body: str) -> list[str]:
    code = PRELUDE + textwrap.dedent(body)
    return [sys.executable, "-c", code]


def run_script(body: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        python_script(body), capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_ctrl_c_while_blocked_in_next(backend):
    body = f"""
        import signal, threading
        # Ctrl-C as at a terminal, also when the suite runs in the background (a shell starts
        # background jobs with SIGINT ignored, and Python then installs no handler for it).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        never = threading.Event()
        def source():
            yield {{"x": np.zeros(4, np.float32)}}
            never.wait()  # the source blocks forever
        s = stream(source(), backend={backend!r}, prefetch=1)
        next(s)
        print("blocked", flush=True)
        next(s)
        print("next() returned", flush=True)
    """
    process = subprocess.Popen(
        python_script(body), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "blocked"
        time.sleep(0.5)  # well inside the blocking next()
        process.send_signal(signal.SIGINT)
        # A hang fails here; how soon the process exits is no part of the claim.
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "KeyboardInterrupt" in stderr, stderr[-2000:]
    assert process.returncode != 0


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_interpreter_exit_while_arrays_alias_slots(backend):
    body = f"""
        import gc
        data = [{{"x": np.full((64, 64), i, np.float32)}} for i in range(50)]
        s = stream(data, backend={backend!r}, prefetch=2, slots=2)
        kept = [next(s) for _ in range(6)]          # arrays aliasing slots, never released
        total = jax.jit(lambda b: b["x"].sum())(kept[-1])   # in flight at exit
        cycle = [kept[0]]; cycle.append(cycle)    # only the cyclic GC can free this one
        module_global = kept[1]["x"]
        # the producer is now blocked: every slot is held and the consumer is not waiting
        print("exiting", float(total), flush=True)
    """
    result = run_script(body)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exiting 20480.0" in result.stdout
    for marker in ("Segmentation", "Fatal Python error", "panicked", "Aborted"):
        assert marker not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_interpreter_exit_after_close_with_arrays_alive(backend):
    body = f"""
        data = [{{"x": np.full(1000, i, np.int32)}} for i in range(20)]
        with stream(data, backend={backend!r}, prefetch=2) as s:
            kept = [next(s) for _ in range(5)]
        # closed: the pool's memory now lives only as long as these arrays
        assert int(kept[4]["x"][0]) == 4
        print("ok", flush=True)
        sys.exit(0)
    """
    result = run_script(body)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


@pytest.mark.parametrize("backend", SLOT_BACKENDS)
def test_fork_with_a_live_stream(backend):
    body = f"""
        import warnings
        warnings.simplefilter("ignore")  # JAX warns that fork() with threads may deadlock
        data = [{{"x": np.full(256, i, np.float32)}} for i in range(40)]
        s = stream(data, backend={backend!r}, prefetch=2)
        first = next(s)
        pid = os.fork()
        if pid == 0:
            try:
                next(s)
            except RuntimeError as error:
                print("child:", error, flush=True)
                code = 0 if "fork" in str(error) and "new stream" in str(error) else 3
            else:
                code = 4
            s.close()   # closing the inherited copy must not hang either
            del first
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        # the parent's stream is unaffected
        rest = [int(b["x"][0]) for b in s]
        assert rest == list(range(1, 40)), rest
        print("parent ok", flush=True)
    """
    result = run_script(body, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "child exit 0" in result.stdout, result.stdout + result.stderr[-3000:]
    assert "child: this stream was created in another process" in result.stdout
    assert "parent ok" in result.stdout


FORK_STRESS_BODY = """
    import signal, warnings
    warnings.simplefilter("ignore")  # JAX warns that fork() with threads may deadlock
    data = [{{"x": np.full(256, i, np.float32)}} for i in range(10_000)]
    s = stream(data, backend={backend!r}, prefetch=2)
    held = [next(s) for _ in range(3)]
    hung = 0
    for attempt in range({forks}):
        next(s)  # the producer refills: fork lands at a random point of its work
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # normal exit: atexit, weakref finalizers, GC of the held arrays
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0, status
                break
            if time.monotonic() > deadline:
                hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    print("hung", hung, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ring", "numpy"])
def test_fork_children_exiting_normally_never_hang(backend):
    """Fork 30 times while the producer works; every child exits normally (running the
    finalizers that close the inherited stream and free the arrays) within 10 s."""
    result = run_script(FORK_STRESS_BODY.format(backend=backend, forks=30), timeout=110)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hung 0" in result.stdout, result.stdout


def test_fork_while_the_numpy_ring_lock_is_held_does_not_hang_the_child():
    """Deterministic version of the race above: a thread holds the ring's lock, as the
    producer does while it publishes or acquires, exactly when the main thread forks. (Found
    by this test: the child used to block forever in its finalizers; rings now leave inherited
    slots and locks alone in a forked child.)"""
    body = """
        import threading, warnings
        warnings.simplefilter("ignore")
        data = [{"x": np.full(256, i, np.float32)} for i in range(40)]
        s = stream(data, backend="numpy", prefetch=2)
        held = [next(s) for _ in range(3)]
        locked, release = threading.Event(), threading.Event()
        def holder():
            with internals(s).pool._lock:
                locked.set()
                release.wait()
        t = threading.Thread(target=holder)
        t.start()
        locked.wait()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        release.set()
        t.join()
        deadline = time.monotonic() + 10
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                print("child hung", flush=True)
                break
            time.sleep(0.01)
        else:
            print("child exited", flush=True)
    """
    result = run_script(body, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "child exited" in result.stdout, result.stdout


MEMLOCK_BODY = """
    import ctypes, resource
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    probe = ctypes.create_string_buffer(1 << 16)
    can_lock = libc.mlock(probe, 1 << 16) == 0
    if can_lock:
        libc.munlock(probe, 1 << 16)
    data = [{"x": np.full(10_000, i, np.float32)} for i in range(30)]
    with stream(data, backend="ring", prefetch=2, pin_memory=True) as s:
        held = [next(s) for _ in range(3)]
        # Read while the slots are alive (after the end they are freed), and once no slot is
        # half-allocated: the counters are not one snapshot (slots counts a reservation
        # before its memory and pinning are accounted).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            raw = internals(s).pool.stats()
            if raw["pool_bytes"] == raw["slots"] * 40960:
                break
            time.sleep(0.01)
        stats = s.stats
        locked = internals(s).pool.stats()["locked_slots"]
        values = [float(b["x"][0]) for b in held] + [float(b["x"][0]) for b in s]
    assert values == [float(i) for i in range(30)], values
    print("can_lock", can_lock, "pinned", stats.pinned, "locked", locked, "slots", stats.slots)
"""


def parse_memlock(stdout: str) -> dict[str, str]:
    words = stdout.split()
    return dict(zip(words[::2], words[1::2], strict=False))


def test_memlock_limit_zero_still_streams_and_reports_the_truth():
    """RLIMIT_MEMLOCK=0. As root, CAP_IPC_LOCK lets mlock succeed anyway; either way
    ``stats.pinned`` must say what actually happened (compared with a direct mlock probe)."""
    result = run_script(MEMLOCK_BODY)
    assert result.returncode == 0, result.stderr[-3000:]
    got = parse_memlock(result.stdout)
    assert got["pinned"] == got["can_lock"], result.stdout
    assert (int(got["locked"]) == int(got["slots"])) == (got["can_lock"] == "True"), result.stdout


@pytest.mark.skipif(
    not os.path.exists("/usr/bin/setpriv") or os.geteuid() != 0,
    reason="needs root and setpriv to drop CAP_IPC_LOCK",
)
def test_memlock_limit_zero_without_cap_ipc_lock_reports_unpinned():
    """The same without CAP_IPC_LOCK (what an unprivileged user gets): nothing can be locked,
    the stream still works and reports ``pinned=False``."""
    command = [
        "/usr/bin/setpriv",
        "--inh-caps=-ipc_lock",
        "--bounding-set=-ipc_lock",
        "--",
        *python_script(MEMLOCK_BODY),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    got = parse_memlock(result.stdout)
    assert got["can_lock"] == "False", result.stdout
    assert got["pinned"] == "False" and got["locked"] == "0", result.stdout


def test_mlock_probe_helper_is_meaningful():
    """Guard for the two tests above: the ctypes probe really calls mlock."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(4096)
    if libc.mlock(buffer, 4096) == 0:
        assert libc.munlock(buffer, 4096) == 0
    else:
        assert ctypes.get_errno() in (1, 12)  # EPERM, ENOMEM
