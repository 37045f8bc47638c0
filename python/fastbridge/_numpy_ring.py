"""The slot pool and ready queue in pure Python and NumPy: the fallback when the Rust core is
not built, and the comparison path in the benchmark.

They mirror ``fastbridge._core.SlotPool`` and ``ReadyQueue`` method for method, so the stream
drives both the same way. A slot is free again once every view exported from it is gone: each
view goes to JAX through DLPack, NumPy's capsule keeps it alive until JAX's deleter runs, and a
weak reference then puts itself on the pool's return queue. That callback is
``SimpleQueue.put`` (C, reentrant), not Python code, which a Ctrl-C could interrupt as it
starts ("Exception ignored", and the slot never back). The pool counts the returns on that
queue first whenever it looks at its slots, so a slot whose views are gone is free even while
its return is on the way, as in the core, where the last reference's drop frees it at once.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import Any

import numpy as np

from ._leaves import COPY, I64_TO_I32, U64_TO_U32
from ._native import (
    DLPACK_TYPE_CODES,
    LEAF_ALIGN,
    NARROWINGS,
    PAGE_SIZE,
    PARALLEL_THRESHOLD,
)
from ._numpy_queue import NumpyQueue, deadline_of
from .errors import CoreRangeError, core_error

# Conversion code -> the dtype it reads and the narrower dtype it writes.
_SOURCE = {code: np.dtype(source) for source, (_, code) in NARROWINGS.items()}
_TARGET = {code: np.dtype(target) for target, code in NARROWINGS.values()}
# (DLPack code, bits) -> the dtype of the NumPy view exported for it. NumPy cannot export
# bfloat16 through DLPack: its view is uint16 and the caller bitcasts.
_DLPACK_DTYPES = {
    code_bits: np.dtype("uint16" if name == "bfloat16" else name)
    for name, code_bits in DLPACK_TYPE_CODES.items()
}


def _aligned_buffer(nbytes: int) -> np.ndarray:
    capacity = max(PAGE_SIZE, -(-nbytes // PAGE_SIZE) * PAGE_SIZE)
    raw = np.zeros(capacity + PAGE_SIZE, dtype=np.uint8)
    start = (-raw.ctypes.data) % PAGE_SIZE
    return raw[start : start + capacity]


class _Slot:
    __slots__ = ("buffer", "id", "refs", "views")
    _ids = itertools.count(1)

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer = buffer
        self.id = next(self._ids)  # never reused, unlike the buffer's address
        self.refs = 0  # the producer's slot, if not released yet, and each live view
        self.views: list[_View] = []  # kept so that their callbacks run


class _View(weakref.ref):  # type: ignore[type-arg]
    # Names its slot by id, not the slot: the return queue may outlive the pool and its memory.
    __slots__ = ("slot_id",)
    slot_id: int


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
            within = f"fill {index}"
            if conversion != COPY and conversion not in _SOURCE:
                raise core_error("unknown_conversion", within, code=conversion)
            if not 0 <= source < sources:
                raise core_error("fill_source", within, source=source, sources=sources)
            unit = 1 if conversion == COPY else _SOURCE[conversion].itemsize
            if length % unit:
                raise core_error("fill_units", within, length=length, start=start, unit=unit)
            written = length if conversion == COPY else length // 2
            checked.append((index, source, start, length, offset, conversion, written))
        checked.sort(key=lambda fill: fill[4])
        for a, b in itertools.pairwise(checked):
            if a[4] + a[6] > b[4]:
                raise core_error("fills_overlap", first=a[0], second=b[0])
        self.fills = [fill[:6] for fill in checked]
        self.sources = sources
        self.leaves = [
            (offset, list(shape), code, bits) for offset, shape, code, bits, _ in exports
        ]
        ends = [fill[4] + fill[6] for fill in checked]
        for index, (offset, shape, _, bits, _) in enumerate(exports):
            if offset % LEAF_ALIGN:
                raise core_error("unaligned", f"export {index}", offset=offset, align=LEAF_ALIGN)
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

    def _get(self) -> _Slot:
        if self._slot is None:
            raise core_error("released")
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

    cuda = False  # NumPy can neither register memory with CUDA nor lock it
    locked = False

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
            raise core_error("layout_sources", expected=layout.sources, given=len(sources))
        self._fill(sources, layout)
        return [self.export(*leaf) for leaf in layout.leaves]

    def _fill(self, sources: list[np.ndarray], layout: NumpyLayout) -> None:
        slot = self._get()
        if self._exported:
            raise core_error("already_exported")
        if layout.nbytes > slot.buffer.nbytes:
            raise core_error("layout_too_large", needed=layout.nbytes, capacity=slot.buffer.nbytes)
        started = time.perf_counter()
        copied = 0
        for index, source, start, length, offset, conversion in layout.fills:
            array = sources[source]
            if not array.flags.c_contiguous:
                raise core_error("not_contiguous", buffer=f"source {source}")
            if start + length > array.nbytes:
                end, size = start + length, array.nbytes
                raise core_error("past_source", f"fill {index}", start=start, end=end, size=size)
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
        view = _View(inner, self._ring._returns.put)
        view.slot_id = slot.id
        slot.views.append(view)
        slot.refs += 1
        # The view handed out sees `inner` through a DLPack capsule: NumPy collapses a view of
        # a view onto the array that owns the memory (the slot's buffer), so a view someone
        # takes of a plain view would outlive it and free the slot early; a view of this one
        # stops at the capsule, which keeps `inner`, and with it the slot, referenced.
        return np.from_dlpack(inner)

    def release(self) -> None:
        if self._slot is not None:
            slot, self._slot = self._slot, None
            self._ring._release(slot)


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
            raise core_error("at_least_one", name="slots", value=slots)
        if copy_threads < 1:
            raise core_error("at_least_one", name="copy_threads", value=copy_threads)
        del lock, cuda  # NumPy can neither pin memory nor register it with CUDA
        self._copy_threads = copy_threads
        self._copier: ThreadPoolExecutor | None = None  # started by the first large copy
        self._target_slots = slots
        self._max_bytes = max_bytes
        self._queue = queue
        # RLock: close() may run (a stream's finalizer) while this thread holds the lock.
        # Entered directly (see NumpyQueue), never through a Condition.
        self._lock = threading.RLock()
        # Views gone (a _View) and wake-ups (None), put from any thread without a lock; a
        # producer waiting for a slot blocks on it.
        self._returns: SimpleQueue[_View | None] = SimpleQueue()
        self._held: dict[int, _Slot] = {}  # leased slots by id
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
        # held the lock at that moment: the child must never wait on it (see _release, close).
        self._pid = os.getpid()
        if queue is not None:
            queue._feed(self)

    def _wake(self) -> None:
        self._returns.put(None)

    def acquire(self, nbytes: int, timeout: float | None = None) -> NumpySlot:
        deadline = deadline_of(timeout)
        while True:
            with self._lock:
                slot = self._take(nbytes)
            if slot is not None:
                return NumpySlot(self, slot)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise core_error("slot_timeout")
            try:  # until a view is gone, a slot released, the consumer starving, or close()
                event = self._returns.get(timeout=remaining)
            except Empty:
                continue
            self._returns.put(event)  # counted by _take, under the lock

    def _take(self, nbytes: int) -> _Slot | None:
        """A slot of ``nbytes`` or more, or ``None``: wait. As the core chooses; lock held."""
        self._reclaim()
        if self._closed:
            raise core_error("closed")
        if self._free:
            slot = self._free.popleft()
            if slot.buffer.nbytes < nbytes:  # batches grew: replace the slot, never truncate
                self._forget(slot)
                slot = self._allocate(nbytes, grown=False)
        elif self._slots < self._target_slots:
            slot = self._allocate(nbytes, grown=False)
        elif self._queue is not None and self._queue.starving():
            slot = self._allocate(nbytes, grown=True)
        else:
            return None
        slot.refs = 1
        self._held[slot.id] = slot
        self._leased += 1
        return slot

    def _allocate(self, nbytes: int, *, grown: bool) -> _Slot:
        # Checked against the bytes asked for, not the whole pages allocated, as the core does.
        if self._max_bytes is not None and self._bytes + nbytes > self._max_bytes:
            # Only slots that batches still reference count against the cap: count the views
            # gone meanwhile, and give free slots back, before refusing.
            self._reclaim()
            while self._free:
                self._forget(self._free.popleft())
        if self._max_bytes is not None and self._bytes + nbytes > self._max_bytes:
            raise core_error(
                "pool_exhausted", max_bytes=self._max_bytes, held=self._bytes, requested=nbytes
            )
        slot = _Slot(_aligned_buffer(nbytes))
        self._slots += 1
        self._bytes += slot.buffer.nbytes
        self._grown += int(grown)
        return slot

    def _forget(self, slot: _Slot) -> None:
        """Stop counting an unleased slot (its memory goes with the last reference)."""
        self._slots -= 1
        self._bytes -= slot.buffer.nbytes

    def _reclaim(self) -> None:
        """Count every view reported gone. The caller holds the lock."""
        if os.getpid() != self._pid:
            return  # a forked child: leave the inherited slots alone
        while True:
            try:
                event = self._returns.get_nowait()
            except Empty:
                return
            if event is not None:
                self._unref(event.slot_id)

    def _release(self, slot: _Slot) -> None:  # NumpySlot.release
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._unref(slot.id)
        self._wake()  # the slot may be free: a producer may be waiting (another thread's)

    def _unref(self, slot_id: int) -> None:
        slot = self._held[slot_id]
        slot.refs -= 1
        if slot.refs:
            return
        del self._held[slot_id]
        slot.views.clear()
        self._leased -= 1
        if self._closed:
            self._forget(slot)
        else:
            self._free.append(slot)

    def _copy(self, dest: np.ndarray, source: np.ndarray) -> None:
        """``dest[...] = source`` (converting), split across threads when it is large."""
        threads = self._copy_threads
        if threads == 1 or source.nbytes < PARALLEL_THRESHOLD or source.size < threads:
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
            self._reclaim()
            while self._free:
                self._forget(self._free.popleft())
            copier, self._copier = self._copier, None
        self._wake()
        if copier is not None:
            copier.shutdown(wait=False)  # its threads exit once a running fill's parts finish

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._reclaim()
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
