"""The slot pool and ready queue in pure Python and NumPy: the fallback when the Rust core is
not built, and the comparison path in the benchmark.

They mirror ``fastbridge._core.SlotPool`` and ``ReadyQueue`` method for method, so the stream
drives both the same way.
A slot returns to the free list when every view exported from it has been garbage-collected:
each exported view goes to JAX through DLPack, NumPy's capsule keeps that view alive until
JAX's deleter runs, and a ``weakref.finalize`` on the view then gives the slot back.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._leaves import COPY, I64_TO_I32, U64_TO_U32
from ._native import DLPACK_TYPE_CODES, LEAF_ALIGN, MAX_QUEUE_CAPACITY, NARROWINGS, PAGE_SIZE
from .errors import CoreRangeError, PoolExhaustedError, SlotTimeoutError, StreamClosedError

_SIGNAL_POLL = 0.05
# Leaves at least this large are copied in parts on ``copy_threads`` threads (NumPy releases
# the GIL while it copies), as the core does above the same size (copy.rs).
PARALLEL_BYTES = 4 << 20

# Conversion code -> the dtype it reads and the narrower dtype it writes.
_SOURCE = {code: np.dtype(source) for source, (_, code) in NARROWINGS.items()}
_TARGET = {code: np.dtype(target) for target, code in NARROWINGS.values()}
# (DLPack code, bits) -> the dtype of the NumPy view exported for it. NumPy cannot export
# bfloat16 through DLPack: its view is uint16 and the caller bitcasts.
_DLPACK_DTYPES = {
    code_bits: np.dtype("uint16" if name == "bfloat16" else name)
    for name, code_bits in DLPACK_TYPE_CODES.items()
}


_FOREVER = 365 * 24 * 3600.0  # as the core: a wait past a year is a wait without end


def _deadline(timeout: float | None) -> float | None:
    """The monotonic time a wait of ``timeout`` seconds ends (``None``: never), checked as the
    core checks it."""
    if timeout is None:
        return None
    if not timeout >= 0:  # NaN too
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout}")
    return None if timeout >= _FOREVER else time.monotonic() + timeout


def _aligned_buffer(nbytes: int) -> np.ndarray:
    capacity = max(PAGE_SIZE, -(-nbytes // PAGE_SIZE) * PAGE_SIZE)
    raw = np.zeros(capacity + PAGE_SIZE, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE_SIZE
    return raw[start : start + capacity]


class _Slot:
    __slots__ = ("buffer", "id", "refs")
    _ids = itertools.count(1)

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self.id = next(self._ids)  # never reused, unlike the buffer's address
        self.refs = 0


class NumpyLayout:
    """Pure-NumPy twin of ``fastbridge._core.Layout`` (same constructor, same checks)."""

    def __init__(
        self,
        sources: int,
        fills: list[tuple[int, int, int, int, int]],
        exports: list[tuple[int, list[int], int, int, int]],
    ) -> None:
        checked = []
        for index, (source, start, length, offset, conversion) in enumerate(fills):
            if conversion != COPY and conversion not in _SOURCE:
                raise ValueError(f"fill {index}: unknown conversion code {conversion}")
            if not 0 <= source < sources:
                raise ValueError(f"fill {index}: source {source} of {sources}")
            unit = 1 if conversion == COPY else _SOURCE[conversion].itemsize
            if length % unit:
                raise ValueError(
                    f"fill {index}: {length} bytes from byte {start} are not whole "
                    f"{unit}-byte elements"
                )
            written = length if conversion == COPY else length // 2
            checked.append((index, source, start, length, offset, conversion, written))
        checked.sort(key=lambda fill: fill[4])
        for a, b in itertools.pairwise(checked):
            if a[4] + a[6] > b[4]:
                raise ValueError(f"fills {a[0]} and {b[0]} overlap in the slot")
        self.fills = [fill[:6] for fill in checked]
        self.sources = sources
        self.leaves = [
            (offset, list(shape), code, bits) for offset, shape, code, bits, _ in exports
        ]
        ends = [fill[4] + fill[6] for fill in checked]
        for offset, shape, _, bits, _ in exports:
            if offset % LEAF_ALIGN:
                raise ValueError(f"offset {offset} is not {LEAF_ALIGN}-byte aligned")
            ends.append(offset + int(np.prod(shape, dtype=np.int64)) * (bits // 8))
        self.nbytes = max(ends, default=0)

    @property
    def exports(self) -> int:
        return len(self.leaves)


class NumpySlot:
    """A slot being filled; the same methods as ``fastbridge._core.Slot``."""

    def __init__(self, ring: NumpySlotPool, slot: _Slot) -> None:
        self._ring = ring
        self._slot: _Slot | None = slot
        self._exported = False
        slot.refs = 1

    def _get(self) -> _Slot:
        if self._slot is None:
            raise ValueError("the slot was released")
        return self._slot

    @property
    def address(self) -> int:
        return int(self._get().buffer.ctypes.data)

    @property
    def capacity(self) -> int:
        return int(self._get().buffer.nbytes)

    @property
    def buffer_id(self) -> int:
        return self._get().id

    @property
    def cuda(self) -> bool:
        return False

    @property
    def locked(self) -> bool:
        return False

    def fill(self, leaves: list[tuple[np.ndarray, int, int]]) -> None:
        arrays = [np.asarray(array) for array, _, _ in leaves]
        fills = [
            (n, 0, array.nbytes, offset, conversion)
            for n, (array, (_, offset, conversion)) in enumerate(zip(arrays, leaves, strict=True))
        ]
        self._fill(arrays, NumpyLayout(len(arrays), fills, []))

    def write(self, sources: list[np.ndarray], layout: NumpyLayout) -> list[np.ndarray]:
        """``fastbridge._core.Slot.write``: fill as ``layout`` says, then export its leaves."""
        if len(sources) != layout.sources:
            raise ValueError(f"the layout takes {layout.sources} sources, got {len(sources)}")
        self._fill(sources, layout)
        return [self.export(*leaf) for leaf in layout.leaves]

    def _fill(self, sources: list[np.ndarray], layout: NumpyLayout) -> None:
        slot = self._get()
        if self._exported:
            raise RuntimeError("a slot cannot be written after it has been exported")
        if layout.nbytes > slot.buffer.nbytes:
            raise ValueError(
                f"the layout needs {layout.nbytes} bytes, the slot has {slot.buffer.nbytes}"
            )
        started = time.perf_counter()
        copied = 0
        for index, source, start, length, offset, conversion in layout.fills:
            array = sources[source]
            if not array.flags.c_contiguous:
                raise ValueError(f"source {source} is not C-contiguous")
            if start + length > array.nbytes:
                raise ValueError(
                    f"fill {index}: bytes {start}..{start + length} of a {array.nbytes}-byte source"
                )
            part = array.reshape(-1).view(np.uint8)[start : start + length]
            if conversion == COPY:
                dest = slot.buffer[offset : offset + length]
            else:
                part = part.view(_SOURCE[conversion])
                target = _TARGET[conversion]
                dest = slot.buffer[offset : offset + part.size * target.itemsize].view(target)
                if conversion in (I64_TO_I32, U64_TO_U32) and part.size:
                    info = np.iinfo(target)
                    lo, hi = part.min(), part.max()
                    if lo < info.min or hi > info.max:
                        raise CoreRangeError(index, str(lo if lo < info.min else hi))
            self._ring._copy(dest, part)
            copied += dest.nbytes
        self._ring._count_fill(copied, time.perf_counter() - started)

    def export(
        self, offset: int, shape: list[int], code: int, bits: int, device_id: int = 0
    ) -> np.ndarray:
        del device_id  # NumPy arrays always report CPU device 0
        slot = self._get()
        dtype = np.dtype(_DLPACK_DTYPES[(code, bits)])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        inner = slot.buffer[offset : offset + nbytes].view(dtype).reshape(shape)
        self._exported = True
        slot.refs += 1
        weakref.finalize(inner, self._ring._unref, slot)
        # The view handed out sees `inner` through a DLPack capsule: NumPy collapses a view of
        # a view onto the array that owns the memory (the slot's buffer), so a view someone
        # takes of a plain view would outlive it and free the slot early; a view of this one
        # stops at the capsule, which keeps `inner`, and with it the slot, referenced.
        return np.from_dlpack(inner)

    def release(self) -> None:
        if self._slot is not None:
            slot, self._slot = self._slot, None
            self._ring._unref(slot)


class NumpyQueue:
    """Pure-Python twin of ``fastbridge._core.ReadyQueue`` (same constructor and methods).

    ``pop_into`` moves an item into the caller's list with no call in between that could
    raise ``KeyboardInterrupt``: a Ctrl-C either leaves the item queued or finds it in the list.
    """

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= MAX_QUEUE_CAPACITY:
            raise ValueError(f"capacity must be between 1 and {MAX_QUEUE_CAPACITY}, got {capacity}")
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
            raise ValueError("a NumpyQueue feeds one NumpySlotPool only")
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
        deadline = _deadline(timeout)
        waiting = False
        try:
            with self._lock:
                while not self._ready:
                    if self._closed:
                        raise StreamClosedError("the stream was closed")
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    if not waiting:
                        waiting = self._consumer_waiting = True
                        self._wake_pools()
                    wait = _SIGNAL_POLL if remaining is None else min(_SIGNAL_POLL, remaining)
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


class NumpySlotPool:
    """Pure-NumPy twin of ``fastbridge._core.SlotPool`` (same constructor and methods)."""

    numpy_views = True
    """Exports are NumPy views: they always say CPU device 0, and bfloat16 leaves come out as
    uint16 (NumPy cannot export bfloat16 through DLPack), to be bitcast by the importer."""

    def __init__(
        self,
        *,
        slots: int,
        max_bytes: int | None = None,
        lock: bool = True,
        cuda: bool = False,
        copy_threads: int = 2,
        queue: NumpyQueue | None = None,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if copy_threads < 1:
            raise ValueError(f"copy_threads must be >= 1, got {copy_threads}")
        del lock, cuda  # NumPy can neither pin memory nor register it with CUDA
        self._copy_threads = copy_threads
        self._copier: ThreadPoolExecutor | None = None  # started by the first large copy
        self._target_slots = slots
        self._max_bytes = max_bytes
        self._queue = queue
        # RLock: a finalizer may run (garbage collection) while this thread holds the lock.
        # Entered directly, never through the Condition (see NumpyQueue).
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._free: collections.deque[_Slot] = collections.deque()
        self._slots = 0
        self._bytes = 0
        self._leased = 0
        self._grown = 0
        self._closed = False
        self._fills = 0
        self._bytes_copied = 0
        self._fill_seconds = 0.0
        # After fork() the child inherits this pool but not the producer thread, which may have
        # held the lock at that moment: the child must never wait on it (see _unref, close).
        self._pid = os.getpid()
        if queue is not None:
            queue._feed(self)

    def _wake(self) -> None:
        with self._lock:
            self._cond.notify_all()

    def acquire(self, nbytes: int, timeout: float | None = None) -> NumpySlot:
        deadline = _deadline(timeout)
        with self._lock:
            while True:
                if self._closed:
                    raise StreamClosedError("the stream was closed")
                if self._free:
                    slot = self._free.popleft()
                    if slot.buffer.nbytes < nbytes:
                        self._bytes -= slot.buffer.nbytes
                        self._slots -= 1
                        slot = self._allocate(nbytes, grown=False)
                    break
                if self._slots < self._target_slots:
                    slot = self._allocate(nbytes, grown=False)
                    break
                if self._queue is not None and self._queue.starving():
                    slot = self._allocate(nbytes, grown=True)
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SlotTimeoutError("timed out waiting for a free slot")
                self._cond.wait(remaining)
            self._leased += 1
        return NumpySlot(self, slot)

    def _allocate(self, nbytes: int, *, grown: bool) -> _Slot:
        capacity = max(PAGE_SIZE, -(-nbytes // PAGE_SIZE) * PAGE_SIZE)
        if self._max_bytes is not None and self._bytes + capacity > self._max_bytes:
            # Free slots count against the cap too: give them back before refusing, so that a
            # refusal only ever means memory that batches really hold.
            while self._free:
                freed = self._free.popleft()
                self._slots -= 1
                self._bytes -= freed.buffer.nbytes
        if self._max_bytes is not None and self._bytes + capacity > self._max_bytes:
            raise PoolExhaustedError(
                f"max_pool_bytes={self._max_bytes} reached: the pool already holds "
                f"{self._bytes} bytes in slots that batches still reference, and the next "
                f"batch needs {capacity} more; release batches you keep, or raise max_pool_bytes"
            )
        slot = _Slot(_aligned_buffer(nbytes))
        self._slots += 1
        self._bytes += slot.buffer.nbytes
        self._grown += int(grown)
        return slot

    def _unref(self, slot: _Slot) -> None:
        if os.getpid() != self._pid:
            return  # a forked child: leave the inherited slot alone
        with self._lock:
            slot.refs -= 1
            if slot.refs:
                return
            self._leased -= 1
            if self._closed:
                self._slots -= 1
                self._bytes -= slot.buffer.nbytes
            else:
                self._free.append(slot)
            self._cond.notify_all()

    def _copy(self, dest: np.ndarray, source: np.ndarray) -> None:
        """``dest[...] = source`` (converting), split across threads when it is large."""
        threads = self._copy_threads
        if threads == 1 or source.nbytes < PARALLEL_BYTES or source.size < threads:
            np.copyto(dest, source, casting="unsafe")
            return
        with self._lock:
            if self._copier is None and not self._closed:
                self._copier = ThreadPoolExecutor(threads - 1, "fastbridge-numpy-copy")
            copier = self._copier
        if copier is None:  # closed: the batch is moot, but finish the fill as asked
            np.copyto(dest, source, casting="unsafe")
            return
        flat_dest, flat_source = dest.reshape(-1), source.reshape(-1)
        bounds = [source.size * k // threads for k in range(threads + 1)]
        parts = [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]
        pending = []
        for part in parts[1:]:
            try:
                pending.append(
                    copier.submit(np.copyto, flat_dest[part], flat_source[part], casting="unsafe")
                )
            except RuntimeError:  # shut down by close() meanwhile: finish on this thread
                np.copyto(flat_dest[part], flat_source[part], casting="unsafe")
        np.copyto(flat_dest[parts[0]], flat_source[parts[0]], casting="unsafe")
        for future in pending:
            future.result()

    def _count_fill(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._fills += 1
            self._bytes_copied += nbytes
            self._fill_seconds += seconds

    def close(self) -> None:
        if os.getpid() != self._pid:
            self._closed = True
            return
        with self._lock:
            self._closed = True
            while self._free:
                slot = self._free.popleft()
                self._slots -= 1
                self._bytes -= slot.buffer.nbytes
            self._cond.notify_all()
            copier, self._copier = self._copier, None
        if copier is not None:
            copier.shutdown(wait=False)  # its threads exit once a running fill's parts finish

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "slots": self._slots,
                "slots_free": len(self._free),
                "slots_leased": self._leased,
                "pool_bytes": self._bytes,
                "pool_grown": self._grown,
                "locked_slots": 0,
                "locked_bytes": 0,
                "cuda_slots": 0,
                "fills": self._fills,
                "bytes_copied": self._bytes_copied,
                "fill_seconds": self._fill_seconds,
            }
