"""Live progress (``stream(..., progress=True)``) and the human-readable ``Stream.summary()``."""

from __future__ import annotations

import dataclasses
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class StreamStats:
    """A snapshot of a stream's counters. ``Stream.stats`` makes a new one on each access."""

    backend: str
    batches: int
    bytes: int
    wait_seconds: float
    """Time the consumer spent blocked inside ``next()``."""
    producer_busy_seconds: float
    """Time the producer spent reading the source and preparing batches (not waiting)."""
    bytes_copied: int
    """Bytes copied into ring slots: every leaf for ``ring`` and ``numpy``, only the narrowed ones
    (64-bit leaves with JAX's x64 off) for ``direct``, all on the consumer for ``copy``."""
    pinned: bool
    """Whether every slot's memory is locked in RAM (or registered with CUDA)."""
    slots: int
    pool_bytes: int
    pool_grown: int
    """How many slots were added because the consumer kept every slot and waited."""
    elapsed_seconds: float
    transfer_route: str | None = None
    """How slot memory reaches the device: ``cpu`` (JAX's CPU devices alias the slots, no
    transfer), ``dma_map``, ``pinned_host``, ``register`` or ``device_put`` (one transfer per
    device per batch; see the accelerators guide); ``None`` for a backend without slots."""

    @property
    def batches_per_second(self) -> float:
        return self.batches / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def gigabytes_per_second(self) -> float:
        return self.bytes / self.elapsed_seconds / 1e9 if self.elapsed_seconds > 0 else 0.0

    @property
    def input_bound_fraction(self) -> float:
        """Share of wall time the consumer waited for input (0: never, 1: always)."""
        return self.wait_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


class ProgressBar:
    """A tqdm bar showing batches/s and the share of time the consumer waited for input."""

    REFRESH_SECONDS = 0.5

    def __init__(self, total: int | None, backend: str) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError(
                "progress=True needs tqdm: pip install 'fastbridge[progress]'"
            ) from None
        self._bar = tqdm(total=total, unit="batch", desc=f"fastbridge[{backend}]")
        self._last = 0.0

    def update(self, stats: Any) -> None:
        self._bar.update(1)
        now = time.monotonic()
        if now - self._last >= self.REFRESH_SECONDS:
            self._last = now
            self._bar.set_postfix(
                {
                    "GB/s": f"{stats.gigabytes_per_second:.2f}",
                    "input-wait": f"{100 * stats.input_bound_fraction:.0f}%",
                },
                refresh=False,
            )

    def close(self) -> None:
        self._bar.close()


def summary(stats: Any) -> str:
    """One paragraph: throughput, where the time went, and whether the job is input-bound."""
    if stats.batches == 0:
        return f"fastbridge ({stats.backend}): no batches delivered yet."
    wait = stats.input_bound_fraction
    if wait > 0.2:
        verdict = (
            f"The job is input-bound: the training loop waited for input {100 * wait:.0f}% of "
            "the time; add preprocessing parallelism (num_parallel_calls, tf.data service) or "
            "prefetch more."
        )
    else:
        verdict = (
            f"The job is not input-bound: the loop waited for input only {100 * wait:.1f}% of "
            "the time."
        )
    pool = ""
    if stats.slots:
        pinned = "pinned" if stats.pinned else "not pinned"
        # direct has slots only for leaves it narrows; it has no ring of its own.
        owner = "Its narrowing" if stats.backend == "direct" else "The ring"
        pool = (
            f" {owner} used {stats.slots} slots ({stats.pool_bytes / 2**20:.1f} MiB, {pinned}"
            + (f", grown {stats.pool_grown} times" if stats.pool_grown else "")
            + f") and copied {stats.bytes_copied / 2**30:.2f} GiB"
            + (
                f", moved to the device by {stats.transfer_route}."
                if stats.transfer_route not in (None, "cpu")
                else "."
            )
        )
    return (
        f"fastbridge ({stats.backend}): {stats.batches} batches, "
        f"{stats.bytes / 2**30:.2f} GiB in {stats.elapsed_seconds:.1f} s "
        f"({stats.batches_per_second:.1f} batches/s, {stats.gigabytes_per_second:.2f} GB/s); "
        f"the consumer waited {stats.wait_seconds:.2f} s in next() and the producer was busy "
        f"{stats.producer_busy_seconds:.2f} s.{pool} {verdict}"
    )
