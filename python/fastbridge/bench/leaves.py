"""The leaves scenario: the input ceiling of batches of many small or large leaves.

No step runs: the loop only pulls batches (and waits for each to be ready), so batches/s is the
most any training loop fed by that route could take. Each case is a dict of ``L`` float32
leaves of shape (16, n), from two sources: a Python list repeating one dict (as Grain and
Hugging Face yield NumPy batches; ``stream()``'s ``auto`` resolves to ``ring`` there) and
``tf.data.Dataset.from_tensors(batch).repeat()`` (``auto`` resolves to ``direct``).
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np

from .batches import ROWS, batch_nbytes, tf_module
from .cells import LEAF_KINDS, MiB, leaves_layout, parse_size, size_label
from .copies import touched
from .loop import measure
from .routes import Route
from .runner import Run, split

ROUTE_KEYS = ("device_put", "auto", "grain", "big_vision", "thread")
"""auto against the sync loop (route 2) and the prefetching peers; ``--routes`` narrows them."""
MIN_BATCHES = 8
WARMUP = 8
"""Batches every run discards at least (``--warmup`` if more): by then a stream has made and
touched all of its slots (prefetch + 2 of them), so a 64 MiB batch's first page faults do not
count as its steady state."""


def _no_batches(ds: Any) -> Any:
    return iter(())


MEMCPY = Route(0, "memcpy", "memcpy of the batch (one thread)", "copy", _no_batches)
"""Not a route: one copy of a batch-sized buffer, measured in every round (the CPU target
allows auto that much more where its backend copies)."""


def leaf_batch(count: int, leaf_bytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A dict of ``count`` float32 leaves of shape (16, n), ``leaf_bytes`` each."""
    rng = np.random.default_rng(seed)
    cols = max(1, leaf_bytes // (ROWS * 4))
    return {
        f"leaf{i:02d}": rng.standard_normal((ROWS, cols), dtype=np.float32) for i in range(count)
    }


def source(kind: str, batch: dict[str, np.ndarray], length: int) -> Any:
    """``length`` batches as a list repeating ``batch`` (``numpy``), or ``batch`` repeated
    forever by ``tf.data`` (``tf.data``)."""
    if kind == "numpy":
        return [batch] * length
    if kind == "tf.data":
        return tf_module().data.Dataset.from_tensors(batch).repeat()
    raise SystemExit(f"unknown leaves source {kind!r}; choose from {', '.join(LEAF_KINDS)}")


def batches_per_run(most: int, nbytes: int) -> int:
    """``most`` batches, fewer for big ones: a run moves at most ``most`` MiB (at least
    :data:`MIN_BATCHES` batches), so the 64 MiB batches do not dominate the run time."""
    return max(MIN_BATCHES, min(most, most * MiB // max(1, nbytes)))


def memcpy_cost(nbytes: int) -> dict[str, Any]:
    """Seconds and CPU seconds of one single-threaded copy of an ``nbytes`` buffer (enough
    copies to take a few milliseconds, so that the CPU clock resolves them)."""
    source_buf, dest = touched(nbytes), touched(nbytes)
    copies = max(5, min(2000, (256 * MiB) // nbytes))
    np.copyto(dest, source_buf)  # warm: caches and TLB, as in a stream's steady state
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(copies):
        np.copyto(dest, source_buf)
    wall = (time.perf_counter() - wall0) / copies
    cpu = (time.process_time() - cpu0) / copies
    return {"batches": copies, "wall_s": wall, "cpu_s": cpu, "gbps": nbytes / wall / 1e9}


def cases(bench: Run) -> list[tuple[str, int, int]]:
    """(source kind, leaves, bytes per leaf) of every case, in the order they run."""
    args = bench.args
    kinds = split(args.leaves_kinds)
    for kind in kinds:
        if kind not in LEAF_KINDS:
            raise SystemExit(f"unknown leaves source {kind!r}; choose from {', '.join(LEAF_KINDS)}")
    counts = [int(c) for c in split(args.leaves_counts)]
    if not counts or min(counts) < 1:
        raise SystemExit("--leaves-counts takes positive leaf counts, e.g. 1,8,64")
    sizes = [parse_size(s) for s in split(args.leaves_sizes)]
    return [(kind, count, size) for size in sizes for kind in kinds for count in counts]


def count(bench: Run) -> int:
    handoffs = bench.handoffs(ROUTE_KEYS)
    return len(cases(bench)) * bench.args.repeats * (len(handoffs) + 1) if handoffs else 0


def run(bench: Run) -> None:
    """Every case: ``--repeats`` rounds of every route, interleaved, then one memcpy sample."""
    handoffs = bench.handoffs(ROUTE_KEYS)
    if not handoffs:
        bench.progress.note("leaves: none of auto, device_put, grain, big_vision, thread chosen")
        return
    args = bench.args
    for kind, count, size in cases(bench):
        gc.collect()  # the previous case's batches and slots, before allocating the next
        batch = leaf_batch(count, size)
        nbytes = batch_nbytes(batch)
        batches = batches_per_run(args.leaves_batches, nbytes)
        # A list must outlast warm-up, measurement and what a prefetching route reads ahead.
        ds = source(kind, batch, batches + max(args.warmup, WARMUP) + 16)
        layout = leaves_layout(kind, count)
        about = {"kind": kind, "leaves": count, "batch_bytes": nbytes}
        warmup = max(args.warmup, WARMUP)
        for rep in range(args.repeats):
            for handoff in handoffs:
                m = measure(
                    handoff, ds, batches=batches, warmup=warmup, step=None, keep_times=False
                )
                m["batches_per_s"] = 1.0 / m["wall_s"]
                m["gbps"] = nbytes / m["wall_s"] / 1e9
                m["rss_growth"] = m["rss_end"] - m["rss_start"]
                bench.add("leaves", handoff, layout, size, rep, **about, **m)
                bench.progress.update(f"leaves {kind} {count}x{size_label(size)} {handoff.key}")
            bench.add("leaves", MEMCPY, layout, size, rep, **about, **memcpy_cost(nbytes))
            bench.progress.update(f"leaves {kind} {count}x{size_label(size)} memcpy")
        del ds, batch
