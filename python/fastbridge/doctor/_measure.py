"""The measurements, one run each, and the plan that fits rounds of them into the budget.

Every measurement opens a fresh dataset from the factory, reads ``prefetch + 1`` warm-up
batches and then times ``batches`` batches. The warm-up takes the start-up (a fresh
iterator, worker processes, a stream's thread) out of the timing, and drains what the
read-ahead buffers filled meanwhile: timed batches then come at the steady pace, not for free
from a buffer filled while nothing was timed. Rounds run every
measurement once, in the same order, so a ratio within one round compares runs seconds apart.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

from .. import stream
from .._position import close_iterator
from ._load import StepError, fresh, numpy_batches

PROBE_BATCHES = 3


@dataclasses.dataclass(frozen=True)
class Measure:
    """One thing to time: the source, a handoff, the step, or a loop (a handoff + the step)."""

    key: str
    group: str
    """``source``, ``handoff``, ``step`` or ``loop``."""
    handoff: str | None
    """How batches reach JAX, for handoffs and loops: ``device_put`` or a fastbridge backend."""
    label: str


def measures(kind: str, with_step: bool, direct: bool = True) -> list[Measure]:
    """What applies to a source of ``kind``: ``direct`` hands over TensorFlow's own buffers,
    so it applies to tf.data pipelines that run no Python code (other iterables, and Python
    code inside a pipeline, may refill the arrays they yield: batches held would change).

    >>> [m.key for m in measures("iterable", with_step=False)]
    ['source', 'device_put', 'auto', 'ring', 'numpy']
    """
    handoffs = ["device_put", "auto", "ring", "numpy"]
    handoffs += ["direct"] if kind == "tf.data" and direct else []
    out = [Measure("source", "source", None, "source alone (NumPy)")]
    out += [Measure(h, "handoff", h, _handoff_label(h)) for h in handoffs]
    if with_step:
        out.append(Measure("step", "step", None, "step alone (resident batch)"))
        out += [
            Measure(f"loop:{h}", "loop", h, f"loop: {_handoff_label(h)} + step") for h in handoffs
        ]
    return out


def _handoff_label(handoff: str) -> str:
    return "jax.device_put (plain loop)" if handoff == "device_put" else f"fastbridge {handoff}"


@dataclasses.dataclass
class Context:
    """What every run needs: the user's callables and a batch already in JAX."""

    factory: Callable[[], Any]
    name: str
    step: Callable[[Any], Any] | None
    step_name: str
    resident: Any
    prefetch: int


def call_step(ctx: Context, batch: Any) -> None:
    """``step(batch)``, waited for; any exception becomes a ``StepError`` naming the step."""
    assert ctx.step is not None
    try:
        jax.block_until_ready(ctx.step(batch))  # type: ignore[no-untyped-call]
    except Exception as error:
        structure = jax.tree_util.tree_map(lambda x: getattr(x, "shape", type(x).__name__), batch)
        raise StepError(
            f"step {ctx.step_name!r} raised {type(error).__name__}: {error} (called as "
            f"step(batch) with one batch of factory {ctx.name!r}, shapes {structure})"
        ) from error


def _device_put(source: Any) -> Iterator[Any]:
    # The loop users write: each NumPy batch device_put on the consumer's thread.
    for batch in numpy_batches(source):
        yield jax.device_put(batch)


def _open(m: Measure, ctx: Context) -> Any:
    source = fresh(ctx.factory, ctx.name)
    if m.handoff is None:
        return numpy_batches(source)
    if m.handoff == "device_put":
        return _device_put(source)
    return stream(source, backend=m.handoff, prefetch=ctx.prefetch)  # type: ignore[arg-type]


def run(m: Measure, ctx: Context, batches: int, deadline: float) -> dict[str, Any] | None:
    """Time ``m`` over ``batches`` batches (fewer if the dataset ends or ``deadline`` passes).

    Returns the sample, or ``None`` when the dataset had no batch left after the warm-up."""
    opened = time.perf_counter()
    if m.group == "step":
        call_step(ctx, ctx.resident)
        iterator: Any = None
    else:
        iterator = _open(m, ctx)
    try:
        if iterator is not None:
            for _ in range(ctx.prefetch + 1):
                batch = next(iterator, None)
                if batch is None:
                    return None
                _consume(m, ctx, batch)
        overhead = time.perf_counter() - opened
        waits: list[float] = []
        truncated = False
        wall0 = time.perf_counter()
        for _ in range(batches):
            if time.perf_counter() > deadline:
                truncated = True
                break
            started = time.perf_counter()
            if iterator is None:
                call_step(ctx, ctx.resident)
                waits.append(time.perf_counter() - started)
                continue
            # next() alone is the consumer's wait; blocking on the batch and the step is not.
            batch = next(iterator, None)
            waits.append(time.perf_counter() - started)
            if batch is None:
                waits.pop()
                break
            _consume(m, ctx, batch)
        wall = time.perf_counter() - wall0
    finally:
        if iterator is not None:
            close_iterator(iterator)
    count = len(waits)
    if count == 0:
        return None
    return {
        "route": m.key,
        "group": m.group,
        "label": m.label,
        "batches": count,
        "truncated": truncated,
        "overhead_s": overhead,
        "wall_s": wall / count,
        "consumer_s": sum(waits) / count,
        "steps_per_s": count / wall if wall > 0 else math.inf,
        "wait_fraction": sum(waits) / wall if wall > 0 else 0.0,
        "seconds": wall / count,
        "next_s": [round(t, 7) for t in waits],
    }


def _consume(m: Measure, ctx: Context, batch: Any) -> None:
    if m.group in ("handoff", "loop"):
        jax.block_until_ready(batch)  # type: ignore[no-untyped-call]
    if m.group == "loop":
        call_step(ctx, batch)


@dataclasses.dataclass(frozen=True)
class Plan:
    rounds: int
    batches: int
    seconds: float
    """Estimated seconds for all the rounds."""
    note: str
    """Why the plan differs from what was asked, or empty."""


def plan(
    probe: dict[str, dict[str, Any]],
    remaining: float,
    batches: int,
    rounds: int,
    *,
    min_rounds: int = 3,
    min_batches: int = 5,
) -> Plan:
    """The most rounds (up to ``rounds``) of ``batches`` batches per measurement that fit in
    ``remaining`` seconds, by the probe's costs; fewer batches first, then fewer rounds.

    >>> probe = {"a": {"overhead_s": 0.5, "wall_s": 0.01}, "b": {"overhead_s": 0.5, "wall_s": 0.09}}
    >>> plan(probe, 30.0, 50, 5)
    Plan(rounds=5, batches=50, seconds=30.0, note='')
    >>> plan(probe, 10.0, 50, 5).rounds, plan(probe, 10.0, 50, 5).batches
    (3, 23)
    """
    fixed = float(sum(s["overhead_s"] for s in probe.values()))
    per_batch = float(sum(s["wall_s"] for s in probe.values()))

    def cost(n: int) -> float:
        return fixed + n * per_batch

    def fits(n: int) -> int:
        return min(rounds, int(remaining // cost(n))) if cost(n) > 0 else rounds

    n = batches
    if fits(n) < min(rounds, min_rounds) and per_batch > 0:
        # Fewer batches per run before fewer rounds: rounds are what make a spread.
        room = remaining / min(rounds, min_rounds) - fixed
        n = max(min_batches, min(batches, int(room // per_batch)))
    got = max(0, fits(n))
    notes = []
    if n < batches:
        notes.append(f"{n} batches per measurement instead of {batches}")
    if got < rounds:
        notes.append(f"{got} rounds instead of {rounds}")
    note = f"to fit the budget: {', '.join(notes)}" if notes else ""
    return Plan(got, n, round(got * cost(n), 3), note)
