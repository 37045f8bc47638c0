"""The physical limit of any handoff that copies: memcpy, the core's ``copy_into`` and a ring
slot fill, on buffers of the same size."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def touched(nbytes: int) -> np.ndarray:
    """``nbytes`` of memory with every page already faulted in."""
    out = np.empty(nbytes, np.uint8)
    out.fill(1)  # fault every page in now, not inside the timed copies
    return out


class ParallelCopy:
    """``np.copyto`` split into ``threads`` slices on a persistent pool (NumPy drops the GIL
    while it copies), so the baseline pays no thread start-up per copy."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def __call__(self, dest: np.ndarray, source: np.ndarray) -> None:
        if self.pool is None:
            np.copyto(dest, source)
            return
        bounds = np.linspace(0, source.size, self.threads + 1, dtype=np.int64)
        futures = [
            self.pool.submit(np.copyto, dest[a:b], source[a:b])
            for a, b in itertools.pairwise(bounds[1:])
        ]
        np.copyto(dest[: bounds[1]], source[: bounds[1]])
        for future in futures:
            future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def copy_rates(
    nbytes: int, threads: int, repeats: int, copies: int
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved samples of memcpy (NumPy, ``threads`` threads), the core's ``copy_into`` and
    a full ring slot fill (acquire, fill, release) of ``nbytes``; seconds and CPU per copy."""
    from .. import core_available

    source = touched(nbytes)
    dest = touched(nbytes)
    memcpy = ParallelCopy(threads)
    ways: dict[str, Callable[[], object]] = {"memcpy": lambda: memcpy(dest, source)}
    if core_available():
        from .._native import core as _core

        assert _core is not None
        ways["copy_into"] = lambda: _core.copy_into(dest, 0, source, 0, threads)
        ring = _core.SlotPool(slots=2, copy_threads=threads)
        work = [(source, 0, 0)]

        def fill() -> None:
            slot = ring.acquire(nbytes)
            slot.fill(work)
            slot.release()

        ways["ring_fill"] = fill
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            way()  # warm: the ring allocates its slot on the first fill
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(copies):
                way()
            wall = (time.perf_counter() - wall0) / copies
            cpu = (time.process_time() - cpu0) / copies
            out[name].append({"seconds": wall, "cpu_s": cpu, "gbps": nbytes / wall / 1e9})
    memcpy.close()
    return out
