"""One run of a stream's producer, and the registry that closes every run at exit.

A :class:`Pipeline` is everything one producer run owns, from one starting position: its
``Reader`` (with the tf.data log and padder), its engine (the backend's queue, converter and
slots), and the position of the last batch delivered.
The producer thread references the pipeline, never the ``Stream``, so an abandoned stream can
be garbage-collected (which closes it); ``Stream.set_state()`` replaces the pipeline in one
store.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import Any

import jax

from . import _backends
from ._position import BATCH, ERROR, Position, Reader
from .errors import StreamClosedError

JOIN_SECONDS = 1.0
"""How long closing a run waits for its producer thread (it may be inside a slow read)."""


class Pipeline:
    """One run of the producer, from the reader's starting position: its reader (with the
    tf.data log and padder) and engine. The thread references this, never the ``Stream``, so
    an abandoned stream can be garbage-collected (which closes it); ``set_state()`` replaces
    it in one store."""

    def __init__(self, reader: Reader, engine: _backends.Engine, x64: bool) -> None:
        self.reader = reader
        self.engine = engine
        self.log = reader.log
        self.padder = reader.padder
        self.first = reader.start.batches  # where this run started
        # The position of the last batch the consumer delivered: replaced in one step by the
        # consumer, read in one step by state() and by the reader (to forget delivered batches).
        self.cursor = reader.start
        self.x64 = x64
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self.source_seconds = 0.0
        self.convert_seconds = 0.0
        self.pid = os.getpid()

    @property
    def busy_seconds(self) -> float:
        """Producer time spent reading and converting, not waiting for a free slot."""
        busy = self.source_seconds + self.convert_seconds - self.engine.acquire_seconds
        return max(0.0, busy)

    def step(self) -> tuple[int, Any, int, Position | None]:
        """Read and prepare one batch: ``(kind, payload, nbytes, position)`` where ``kind`` is
        ``BATCH``, ``END`` or ``ERROR`` (then ``payload`` is the exception)."""
        started = time.perf_counter()
        kind, item, position = self.reader.read(self.cursor.batches)
        read = time.perf_counter()
        self.source_seconds += read - started
        if kind != BATCH:
            return (kind, item, 0, None)
        assert position is not None
        try:
            payload, nbytes = self.engine.prepare(item, position.batches - 1)
        except Exception as error:  # e.g. a leaf that does not fit: the stream ends here
            return (ERROR, error, 0, None)
        finally:
            self.convert_seconds += time.perf_counter() - read
        return (BATCH, payload, nbytes, position)

    def produce(self) -> None:
        # JAX's x64 switch can be thread-local (``with jax.enable_x64():``); the producer
        # imports arrays, so it must see the consumer's setting from when the stream was made.
        queue = self.engine.queue
        with jax.enable_x64(self.x64):
            try:
                while not self.closed.is_set():
                    entry = self.step()
                    if not queue.publish(entry) or entry[0] != BATCH:
                        return
                    del entry
            except StreamClosedError:
                return
            except BaseException as error:  # delivered in order, after every good batch
                if not self.closed.is_set():
                    queue.publish((ERROR, error, 0, None))
            finally:
                self.reader.close()

    def close(self, join: float = JOIN_SECONDS) -> None:
        if self.closed.is_set():
            self._join(join)
            return
        self.closed.set()
        if os.getpid() != self.pid:
            # A forked child: the producer thread and any lock it held stayed in the parent.
            return
        self.engine.close()
        # The producer may be inside the source's own next() (e.g. a slow tf.data map);
        # it notices the close as soon as that returns. Do not hang the caller on it.
        self._join(join)

    def _join(self, seconds: float) -> None:
        thread = self.thread
        if seconds and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=seconds)

    def stopped(self) -> bool:
        """Whether the producer has left the source for good (or never started)."""
        return self.thread is None or not self.thread.is_alive()


# Streams still open, closed together at interpreter exit within one bounded wait (closing
# them one by one would wait up to JOIN_SECONDS for each producer blocked in its source).
OPEN: weakref.WeakSet[Pipeline] = weakref.WeakSet()


@atexit.register
def close_all_at_exit() -> None:
    pipelines = list(OPEN)
    for pipeline in pipelines:
        pipeline.close(join=0)
    deadline = time.monotonic() + JOIN_SECONDS
    for pipeline in pipelines:
        thread = pipeline.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
