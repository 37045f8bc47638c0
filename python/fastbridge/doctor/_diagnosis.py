"""What the doctor found, :class:`Diagnosis`, and the text it prints."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..bench.report import render_text


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What bounds the job, and what to change. ``report()`` says it; ``to_json()`` has all."""

    factory: str
    step: str | None
    kind: str
    """``tf.data``, ``grain`` or ``iterable``."""
    bound: str
    """``input pipeline``, ``handoff``, ``step``, or ``balanced`` when the input side and the
    step cannot be told apart: the loop's input wait is within 5 points of the input-bound
    threshold (or its rounds fall on both sides of it), or the best handoff alone and the step
    alone deliver batches/s within 15% of each other (or with overlapping rounds)."""
    why: str
    input_bound_share: float | None
    """Share of the loop's time spent waiting for input (``None`` without a step)."""
    backend: str
    backend_why: str
    plain_loop_faster: bool
    """The plain ``jax.device_put`` loop beat every fastbridge backend in every round."""
    prefetch: int
    prefetch_why: str
    knobs: tuple[str, ...]
    """Settings of the pipeline worth trying (when the input pipeline bounds the job, or the
    job is balanced)."""
    rows: tuple[dict[str, Any], ...]
    """Per measurement: label, group and median/min/max of every metric over rounds."""
    ratios: dict[str, tuple[float | None, float | None, float | None]]
    """Round-paired ratios ``(median, lowest, highest)`` of batches/s."""
    rounds: int
    batches: int
    stopped_early: bool
    notes: tuple[str, ...]
    seconds: float
    budget: float
    samples: tuple[dict[str, Any], ...] = dataclasses.field(repr=False)
    files: tuple[str, ...] = ()

    def report(self) -> str:
        return text(self)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _range(m: dict[str, float] | None, scale: float, digits: int) -> str:
    if m is None or not math.isfinite(m["median"]):
        return "-"
    return (
        f"{m['median'] * scale:.{digits}f} "
        f"[{m['min'] * scale:.{digits}f}-{m['max'] * scale:.{digits}f}]"
    )


def percent(share: float) -> str:
    return f"{100 * share:.1f}%" if share < 0.1 else f"{100 * share:.0f}%"


def table(d: Diagnosis) -> str:
    rows = []
    for row in d.rows:
        m = row["metrics"]
        waits = row["group"] in ("handoff", "loop")
        rows.append(
            [
                row["label"],
                _range(m.get("steps_per_s"), 1, 1),
                _range(m.get("wall_s"), 1e3, 2),
                _range(m.get("consumer_s"), 1e3, 3) if waits else "-",
                percent(m["wait_fraction"]["median"]) if row["group"] == "loop" else "-",
            ]
        )
    header = ["measurement", "batches/s", "ms per batch", "ms in next()", "input wait"]
    title = "median [min-max] over rounds"
    return render_text((title, header, rows))


def _verdict(bound: str) -> str:
    return "BALANCED (the input side and the step alike)" if bound == "balanced" else bound.upper()


def text(d: Diagnosis) -> str:
    share = (
        ("not measured (the budget ran out first)" if d.step else "n/a (no step given)")
        if d.input_bound_share is None
        else f"{percent(d.input_bound_share)} of the loop's time waiting for input"
    )
    lines = [
        f"fastbridge doctor: factory {d.factory} ({d.kind})"
        + (f", step {d.step}" if d.step else ", no step"),
        f"{d.rounds} round(s) x {d.batches} batches per measurement, interleaved; "
        f"{d.seconds:.1f} s of a {d.budget:g} s budget"
        + (" (stopped early)" if d.stopped_early else ""),
        "",
        table(d),
        "",
        f"Bound by: {_verdict(d.bound)}: {d.why}.",
        f"Input-bound share: {share}.",
        (
            "Recommended: keep the plain jax.device_put loop (see the notes); with fastbridge, "
            if d.plain_loop_faster
            else "Recommended: "
        )
        + f"stream(ds, backend={d.backend!r}, prefetch={d.prefetch}): "
        f"{d.backend_why}; prefetch: {d.prefetch_why}.",
    ]
    if d.knobs:
        lines += ["", "Worth trying in the input pipeline:"]
        lines += [f"  - {k}" for k in d.knobs]
    if d.notes:
        lines += ["", "Notes:"]
        lines += [f"  - {n}" for n in d.notes]
    if d.files:
        lines += ["", "Wrote: " + ", ".join(d.files)]
    return "\n".join(lines)
