"""The ready queue in pure Python: the twin of ``fastbridge._core.ReadyQueue``, used with
the NumPy slot pool (``_numpy_ring``) when the Rust core is not built, and by the benchmark's
pure-NumPy comparison."""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ._native import FOREVER, MAX_QUEUE_CAPACITY, SIGNAL_POLL
from .errors import core_error

if TYPE_CHECKING:
    from ._numpy_ring import NumpySlotPool


def deadline_of(timeout: float | None) -> float | None:
    """The monotonic time a wait of ``timeout`` seconds ends (``None``: never), checked as the
    core checks it."""
    if timeout is None:
        return None
    if not timeout >= 0:  # NaN too
        raise core_error("bad_timeout", timeout=timeout)
    return None if timeout >= FOREVER else time.monotonic() + timeout


class NumpyQueue:
    """Pure-Python twin of ``fastbridge._core.ReadyQueue`` (same constructor and methods).

    ``pop_into`` moves an item into the caller's list with no call in between that could
    raise ``KeyboardInterrupt``: a Ctrl-C either leaves the item queued or finds it in the list.
    """

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= MAX_QUEUE_CAPACITY:
            raise core_error("queue_capacity", limit=MAX_QUEUE_CAPACITY, capacity=capacity)
        self._capacity = capacity
        # Enter the RLock, never the Condition: Condition.__enter__ is Python code, and a
        # KeyboardInterrupt raised in it after the lock was taken would leave it held for ever.
        # ``with`` on the RLock itself takes it in C, with no point for a signal in between.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._ready: collections.deque[Any] = collections.deque()
        self._closed = False
        self._consumer_waiting = False
        self._pools: list[NumpySlotPool] = []
        self._pid = os.getpid()

    def _feed(self, pool: NumpySlotPool) -> None:
        if self._pools:
            raise core_error("queue_has_pool")
        self._pools.append(pool)

    def starving(self) -> bool:
        """The consumer is blocked and nothing is ready (read without the lock)."""
        return self._consumer_waiting and not self._ready

    def _wake_pools(self) -> None:
        for pool in self._pools:
            pool._wake()

    def publish(self, item: Any) -> bool:
        with self._lock:
            while not self._closed and len(self._ready) >= self._capacity:
                self._cond.wait()
            if self._closed:
                return False
            self._ready.append(item)
            self._cond.notify_all()
        self._wake_pools()
        return True

    def pop_into(self, holder: list[Any], timeout: float | None = None) -> bool:
        deadline = deadline_of(timeout)
        waiting = False
        try:
            with self._lock:
                while not self._ready:
                    if self._closed:
                        raise core_error("closed")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    if not waiting:
                        waiting = self._consumer_waiting = True
                        self._wake_pools()
                    wait = SIGNAL_POLL if remaining is None else min(SIGNAL_POLL, remaining)
                    self._cond.wait(wait)  # a KeyboardInterrupt here leaves the item queued
                # Subscripts and in-place concatenation call no Python-level function, so no
                # signal handler can run between taking the item and storing it in holder.
                holder += (self._ready[0],)
                del self._ready[0]
                self._cond.notify_all()
                return True
        finally:
            if waiting:
                self._consumer_waiting = False
                with self._lock:
                    self._cond.notify_all()

    def close(self) -> None:
        if os.getpid() != self._pid:
            self._closed = True
            return
        with self._lock:
            self._closed = True
            dropped = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        self._wake_pools()
        del dropped  # outside the lock: dropping batches runs finalizers that take locks

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._ready)
