"""One timed sample of host-to-device throughput, and the host batches it reads: a fastbridge
stream (``ring`` or ``numpy``) or ``jax.device_put`` of pageable memory.

    >>> arrays = host_arrays(1024, 2)
    >>> [float(a[0]) for a in cycle(arrays, 3)]
    [1.0, 2.0, 1.0]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import jax
import numpy as np
import numpy.typing as npt
from fastbridge import stream
from plan import PREFETCH

Array = npt.NDArray[Any]
Method = Literal["ring", "numpy"]


def host_arrays(nbytes: int, count: int) -> list[Array]:
    """``count`` distinct float32 arrays of ``nbytes`` (cycled, so no batch stays in cache)."""
    return [np.full(nbytes // 4, float(j + 1), np.float32) for j in range(count)]


def cycle(arrays: Sequence[Array], count: int) -> Iterator[Array]:
    """``count`` batches, taking ``arrays`` in turn."""
    for i in range(count):
        yield arrays[i % len(arrays)]


def stats_dict(stats: Any) -> dict[str, Any]:
    """The ``Stream.stats`` fields this check records (``transfer_route`` when present)."""
    fields = ("backend", "pinned", "slots", "pool_bytes", "pool_grown", "bytes_copied")
    out = {name: getattr(stats, name, None) for name in fields}
    out["transfer_route"] = getattr(stats, "transfer_route", None)
    return out


@dataclasses.dataclass
class Sample:
    """``nbytes`` moved in ``seconds`` (wall) and ``cpu_seconds`` (this process's CPU)."""

    seconds: float
    cpu_seconds: float
    nbytes: int
    stats: dict[str, Any] | None = None

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9


def h2d_stream(
    device: jax.Device,
    arrays: Sequence[Array],
    batches: int,
    warmup: int,
    backend: Method,
    copy_threads: int | None = None,
) -> Sample:
    """Steady-state GB/s of consuming ``batches`` from ``stream``, each waited for on the
    device, after ``warmup`` batches (pool allocation, pinning, thread start)."""
    nbytes = arrays[0].nbytes
    with stream(
        cycle(arrays, warmup + batches),
        backend=backend,
        device=device,
        prefetch=PREFETCH,
        copy_threads=copy_threads,
    ) as batches_:
        iterator = iter(batches_)
        for _ in range(warmup):
            next(iterator).block_until_ready()
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(batches):
            next(iterator).block_until_ready()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        for _ in iterator:  # nothing is left; this ends the stream the way a loop does
            pass
        stats = stats_dict(batches_.stats)
    return Sample(seconds, cpu, nbytes * batches, stats)


def h2d_device_put(
    device: jax.Device, arrays: Sequence[Array], batches: int, warmup: int, fresh: bool
) -> Sample:
    """``jax.device_put`` of pageable memory: one array reused, or a new one each batch
    (allocated and filled inside the timed loop, as a loader making new batches does)."""
    count, nbytes = arrays[0].size, arrays[0].nbytes

    def one(i: int) -> None:
        if fresh:
            array = np.empty(count, np.float32)
            array.fill(float(i))
        else:
            array = arrays[0]
        jax.device_put(array, device).block_until_ready()

    for i in range(warmup):
        one(i)
    cpu, started = time.process_time(), time.perf_counter()
    for i in range(batches):
        one(i)
    seconds = time.perf_counter() - started
    return Sample(seconds, time.process_time() - cpu, nbytes * batches)
