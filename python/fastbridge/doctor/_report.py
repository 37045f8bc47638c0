"""The doctor's files: the JSON of every figure and its one plot (the text is ``_diagnosis``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from ..bench.plots import PlotsUnavailable, pyplot
from ..bench.report import machine_info
from ._diagnosis import Diagnosis, percent

GROUP_COLOURS = {"source": "C7", "handoff": "C0", "step": "C3", "loop": "C2"}


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
    share = "" if d.input_bound_share is None else f", input wait {percent(d.input_bound_share)}"
    verdict = "balanced" if d.bound == "balanced" else f"bound by the {d.bound}"
    ax.set_title(f"{d.factory}\n{verdict}{share}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
