"""Exactly once: every batch of the source reaches the consumer once, in order, with the values
the source produced, across any chain of ``state()`` and resume, Ctrl-C, source errors,
threads and backends.

The model is "the source, delivered once": a hypothesis state machine runs random sequences of
``next()`` (dropping or holding the batch), ``next()`` with a SIGINT delivered at a random
moment (caught, then iteration goes on, as a notebook user would), ``state()`` (also from
another thread while the consumer iterates), resume from any saved state under a random
backend and prefetch, transient source errors at random batches, and ``pad_last``. The
invariant: the batch delivered at stream position ``k`` is always the same batch (for an
unseeded shuffle, the one first seen at ``k``), the positions delivered are consecutive, the
batches held never change, and when the chain reaches the end every row of the source was
delivered exactly once.

The budget fits CI; ``FASTBRIDGE_MODEL_EXAMPLES=200 make soak`` runs the long profile.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import fastbridge
import numpy as np
import pytest
import tensorflow as tf
from conftest import ALL_BACKENDS
from fastbridge import SourceError, stream
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

ROWS = 4 * 10 - 2  # ten batches of four rows; the last one has two
BATCH = 4
BATCHES = -(-ROWS // BATCH)
KINDS = ["list", "stateful", "tf", "tf-checkpoint", "tf-shuffle"]

# A transient failure: the next read of this batch (row, for tf.data) raises once.
FAIL: dict[str, int | None] = {"batch": None}


class TransientError(OSError):
    pass


def _maybe_fail(batch: int) -> None:
    if FAIL["batch"] == batch:
        FAIL["batch"] = None
        raise TransientError(f"read of batch {batch} failed")


def batch_of(b: int) -> dict[str, np.ndarray]:
    rows = np.arange(b * BATCH, min(b * BATCH + BATCH, ROWS))
    return {"x": np.repeat(rows[:, None].astype(np.float32), 3, axis=1), "i": rows}


class ListSource:
    """A re-iterable source without state: resumed by replaying."""

    def __iter__(self):
        for b in range(BATCHES):
            time.sleep(0.001)  # slow enough that next() sometimes waits
            _maybe_fail(b)
            yield batch_of(b)


class StatefulIterator:
    """A Grain-style iterator whose get_state() returns its own live dict, holding bytes and a
    tuple: snapshots must be copies, and must come back exactly as they were."""

    def __init__(self) -> None:
        self._state = {"next": 0, "blob": b"\x00grain\xff", "pair": (1, "a")}

    def __iter__(self):
        return self

    def __next__(self):
        b = self._state["next"]
        if b >= BATCHES:
            raise StopIteration
        time.sleep(0.001)
        _maybe_fail(b)  # fails before advancing, as a transient read error would
        self._state["next"] = b + 1
        return batch_of(b)

    def get_state(self):
        return self._state

    def set_state(self, state):
        assert state["blob"] == b"\x00grain\xff" and state["pair"] == (1, "a"), state
        self._state = dict(state)


class StatefulSource:
    def __iter__(self):
        return StatefulIterator()


def _tf_source(shuffle: bool, failing: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.range(ROWS)
    if shuffle:
        ds = ds.shuffle(ROWS)  # unseeded: only checkpoint=True resumes it exactly
    if failing:

        def check(row):
            _maybe_fail(int(row) // BATCH)
            return row

        ds = ds.map(lambda r: tf.py_function(check, [r], tf.int64))
    ds = ds.map(lambda r: {"x": tf.fill([3], tf.cast(r, tf.float32)), "i": r})
    return ds.batch(BATCH)


def source_for(kind: str, failing: bool):
    if kind == "list":
        return ListSource()
    if kind == "stateful":
        return StatefulSource()
    return _tf_source(kind == "tf-shuffle", failing)


def rows_of(delivered, padded: bool) -> tuple[int, ...]:
    """The source rows a delivered batch holds, after checking its values."""
    if padded:
        batch, mask = delivered
        mask = np.asarray(mask)
        assert mask.shape == (BATCH,), mask.shape
    else:
        batch, mask = delivered, None
    x, i = np.asarray(batch["x"]), np.asarray(batch["i"])
    assert i.dtype == np.int32, i.dtype  # int64 narrowed (x64 off), never wrapped
    if mask is not None:
        assert not mask[mask.argmin() :].any() or mask.all(), mask  # real rows come first
        x, i = x[mask], i[mask]
    np.testing.assert_array_equal(x, np.repeat(i[:, None].astype(np.float32), 3, axis=1))
    return tuple(int(r) for r in i)


class Interrupter:
    """SIGINT delivered to the main thread at a random moment of one operation. The handler
    raises ``KeyboardInterrupt`` only while armed, so a late signal never hits the harness."""

    def __init__(self) -> None:
        self.armed = False
        self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.armed:
            raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.previous)


class ExactlyOnce(RuleBasedStateMachine):
    kind = "list"

    @initialize(
        backend=st.sampled_from([*ALL_BACKENDS, "auto"]),
        prefetch=st.integers(1, 4),
        pad_last=st.booleans(),
        failing=st.booleans(),
    )
    def open_first(self, backend, prefetch, pad_last, failing):
        FAIL["batch"] = None
        self.interrupter = Interrupter()
        self.pad_last = pad_last
        self.checkpoint = self.kind in ("tf-checkpoint", "tf-shuffle")
        # tf.data needs a failure point in its graph (a py_function) from the first stream
        # on: a saved iterator state only fits the pipeline that saved it.
        self.failing = failing or not self.kind.startswith("tf")
        self.reference: dict[int, tuple[int, ...]] = {}  # position -> rows first seen there
        self.next_position = 0
        self.held: list[tuple[int, object]] = []
        self.saved: list[dict] = []
        self.ended = False  # StopIteration or SourceError: only a resume goes on
        self.errored = False
        self.stream = None
        self._open(backend, prefetch, None)

    def _open(self, backend, prefetch, state):
        if self.stream is not None:
            self.stream.close()
        self.stream = stream(
            source_for(self.kind, self.failing),
            backend=backend,
            prefetch=prefetch,
            pad_last=self.pad_last,
            checkpoint=self.checkpoint,
            state=state,
        )
        self.next_position = state["batches"] if state else 0
        self.ended = self.errored = False

    # -- the model ------------------------------------------------------------------------
    def _receive(self, delivered) -> None:
        rows = rows_of(delivered, self.pad_last)
        position = self.next_position
        expected = self.reference.setdefault(position, rows)
        assert rows == expected, f"position {position}: got rows {rows}, expected {expected}"
        self.next_position += 1

    def _take(self, hold: bool) -> None:
        try:
            delivered = next(self.stream)
        except StopIteration:
            self._ended()
            return
        except SourceError as error:
            self._failed(error)
            return
        self._receive(delivered)
        if hold:
            self.held.append((self.next_position - 1, delivered))

    def _ended(self) -> None:
        assert self.next_position == BATCHES, f"ended early at {self.next_position}"
        self.ended = True
        seen = sorted(r for rows in self.reference.values() for r in rows)
        assert seen == list(range(ROWS)), "a row was lost or delivered twice"

    def _failed(self, error: SourceError) -> None:
        # tf.data reports the py_function's exception inside its own error type.
        assert "read of batch" in str(error) and "TransientError" in str(error), error
        assert error.batch_index == self.next_position, (error.batch_index, self.next_position)
        self.ended = self.errored = True
        with pytest.raises(StopIteration):
            next(self.stream)

    # -- rules ------------------------------------------------------------------------------
    # Rules never depend on outcomes through preconditions or draws: whether the producer
    # read a failing batch ahead is a matter of timing, and hypothesis needs the same draws
    # every time it replays an example. A rule that cannot apply does nothing.

    @rule(hold=st.booleans())
    def take(self, hold):
        if not self.ended:
            self._take(hold)

    @rule(delay=st.floats(0, 0.004))
    def take_while_interrupted(self, delay):
        """Ctrl-C at a random moment of next(); the user catches it and iterates on."""
        if self.ended:
            return
        main = threading.main_thread().ident
        timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        self.interrupter.armed = True
        got = []
        interrupts = 0
        while True:
            try:
                for delivered in self.stream:  # a for loop: no gap between __next__ and us
                    got += (delivered,)
                    break
                break
            except KeyboardInterrupt:
                interrupts += 1
                assert interrupts < 100, "one SIGINT keeps interrupting next()"
            except SourceError as error:
                got += (error,)
                break
        self.interrupter.armed = False
        timer.cancel()
        timer.join()
        if not got:
            self._ended()
        elif isinstance(got[0], SourceError):
            self._failed(got[0])
        else:
            self._receive(got[0])

    @rule(pick=st.integers(0, 1000))
    def drop_held(self, pick):
        if self.held:
            self.held.pop(pick % len(self.held))

    @rule(interrupt=st.booleans())
    def save(self, interrupt):
        if interrupt:
            main = threading.main_thread().ident
            timer = threading.Timer(0.0005, signal.pthread_kill, (main, signal.SIGINT))
            timer.start()
            self.interrupter.armed = True
        while True:
            try:
                state = self.stream.state()
                break
            except KeyboardInterrupt:
                continue
        self.interrupter.armed = False
        if interrupt:
            timer.cancel()
            timer.join()
        assert state["batches"] == self.next_position, (state["batches"], self.next_position)
        self.saved.append(json.loads(json.dumps(state)))

    @rule(takes=st.integers(1, 3))
    def save_from_another_thread(self, takes):
        """state() while the consumer iterates: batches and source state always agree (a
        resume from it is checked like any other)."""
        if self.ended:
            return
        states: list[dict] = []
        before = self.next_position
        s = self.stream
        saver = threading.Thread(target=lambda: states.extend(s.state() for _ in range(3)))
        saver.start()
        for _ in range(takes):
            if not self.ended:
                self._take(hold=False)
        saver.join()
        for state in states:
            assert before <= state["batches"] <= self.next_position, state["batches"]
            self.saved.append(json.loads(json.dumps(state)))

    @rule(ahead=st.integers(0, 3))
    def fail_soon(self, ahead):
        """The next read of a batch a little ahead fails once (a transient error)."""
        if self.failing and not self.ended:
            FAIL["batch"] = min(self.next_position + ahead, BATCHES - 1)

    @rule(
        older=st.booleans(),
        pick=st.integers(0, 1000),
        backend=st.sampled_from([*ALL_BACKENDS, "auto"]),
        prefetch=st.integers(1, 4),
    )
    def resume(self, older, pick, backend, prefetch):
        """Resume from a new state (or an older one: a job rolled back to an earlier
        checkpoint) under any backend and prefetch."""
        if older and self.saved:
            state = self.saved[pick % len(self.saved)]
        else:
            state = json.loads(json.dumps(self.stream.state()))
        self._open(backend, prefetch, state)

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def held_batches_never_change(self):
        for position, delivered in getattr(self, "held", []):
            assert rows_of(delivered, self.pad_last) == self.reference[position], position

    def teardown(self):
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        FAIL["batch"] = None
        if hasattr(self, "interrupter"):
            self.interrupter.restore()


EXAMPLES = int(os.environ.get("FASTBRIDGE_MODEL_EXAMPLES", "12"))
MODEL_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    # No "explain" phase: its line tracing makes TensorFlow's graph building crawl.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("FASTBRIDGE_HYPOTHESIS_RANDOM") != "1",
)


def _machine(kind: str):
    machine = type(f"ExactlyOnce_{kind}", (ExactlyOnce,), {"kind": kind})
    return machine.TestCase


@pytest.mark.parametrize("kind", KINDS)
def test_every_batch_exactly_once(kind):
    case = _machine(kind)
    case.settings = MODEL_SETTINGS
    case("runTest").runTest()


def test_the_model_catches_a_lost_batch(monkeypatch):
    """Negative control: a stream that silently drops one batch on resume must fail the
    model, or the model proves nothing."""
    real = fastbridge._stream.Reader.read

    def lossy(self, delivered):
        kind, item, position = real(self, delivered)
        if position is not None and position.batches == 3:
            kind, item, position = real(self, delivered)  # batch 2 vanishes
        return kind, item, position

    monkeypatch.setattr(fastbridge._stream.Reader, "read", lossy)
    case = _machine("list")
    case.settings = settings(
        MODEL_SETTINGS, max_examples=30, database=None, report_multiple_bugs=False
    )
    with pytest.raises(AssertionError, match=r"position|ended early"):
        case("runTest").runTest()
