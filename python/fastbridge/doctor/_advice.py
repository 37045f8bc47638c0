"""From the figures to the verdict: what bounds the job, which backend and prefetch to use,
and which knobs of the user's own pipeline are worth trying."""

from __future__ import annotations

import math
from typing import Any

from .._tfdata import pipeline_facts, tf_module

INPUT_BOUND = 0.2
"""A loop that waits for input more than this share of its time is input-bound (the same
threshold as ``Stream.summary()``)."""
BALANCE_BAND = 0.05
"""A wait share within this many points of ``INPUT_BOUND``, or whose rounds fall on both sides
of it, is too close to call: the job is ``balanced`` (the verdict that one more run would not
flip)."""
BALANCE_RATIO = 1.15
"""An input side and a step whose batches/s, each measured alone, are within this factor of
each other (or whose rounds overlap) make a ``balanced`` job."""
KEEPS_UP = 0.8
"""A handoff that delivers at least this share of the source's own rate keeps up with it."""
MAX_PREFETCH = 64
DEFAULT_PREFETCH = 4


def bound(
    source_rate: float,
    handoff_rate: float,
    wait_share: float | None,
    step_rate: float | None = None,
    wait_range: tuple[float, float] | None = None,
    ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> tuple[str, str]:
    """``(part, why)``: ``input pipeline``, ``handoff``, ``step`` or ``balanced``: the loop's
    input wait (``wait_share``, with ``wait_range`` its lowest and highest round) is too close
    to ``INPUT_BOUND`` to tell input from step, or the input side alone (``handoff_rate``) and
    the step alone (``step_rate``) deliver about as many batches/s (within ``BALANCE_RATIO``,
    or with ``ranges``, their lowest and highest rounds, overlapping).

    >>> bound(100.0, 95.0, 0.05)[0], bound(100.0, 95.0, 0.6)[0], bound(100.0, 40.0, 0.6)[0]
    ('step', 'input pipeline', 'handoff')
    >>> bound(100.0, 40.0, None)[0]
    'handoff'
    >>> bound(100.0, 95.0, 0.05, step_rate=1000.0)[0]  # a loop cannot outrun its source
    'input pipeline'
    >>> [bound(100.0, 95.0, s)[0] for s in (0.24, 0.184, 0.20)]  # three runs, one answer
    ['balanced', 'balanced', 'balanced']
    >>> bound(100.0, 95.0, 0.3, wait_range=(0.1, 0.4))[0]  # its rounds disagree
    'balanced'
    >>> bound(272.9, 245.3, 0.34, step_rate=244.9)[0]  # input and step alike, measured alone
    'balanced'
    """
    if step_rate is not None and _alike(handoff_rate, step_rate, ranges):
        waited = (
            f" (the loop waited for input {100 * wait_share:.0f}% of its time)"
            if (wait_share is not None)
            else ""
        )
        return "balanced", (
            f"the input side alone delivers {handoff_rate:.1f} batches/s and the step alone "
            f"runs {step_rate:.1f}: as fast as each other within the noise{waited}, so the "
            f"{_AFTER}"
        )
    if wait_share is not None and _too_close(wait_share, wait_range):
        spread = (
            f" (rounds {100 * wait_range[0]:.0f}% to {100 * wait_range[1]:.0f}%)"
            if wait_range is not None
            else ""
        )
        return "balanced", (
            f"the loop waited for input {100 * wait_share:.1f}% of its time{spread}, too close "
            f"to the {100 * INPUT_BOUND:.0f}% line to call: the {_AFTER}"
        )
    waited = (
        f"the loop waited for input {100 * wait_share:.0f}% of its time; "
        if wait_share is not None
        else ""
    )
    if wait_share is not None and wait_share < INPUT_BOUND:
        if step_rate is None or step_rate * KEEPS_UP <= source_rate:
            return "step", (
                f"the loop waited for input only {100 * wait_share:.1f}% of its time: the "
                "step is the slowest part"
            )
        # A loop cannot outrun its source for long: its timed stretch was too short to
        # show the waits, so the rates measured alone decide.
        waited = (
            f"the loop waited for input only {100 * wait_share:.1f}% of its timed batches, "
            f"but the step alone ({step_rate:.1f} batches/s) outruns the source alone "
            f"({source_rate:.1f}), which no loop sustains (more --batches would show the "
            "waits); "
        )
    if handoff_rate >= KEEPS_UP * source_rate:
        return "input pipeline", (
            f"{waited}the best handoff delivers {handoff_rate:.1f} batches/s, as fast as the "
            f"source alone ({source_rate:.1f} batches/s): the source is the slowest part"
            + (f" (the step alone runs {step_rate:.1f} batches/s)" if step_rate is not None else "")
        )
    return "handoff", (
        f"{waited}the source alone gives {source_rate:.1f} batches/s but the best handoff "
        f"delivers only {handoff_rate:.1f}: handing batches to JAX is the slowest part"
    )


_AFTER = (
    "input side and the step take about as long, so speeding up only one of them gains little; "
    "prefetch evens out their jitter, and the job speeds up when both do (the pipeline's knobs "
    "and a lighter step)"
)


def _alike(
    input_rate: float,
    step_rate: float,
    ranges: tuple[tuple[float, float], tuple[float, float]] | None,
) -> bool:
    if max(input_rate, step_rate) <= BALANCE_RATIO * min(input_rate, step_rate):
        return True
    if ranges is None:
        return False
    (in_low, in_high), (step_low, step_high) = ranges
    return in_low <= step_high and step_low <= in_high


def _too_close(share: float, spread: tuple[float, float] | None) -> bool:
    if abs(share - INPUT_BOUND) <= BALANCE_BAND:
        return True
    return spread is not None and spread[0] < INPUT_BOUND < spread[1]


def prefetch_for(source_times: list[list[float]], step_seconds: float | None) -> tuple[int, str]:
    """The prefetch that would have hidden every stall seen in the source's own timings.

    A loop that takes ``step_seconds`` per batch never waits if the stream holds enough
    batches read ahead to cover the longest run of slow source batches: the largest
    accumulated deficit ``sum(t_i - step)`` over consecutive batches, in steps.

    >>> prefetch_for([[0.01] * 10], 0.02)
    (4, 'the source is steadily faster than the step: the default prefetch (4) hides it')
    >>> prefetch_for([[0.005] * 20 + [0.11]], 0.02)[0]
    6
    """
    if step_seconds is None or step_seconds <= 0:
        return DEFAULT_PREFETCH, (
            "no step given: prefetch only evens out the source's pace; keep the default "
            f"({DEFAULT_PREFETCH})"
        )
    everything = [t for times in source_times for t in times]
    if not everything:
        return DEFAULT_PREFETCH, "no source timings"
    mean = sum(everything) / len(everything)
    if mean >= step_seconds:
        return DEFAULT_PREFETCH, (
            f"the source needs {mean * 1e3:.2f} ms per batch on average, more than the step "
            f"({step_seconds * 1e3:.2f} ms): no prefetch can hide that; keep the default "
            f"({DEFAULT_PREFETCH}) and speed up the source"
        )
    deficit = 0.0
    for times in source_times:
        run = 0.0
        for t in times:
            run = max(0.0, run + t - step_seconds)
            deficit = max(deficit, run)
    needed = math.ceil(deficit / step_seconds) + 1 if deficit > 0 else 1
    if needed <= DEFAULT_PREFETCH:
        return DEFAULT_PREFETCH, (
            f"the source is steadily faster than the step: the default prefetch "
            f"({DEFAULT_PREFETCH}) hides it"
        )
    chosen = min(needed, MAX_PREFETCH)
    return chosen, (
        f"the source's slowest stretch fell {deficit * 1e3:.1f} ms behind the step "
        f"({step_seconds * 1e3:.2f} ms per batch): {chosen} batches read ahead cover it"
        + (f" (capped from {needed})" if needed > MAX_PREFETCH else "")
    )


def knobs(source: Any, kind: str) -> list[str]:
    """Settings of the user's own pipeline worth trying when the source bounds the job.

    Only what applies: the tf.data graph is walked (its stages and ``options()``), a Grain
    dataset's parents are read, a DataLoader's worker count is looked at."""
    if kind == "tf.data":
        return _tf_knobs(source)
    if kind == "grain":
        return _grain_knobs(source)
    return [
        "the source is a plain Python iterable: its work runs in one thread, under the GIL. "
        "Move the per-batch work into workers: a Grain MapDataset with .map(...) and "
        ".to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=N)), or a "
        "tf.data pipeline with map(fn, num_parallel_calls=tf.data.AUTOTUNE)"
    ]


def _stages(ds: Any) -> list[Any]:
    out, todo, seen = [], [ds], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        todo.extend(node._inputs())
    return out


def _tf_knobs(ds: Any) -> list[str]:
    tf = tf_module()
    stages = _stages(ds)
    kinds = [type(s).__name__ for s in stages]
    out = []
    facts = pipeline_facts(ds)
    if facts.generator:
        out.append(
            "the pipeline starts with from_generator: the generator runs in one Python "
            "thread, under the GIL, however tf.data is tuned. Yield only indices or file "
            "names from it and do the work in map(fn, num_parallel_calls=tf.data.AUTOTUNE), "
            "or build the source with from_tensor_slices or a file dataset"
        )
    if facts.python_ops:
        out.append(
            f"the pipeline runs Python ({', '.join(facts.python_ops)}): those calls hold the "
            "GIL, so parallel calls barely overlap; express the work in TensorFlow ops"
        )
    if "_MapDataset" in kinds:
        out.append(
            "a map runs sequentially: map(fn, num_parallel_calls=tf.data.AUTOTUNE) runs it "
            "on several cores"
        )
    fixed = []
    for stage in stages:
        if type(stage).__name__ == "_ParallelMapDataset":
            calls = tf.get_static_value(stage._num_parallel_calls)
            if calls is not None and int(calls) != -1:
                fixed.append(int(calls))
    if fixed:
        out.append(
            f"a parallel map has a fixed num_parallel_calls ({', '.join(map(str, fixed))}): "
            "num_parallel_calls=tf.data.AUTOTUNE lets tf.data choose"
        )
    if "_InterleaveDataset" in kinds:
        out.append(
            "an interleave reads its inputs one at a time: interleave(..., "
            "num_parallel_calls=tf.data.AUTOTUNE) reads several files at once"
        )
    if kinds and kinds[0] != "_PrefetchDataset":
        out.append(
            "the pipeline does not end in prefetch: .prefetch(tf.data.AUTOTUNE) at the end "
            "overlaps producing the next batch with the current one"
        )
    if "CacheDataset" not in kinds and any(
        k in ("_MapDataset", "_ParallelMapDataset") for k in kinds
    ):
        out.append(
            "nothing is cached: if the decoded data fits in memory (or on local disk), "
            ".cache() after the deterministic maps and before shuffle and random "
            "augmentation does that work once instead of every epoch"
        )
    parallel = {"_ParallelMapDataset", "_ParallelInterleaveDataset", "_ParallelBatchDataset"}
    if parallel & set(kinds) and ds.options().deterministic is not False:
        out.append(
            "parallel stages keep their order: if the order of examples does not matter, "
            "options.deterministic = False (ds.with_options) lets a slow element not hold "
            "up the others (exact resume then needs checkpoint=True)"
        )
    if not out:
        out.append(
            "the pipeline already uses parallel maps, prefetch and cache where they apply: "
            "the work per element itself is the cost (simplify it, or move preprocessing "
            "offline, or to tf.data service workers: fastbridge.service)"
        )
    return out


def _grain_parents(ds: Any) -> list[str]:
    names, todo, seen = [], [ds], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        names.append(type(node).__name__)
        todo.extend(getattr(node, "parents", ()) or ())
    return names


def _grain_knobs(source: Any) -> list[str]:
    name = type(source).__name__
    if name == "DataLoader":
        options = getattr(source, "_multiprocessing_options", None)
        workers = getattr(options, "num_workers", 0) or 0
        if workers == 0:
            return [
                "the DataLoader runs its transformations in this process: "
                "DataLoader(..., worker_count=N) runs them in N worker processes"
            ]
        return [
            f"the DataLoader has {workers} workers: try more (worker_count), and "
            "read_options=grain.ReadOptions(num_threads=..., prefetch_buffer_size=...) "
            "for a source that is slow to read"
        ]
    names = _grain_parents(source)
    if any("MapDataset" in n for n in names) and not any("IterDataset" in n for n in names):
        return [
            "a MapDataset is read element by element in this thread: "
            ".to_iter_dataset(grain.ReadOptions(num_threads=16, prefetch_buffer_size=500)) "
            "reads ahead in threads, and .mp_prefetch(grain.MultiprocessingOptions("
            "num_workers=N)) on the result runs the transformations in worker processes"
        ]
    if not any("Multiprocess" in n or "Interleave" in n for n in names):
        return [
            "the dataset runs its transformations in this process: "
            ".mp_prefetch(grain.MultiprocessingOptions(num_workers=N)) runs them in N "
            "worker processes"
        ]
    return [
        "the dataset already prefetches in worker processes: try more num_workers in "
        "mp_prefetch, and more ReadOptions(num_threads=...) in to_iter_dataset for a slow "
        "read"
    ]
