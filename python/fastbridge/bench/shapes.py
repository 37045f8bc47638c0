"""The shapes scenario: the accelerator's transfer route, forced on CPU.

With ``FASTBRIDGE_TRANSFER=device_put`` set while a stream is made, its ring fills a slot and
hands the slot to JAX as an accelerator would (on CPU the transfer is a copy). Two questions:
does a stream whose every batch has a new shape (dynamic padding) pay much more per batch than
one whose batches share a shape, and does its memory stay bounded; and how does that route's
no-step ceiling compare with the plain ``device_put`` loop.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .batches import ROWS, batch_nbytes
from .cells import MEMORY_COUNTS, leaves_layout, parse_size, size_label
from .leaves import WARMUP, batches_per_run, leaf_batch
from .loop import measure
from .routes import Route, _StreamIterator
from .runner import Run, split

ENVIRONMENT = "FASTBRIDGE_TRANSFER"
"""Read when ``stream()`` builds its backend: it forces the transfer route."""
FORCED_ROUTE = "device_put"
LEAVES = 8
"""Leaves per batch of the distinct-shape runs: float32, (16, 256 + k) for batch k."""
COLUMNS = 256
LEAF_BYTES = parse_size("16K")


@contextlib.contextmanager
def forced_transfer(transfer: str = FORCED_ROUTE) -> Iterator[None]:
    """``FASTBRIDGE_TRANSFER=transfer`` for the duration, then as it was."""
    before = os.environ.get(ENVIRONMENT)
    os.environ[ENVIRONMENT] = transfer
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = before


def _forced_stream(ds: Any, **options: Any) -> Iterator[Any]:
    # The variable matters only while the stream is made; restoring it at once keeps every
    # other handoff, and the rest of the run, on the default transfer route.
    with forced_transfer():
        return _StreamIterator(ds, "auto", **options)


FORCED = Route(0, "forced", "auto, FASTBRIDGE_TRANSFER=device_put", "fastbridge", _forced_stream)
DISTINCT = Route(
    0, "distinct", "forced route, every batch a new shape", "fastbridge", _forced_stream
)
SAME = Route(0, "same", "forced route, one shape", "fastbridge", _forced_stream)
MEMORY = {
    n: Route(
        0, f"new{n}", f"forced route, {n} new shapes of bounded size", "fastbridge", _forced_stream
    )
    for n in MEMORY_COUNTS
}


def bounded_batches(count: int) -> list[dict[str, np.ndarray]]:
    """``count`` batches of :data:`LEAVES` float32 leaves, every batch a shape of its own but
    all about the same size ((8 + k % 33) x (200 + k // 33) for batch k), so memory that
    grows with the count is memory held per shape, not bigger slots."""
    out = []
    for k in range(count):
        shape = (8 + k % 33, 200 + k // 33)
        out.append({f"leaf{i:02d}": np.full(shape, k, np.float32) for i in range(LEAVES)})
    return out


def shaped_batches(count: int, distinct: bool) -> list[dict[str, np.ndarray]]:
    """``count`` batches of :data:`LEAVES` float32 leaves, each its own arrays: of shape
    (16, 256 + k) for batch k when ``distinct``, else all of the middle shape
    (16, 256 + count // 2), so that both runs move the same bytes on average."""
    out = []
    for k in range(count):
        cols = COLUMNS + (k if distinct else count // 2)
        out.append({f"leaf{i:02d}": np.full((ROWS, cols), k, np.float32) for i in range(LEAVES)})
    return out


def counts(bench: Run) -> list[int]:
    """Leaves per batch of the ceiling runs."""
    found = [int(c) for c in split(bench.args.shapes_counts)]
    if not found or min(found) < 1:
        raise SystemExit("--shapes-counts takes positive leaf counts, e.g. 8,64")
    return found


def count(bench: Run) -> int:
    if not bench.handoffs(("auto",)):
        return 0
    sync = len(bench.handoffs(("device_put",)))
    return int(bench.args.repeats) * (2 + len(MEMORY) + len(counts(bench)) * (1 + sync))


def transfer_route() -> str | None:
    """The transfer route a stream made under :func:`forced_transfer` reports."""
    with forced_transfer():
        iterator = _StreamIterator(shaped_batches(2, distinct=True), "auto")
    try:
        for _ in iterator:
            pass
        found = iterator.stream.stats.transfer_route
        return None if found is None else str(found)
    finally:
        iterator.close()


def _measure(bench: Run, handoff: Route, ds: Any, batches: int, keep: bool) -> dict[str, Any]:
    warmup = max(bench.args.warmup, WARMUP)
    m = measure(handoff, ds, batches=batches, warmup=warmup, step=None, keep_times=keep)
    m["batches_per_s"] = 1.0 / m["wall_s"]
    m["rss_growth"] = m["rss_end"] - m["rss_start"]
    return m


def run(bench: Run) -> None:
    """``--repeats`` rounds, each: the distinct-shape run, the one-shape run, then the forced
    route and the sync loop at every ceiling leaf count."""
    if not bench.handoffs(("auto",)):
        bench.progress.note("shapes: skipped (it measures auto, which --routes leaves out)")
        return
    args = bench.args
    found = transfer_route()
    bench.meta["shapes"] = {"transfer_route": found, "leaves": LEAVES, "forced": FORCED_ROUTE}
    if found != FORCED_ROUTE:
        bench.progress.note(f"shapes: the forced stream reports transfer route {found!r}")
    extra = max(args.warmup, WARMUP) + 16  # warm-up, and what the stream reads ahead
    total = args.shapes_batches + extra
    gc.collect()
    runs = [(DISTINCT, shaped_batches(total, True)), (SAME, shaped_batches(total, False))]
    memory = [(MEMORY[n], n, bounded_batches(n + extra)) for n in MEMORY_COUNTS]
    ceilings = []
    for leaves in counts(bench):
        batch = leaf_batch(leaves, LEAF_BYTES)
        batches = batches_per_run(args.leaves_batches, batch_nbytes(batch))
        ceilings.append((leaves, batches, [batch] * (batches + extra)))
    sync = bench.handoffs(("device_put",))
    layout = str(LEAVES)
    for rep in range(args.repeats):
        for handoff, data in runs:
            m = _measure(bench, handoff, data, args.shapes_batches, keep=True)
            bench.add("shapes", handoff, layout, LEAF_BYTES, rep, leaves=LEAVES, **m)
            bench.progress.update(f"shapes {handoff.key} {LEAVES}x{size_label(LEAF_BYTES)}")
        for handoff, n, data in memory:
            m = _measure(bench, handoff, data, n, keep=False)
            bench.add("shapes", handoff, layout, LEAF_BYTES, rep, leaves=LEAVES, **m)
            bench.progress.update(f"shapes memory {n} new shapes")
        for leaves, batches, data in ceilings:
            for handoff in (FORCED, *sync):
                m = _measure(bench, handoff, data, batches, keep=False)
                where = leaves_layout("numpy", leaves)
                bench.add("forced", handoff, where, LEAF_BYTES, rep, leaves=leaves, **m)
                bench.progress.update(f"shapes ceiling {leaves}x16 KiB {handoff.key}")
    del runs, memory, ceilings
