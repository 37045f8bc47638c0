"""One measured run of a handoff: the loop the handoff, throughput, memory, sharded, leaves and
shapes scenarios time.

Only ``next()`` is timed, so whatever a handoff does on the consumer's thread counts and what it
does on a thread of its own does not. A warm-up comes first (compiles, fills the read-ahead), and
resources are read around the timed batches alone.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any

import jax

from .resources import RssSampler, minor_faults, rss_bytes
from .routes import BACKGROUND, Route, close_route, current_stream, leaf_pointers, open_route
from .step import Step, block, initial_state


@dataclasses.dataclass
class _Loop:
    """What every batch of one run goes through: the handoff's iterator, then the step."""

    handoff: Route
    iterator: Iterator[Any]
    step: Step | None
    resident: Any
    state: Any

    def consume(self, batch: Any) -> None:
        """The step on ``batch`` (on ``resident`` for the floor, whose batches are NumPy), or
        without a step, wait for the batch itself."""
        if self.step is None:
            if self.handoff.kind != "floor":
                block(batch)
            return
        self.state = self.step(self.state, self.resident if self.handoff.kind == "floor" else batch)
        self.state.block_until_ready()


def measure(
    handoff: Route,
    ds: Any,
    *,
    batches: int,
    warmup: int,
    step: Step | None,
    resident: Any = None,
    keep_times: bool = True,
    probe_copies: bool = False,
    stream_options: dict[str, Any] | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, Any]:
    """Run ``handoff`` over ``ds`` for ``warmup + batches`` batches and measure the last ones.

    With a ``step``, each batch goes through it and the step is waited for, as in training.
    The floor yields NumPy, so its step runs on ``resident`` (the same batch already in JAX):
    the same work without any handoff.
    """
    # Young generations only: a full collection costs ~0.15 s with TensorFlow loaded, more than
    # many runs; the previous run's batches and slots are freed by reference counting anyway.
    gc.collect(1)
    iterator = open_route(handoff, ds, sharding, **(stream_options or {}))
    loop = _Loop(handoff, iterator, step, resident, initial_state())
    try:
        copied = _warm_up(loop, warmup, probe_copies)
        live = current_stream(iterator)
        producer_copied0 = live.stats.bytes_copied if live is not None else 0
        times, rates, memory = _timed(loop, batches)
        producer_copied = 0
        if live is not None:
            producer_copied = (live.stats.bytes_copied - producer_copied0) // batches
        if handoff.key in BACKGROUND:
            producer_copied, copied = copied, 0
        backend = live.backend if live is not None else handoff.key
    finally:
        close_route(iterator)
    result: dict[str, Any] = {
        **rates,
        "consumer_copied_bytes": copied,
        "producer_copied_bytes": int(producer_copied),
        **memory,
        "backend": backend,
    }
    if keep_times:
        result["next_s"] = [round(t, 9) for t in times]
    return result


def _warm_up(loop: _Loop, warmup: int, probe_copies: bool) -> int:
    """``warmup`` batches through the loop; with ``probe_copies``, the bytes per batch the
    consumer's thread copied, read from the last two of them."""
    copied = 0
    held = None
    for i in range(warmup):
        batch = next(loop.iterator)
        if probe_copies and i == warmup - 2:
            held = batch
        if probe_copies and i == warmup - 1 and held is not None:
            copied = _consumer_copied(loop.handoff, held, batch)
            held = None
        loop.consume(batch)
    return copied


def _timed(loop: _Loop, batches: int) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
    """``batches`` timed batches: the time of each ``next()`` alone, then the rates (per batch)
    and the memory figures of the run."""
    times: list[float] = []
    batch = item = None
    with RssSampler() as sampler:
        rss0, faults0 = rss_bytes(), minor_faults()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(batches):
            # Time next() alone: assigning to `batch` afterwards frees the previous batch
            # outside the timed window (its release is wall time, not time inside next()).
            started = time.perf_counter()
            item = next(loop.iterator)
            times.append(time.perf_counter() - started)
            batch = item
            loop.consume(batch)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        faults = minor_faults() - faults0
        del batch, item
        rss1 = rss_bytes()
    rates = {
        "batches": batches,
        "consumer_s": sum(times) / batches,
        "consumer_median_s": statistics.median(times),
        "wall_s": wall / batches,
        "cpu_s": cpu / batches,
    }
    memory = {
        "rss_start": rss0,
        "rss_end": rss1,
        "rss_peak": sampler.peak,
        "minor_faults": faults / batches,
    }
    return times, rates, memory


def _consumer_copied(handoff: Route, first: Any, second: Any) -> int:
    """Bytes per batch the consumer's thread copied, for anchor handoffs: the dataset repeats
    one cached buffer, so a leaf that aliases it has the same address in two live batches."""
    if handoff.kind != "anchor":
        return 0  # fastbridge copies (if at all) on its producer thread; the floor never does
    total = 0
    leaves = jax.tree_util.tree_leaves(first)
    for leaf, a, b in zip(leaves, leaf_pointers(first), leaf_pointers(second), strict=True):
        if handoff.key == "tutorial" or a != b:
            total += int(leaf.nbytes)
    return total
