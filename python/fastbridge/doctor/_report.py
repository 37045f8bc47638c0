"""The doctor's report: the text it prints, the JSON of its figures and its one plot."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import TYPE_CHECKING, Any

from ..bench.plots import PlotsUnavailable, pyplot
from ..bench.report import machine_info, render_text

if TYPE_CHECKING:
    from ._diagnose import Diagnosis

GROUP_COLOURS = {"source": "C7", "handoff": "C0", "step": "C3", "loop": "C2"}


def _range(m: dict[str, float] | None, scale: float, digits: int) -> str:
    if m is None or not math.isfinite(m["median"]):
        return "-"
    return (
        f"{m['median'] * scale:.{digits}f} "
        f"[{m['min'] * scale:.{digits}f}-{m['max'] * scale:.{digits}f}]"
    )


def _percent(share: float) -> str:
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
                _percent(m["wait_fraction"]["median"]) if row["group"] == "loop" else "-",
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
        else f"{_percent(d.input_bound_share)} of the loop's time waiting for input"
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


def write(d: Diagnosis, out: str) -> Diagnosis:
    """``doctor.json`` (every figure, every raw sample) and ``doctor.png`` into ``out``."""
    os.makedirs(out, exist_ok=True)
    files = []
    path = os.path.join(out, "doctor.png")
    try:
        plot(d, path)
        files.append(path)
    except PlotsUnavailable as error:
        d = dataclasses.replace(d, notes=(*d.notes, f"no plot: {error}"))
    json_path = os.path.join(out, "doctor.json")
    d = dataclasses.replace(d, files=(json_path, *files))
    with open(json_path, "w") as f:
        json.dump({**d.to_json(), "machine": machine_info()}, f, indent=1, default=_plain)
    return d


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def plot(d: Diagnosis, path: str) -> None:
    """One horizontal bar per measurement: batches/s, median with the rounds' range."""
    plt = pyplot()

    rows = [r for r in d.rows if math.isfinite(r["metrics"]["steps_per_s"]["median"])]
    labels = [r["label"] for r in rows]
    m = [r["metrics"]["steps_per_s"] for r in rows]
    medians = [x["median"] for x in m]
    errors = [[x["median"] - x["min"] for x in m], [x["max"] - x["median"] for x in m]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.8))
    y = list(range(len(rows)))[::-1]
    colours = [GROUP_COLOURS.get(r["group"], "C9") for r in rows]
    ax.barh(y, medians, xerr=errors, color=colours, capsize=3, ecolor="dimgray")
    for at, value, spread in zip(y, medians, m, strict=True):
        # Right of the error bar, so the figure never sits on a whisker.
        ax.annotate(f"  {value:,.1f}", (spread["max"], at), va="center", fontsize=8)
    ax.set_yticks(y, labels)
    # Rates differ by orders of magnitude (a fast step against a slow source): log scale.
    ax.set_xscale("log")
    ax.set_xlim(right=max(x["max"] for x in m) * 4)
    ax.set_xlabel("batches/s (median; error bars: lowest and highest round)")
    share = "" if d.input_bound_share is None else f", input wait {_percent(d.input_bound_share)}"
    verdict = "balanced" if d.bound == "balanced" else f"bound by the {d.bound}"
    ax.set_title(f"{d.factory}\n{verdict}{share}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
