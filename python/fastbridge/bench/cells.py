"""Sizes, the summary of raw samples (one cell per scenario, layout, size and route), and
plain tables."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .routes import BY_KEY

MiB = 1 << 20
MEMORY_COUNTS = (300, 1000)
"""New shapes per run of the shapes scenario's memory check: the stream's memory must not
grow with how many shapes it meets."""
MEMORY_SLACK_MIB = 16.0
"""What the larger run's RSS growth may exceed the smaller one's by (allocator noise)."""
SUMMARY_METRICS = (
    "consumer_s",
    "consumer_median_s",
    "wall_s",
    "batches_per_s",
    "cpu_s",
    "gbps",
    "consumer_copied_bytes",
    "producer_copied_bytes",
    "rss_peak",
    "rss_growth",
    "minor_faults",
    "steps_per_s",
    "wait_fraction",
    "seconds",
)

Key = tuple[str, str, int, str]
"""(scenario, layout, size, route): one cell of the results."""
Table = tuple[str, list[str], list[list[str]]]
"""(title, header, rows) of a table."""


def size_label(nbytes: int) -> str:
    if nbytes >= MiB and nbytes % MiB == 0:
        return f"{nbytes // MiB} MiB"
    if nbytes >= 1024 and nbytes % 1024 == 0:
        return f"{nbytes // 1024} KiB"
    return f"{nbytes} B"


def parse_size(text: str) -> int:
    """``64K``, ``1M``, ``16MiB``, ``256m`` or a byte count."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in "kmg" else raw
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"cannot read size {text!r}; use e.g. 64K, 1M, 16M") from None
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


LEAF_KINDS = ("numpy", "tf.data")
"""The leaves scenario's sources: a list of NumPy dicts, and a ``tf.data`` pipeline."""


def leaves_layout(kind: str, count: int) -> str:
    """The leaves scenario's layout name: ``"numpy x8"`` is a NumPy source of 8-leaf dicts."""
    return f"{kind} x{count}"


def parse_leaves_layout(layout: str) -> tuple[str, int]:
    """``(kind, leaves)`` of a :func:`leaves_layout` name."""
    kind, _, count = layout.rpartition(" x")
    if not kind or not count.isdigit():
        raise ValueError(f"not a leaves layout: {layout!r}")
    return kind, int(count)


def sample_key(s: dict[str, Any]) -> Key:
    return (s["scenario"], s.get("layout", ""), s.get("size_bytes", 0), s["route"])


def summarize(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, min and max of every metric, per scenario, layout, size and route."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[sample_key(s)].append(s)
    out = []
    for (scenario, layout, size, handoff), group in groups.items():
        metrics: dict[str, dict[str, float]] = {}
        for name in SUMMARY_METRICS:
            values = [float(s[name]) for s in group if s.get(name) is not None]
            if values:
                metrics[name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
        out.append(
            {
                "scenario": scenario,
                "layout": layout,
                "size_bytes": size,
                "route": handoff,
                "route_number": group[0].get("route_number", 0),
                "label": group[0].get("label", handoff),
                "repeats": len(group),
                "metrics": metrics,
            }
        )
    out.sort(key=lambda r: (r["scenario"], r["layout"], r["size_bytes"], r["route_number"]))
    return out


class Lookup:
    """Medians from a summary, by scenario, layout, size, route and metric."""

    def __init__(self, summary: list[dict[str, Any]]) -> None:
        self.rows = {(r["scenario"], r["layout"], r["size_bytes"], r["route"]): r for r in summary}

    def __call__(
        self, scenario: str, layout: str, size: int, handoff: str, metric: str
    ) -> float | None:
        row = self.rows.get((scenario, layout, size, handoff))
        if row is None or metric not in row["metrics"]:
            return None
        return float(row["metrics"][metric]["median"])

    def sizes(self, scenario: str, layout: str) -> list[int]:
        return sorted({k[2] for k in self.rows if k[0] == scenario and k[1] == layout})

    def layouts(self, scenario: str) -> list[str]:
        found = {k[1] for k in self.rows if k[0] == scenario}
        return [x for x in ("f32", "dict", "") if x in found] + sorted(
            found - {"f32", "dict", ""}, key=_layout_order
        )

    def handoffs(self, scenario: str) -> list[str]:
        return sorted({k[3] for k in self.rows if k[0] == scenario}, key=_handoff_order)


def _layout_order(layout: str) -> tuple[str, int, str]:
    # The leaves layouts read "<kind> x<leaves>": by kind, then by leaf count as a number.
    kind, _, count = layout.rpartition(" x")
    if kind and count.isdigit():
        return (kind, int(count), "")
    return (layout, 0, layout)


def _handoff_order(key: str) -> tuple[int, str]:
    handoff = BY_KEY.get(key)
    return (handoff.number if handoff else 100, key)


def render_text(table: Table, left: int = 1) -> str:
    """A table as aligned plain text, its title first; the first ``left`` columns (names)
    align left, the others (numbers) right."""
    title, header, rows = table
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def render_markdown(table: Table) -> str:
    """A table as Markdown, its title in bold first."""
    title, header, rows = table
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
