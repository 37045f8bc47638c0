"""Tables, the target list and the Markdown report, all computed from raw samples.

The summary and its cells are in ``cells``, the targets in ``targets`` and the headline in
``headline``; their names are re-exported here, where earlier code found them.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import headline
from .cells import (
    LEAF_KINDS,
    SUMMARY_METRICS,
    Lookup,
    MiB,
    Table,
    parse_leaves_layout,
    parse_size,
    render_markdown,
    render_text,
    size_label,
    summarize,
)
from .routes import BY_KEY
from .targets import Ratios, check_targets, noisy, verdict

__all__ = [
    "SUMMARY_METRICS",
    "Lookup",
    "MiB",
    "Ratios",
    "check_targets",
    "machine_info",
    "markdown",
    "noise_note",
    "noisy",
    "parse_size",
    "render_markdown",
    "render_targets_text",
    "render_text",
    "size_label",
    "summarize",
    "tables",
    "target_lines",
]


def _fmt_range(scale: float, digits: int) -> Callable[[dict[str, Any]], str]:
    def fmt(m: dict[str, float]) -> str:
        return (
            f"{m['median'] * scale:.{digits}f} "
            f"[{m['min'] * scale:.{digits}f}-{m['max'] * scale:.{digits}f}]"
        )

    return fmt


def _fmt_median(scale: float, digits: int) -> Callable[[dict[str, Any]], str]:
    return lambda m: f"{m['median'] * scale:.{digits}f}"


TABLES: dict[str, list[tuple[str, str, Callable[[dict[str, Any]], str]]]] = {
    "handoff": [
        ("consumer-visible µs per batch, median [min-max]", "consumer_s", _fmt_range(1e6, 0)),
        ("wall ms per batch (step included), median [min-max]", "wall_s", _fmt_range(1e3, 2)),
        ("CPU ms per batch, all threads", "cpu_s", _fmt_median(1e3, 2)),
        (
            "MiB copied per batch on the consumer thread / by the producer",
            "copied",
            lambda m: str(m["text"]),
        ),
        ("peak RSS MiB during the run", "rss_peak", _fmt_median(1 / MiB, 0)),
    ],
    "throughput": [
        ("delivered GB/s, no step, median [min-max]", "gbps", _fmt_range(1, 2)),
        ("consumer-visible µs per batch", "consumer_s", _fmt_median(1e6, 0)),
        ("CPU ms per batch, all threads", "cpu_s", _fmt_median(1e3, 2)),
    ],
    "copy": [
        ("GB/s, median [min-max]", "gbps", _fmt_range(1, 2)),
        ("CPU ms per copy, all threads", "cpu_s", _fmt_median(1e3, 2)),
    ],
    "sharded": [
        ("consumer-visible µs per batch, median [min-max]", "consumer_s", _fmt_range(1e6, 0)),
        ("wall ms per batch (step included), median [min-max]", "wall_s", _fmt_range(1e3, 2)),
        ("CPU ms per batch, all threads", "cpu_s", _fmt_median(1e3, 2)),
        (
            "MiB copied per batch on the consumer thread / off it",
            "copied",
            lambda m: str(m["text"]),
        ),
    ],
    "e2e": [
        ("steps/s, median [min-max]", "steps_per_s", _fmt_range(1, 1)),
        ("share of wall time waiting for input", "wait_fraction", _fmt_median(1, 3)),
        ("CPU ms per step, all threads", "cpu_s", _fmt_median(1e3, 1)),
    ],
    "memory": [
        ("peak RSS MiB", "rss_peak", _fmt_median(1 / MiB, 0)),
        ("RSS growth MiB over the run", "rss_growth", _fmt_median(1 / MiB, 1)),
        ("minor page faults per batch", "minor_faults", _fmt_median(1, 2)),
        ("consumer-visible µs per batch", "consumer_s", _fmt_median(1e6, 0)),
    ],
}

SCENARIO_TITLES = {
    "handoff": "Handoff (input keeps up, jitted CPU step after each batch)",
    "throughput": "Throughput (no step)",
    "copy": "memcpy versus ring slot fill (same thread count)",
    "e2e": "End to end (JPEG decode + flip map, shuffle, batch -> MLP train step)",
    "memory": "Memory (no step)",
    "sharded": "Sharded (batch axis split over CPU devices, jitted step after each batch)",
}


def _cell(row: dict[str, Any] | None, metric: str, fmt: Callable[[dict[str, Any]], str]) -> str:
    if row is None:
        return "-"
    m = row["metrics"]
    if metric == "copied":
        if "consumer_copied_bytes" not in m:
            return "-"
        a = m["consumer_copied_bytes"]["median"] / MiB
        b = m.get("producer_copied_bytes", {"median": 0})["median"] / MiB
        return f"{a:.2f} / {b:.2f}"
    if metric not in m:
        return "-"
    return fmt(m[metric])


def tables(summary: list[dict[str, Any]]) -> list[Table]:
    """(title, header, rows) for every scenario, layout and metric present in ``summary``."""
    at = Lookup(summary)
    out = []
    for scenario, specs in TABLES.items():
        for layout in at.layouts(scenario):
            sizes = at.sizes(scenario, layout)
            handoffs = at.handoffs(scenario)
            for title, metric, fmt in specs:
                header = ["route", *(size_label(s) for s in sizes)]
                if scenario == "e2e":
                    header = ["route", "value"]
                rows = []
                for handoff in handoffs:
                    cells = [
                        _cell(at.rows.get((scenario, layout, s, handoff)), metric, fmt)
                        for s in sizes
                    ]
                    if all(c == "-" for c in cells):
                        continue
                    known = BY_KEY.get(handoff)
                    name = f"{known.number} {known.label}" if known else handoff
                    rows.append([name, *cells])
                heading = SCENARIO_TITLES[scenario]
                if layout:
                    heading += f", {'one float32 leaf' if layout == 'f32' else '6-leaf dict'}"
                out.append((f"{heading}: {title}", header, rows))
    out += _leaves_tables(at)
    out += _shapes_tables(at)
    return out


def _name(row: dict[str, Any]) -> str:
    known = BY_KEY.get(row["route"])
    return f"{known.number} {known.label}" if known else str(row.get("label", row["route"]))


LEAF_METRICS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("batches/s (no step), median [min-max]", "batches_per_s", _fmt_range(1, 0)),
    ("CPU µs per batch, all threads", "cpu_s", _fmt_median(1e6, 0)),
    ("µs inside next() per batch", "consumer_s", _fmt_median(1e6, 0)),
]


def _leaves_tables(at: Lookup) -> list[Table]:
    """Per source kind and leaf size: a route per row, a leaf count per column."""
    by_kind: dict[str, list[tuple[int, str]]] = {}
    for layout in at.layouts("leaves"):
        kind, count = parse_leaves_layout(layout)
        by_kind.setdefault(kind, []).append((count, layout))
    out = []
    kinds = [k for k in LEAF_KINDS if k in by_kind] + sorted(set(by_kind) - set(LEAF_KINDS))
    for kind in kinds:
        layouts = sorted(by_kind[kind])
        sizes = sorted({size for _, layout in layouts for size in at.sizes("leaves", layout)})
        for size in sizes:
            header = ["route", *(f"{count} x {size_label(size)}" for count, _ in layouts)]
            for title, metric, fmt in LEAF_METRICS:
                rows = []
                for handoff in at.handoffs("leaves"):
                    found = [
                        at.rows.get(("leaves", layout, size, handoff)) for _, layout in layouts
                    ]
                    cells = [_cell(row, metric, fmt) for row in found]
                    if any(c != "-" for c in cells):
                        rows.append([_name(next(r for r in found if r)), *cells])
                source = "list of NumPy dicts" if kind == "numpy" else f"{kind} pipeline"
                heading = f"Leaves ({source}, float32 leaves of {size_label(size)}): {title}"
                out.append((heading, header, rows))
    return out


def _shapes_tables(at: Lookup) -> list[Table]:
    """Distinct shapes against one shape, and the forced route's ceiling against the sync loop."""
    out = []
    metrics = [
        ("µs per batch, median [min-max]", "wall_s", _fmt_range(1e6, 0)),
        ("CPU µs per batch", "cpu_s", _fmt_median(1e6, 0)),
        ("RSS growth MiB", "rss_growth", _fmt_median(1 / MiB, 1)),
        ("peak RSS MiB", "rss_peak", _fmt_median(1 / MiB, 0)),
    ]
    for layout in at.layouts("shapes"):
        for size in at.sizes("shapes", layout):
            rows = []
            for handoff in at.handoffs("shapes"):
                row = at.rows.get(("shapes", layout, size, handoff))
                if row is not None:
                    rows.append([_name(row), *(_cell(row, m, fmt) for _, m, fmt in metrics)])
            title = (
                f"Shapes (FASTBRIDGE_TRANSFER=device_put, no step, {layout} float32 leaves "
                f"from {size_label(size)}): every batch a new shape vs one shape"
            )
            out.append((title, ["run", *(name for name, _, _ in metrics)], rows))
    columns = [
        (layout, size) for layout in at.layouts("forced") for size in at.sizes("forced", layout)
    ]
    if columns:
        header = ["route"]
        for layout, size in columns:
            kind, count = parse_leaves_layout(layout)
            header.append(f"{kind} {count} x {size_label(size)}")
        rows = []
        for handoff in at.handoffs("forced"):
            found = [at.rows.get(("forced", layout, size, handoff)) for layout, size in columns]
            cells = [_cell(row, "batches_per_s", _fmt_range(1, 0)) for row in found]
            rows.append([_name(next(r for r in found if r)), *cells])
        title = "Shapes: the forced device_put route's ceiling, batches/s (no step) [min-max]"
        out.append((title, header, rows))
    return out


def target_lines(targets: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    out = []
    for t in targets:
        ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.3f}"
        if t["ratio"] is not None and t.get("low") is not None:
            ratio += f" [{t['low']:.3f}-{t['high']:.3f}]"
        goal = "(info)" if t["op"] == "info" else f"{t['op']} {t['threshold']:g}"
        out.append((f"{t['target']} ({t['where']})", goal, ratio, verdict(t)))
    return out


def noise_note(targets: list[dict[str, Any]]) -> str:
    """One sentence on how far the verdicts can be trusted."""
    judged = [t for t in targets if t["met"] is not None]
    flipping = [t for t in judged if noisy(t)]
    missed = [t for t in judged if t["met"] is False]
    if not flipping:
        return (
            f"{len(missed)} of {len(judged)} targets missed; no verdict is noisy (every round "
            "agrees with the median)."
        )
    return (
        f"{len(missed)} of {len(judged)} targets missed; {len(flipping)} verdicts are noisy "
        "(marked: their best and worst rounds disagree), so trust only the others. A busy "
        "machine or few rounds (--quick) widens the brackets: rerun on an idle machine, or "
        "with more --repeats, before reading a noisy verdict either way."
    )


def render_targets_text(targets: list[dict[str, Any]]) -> str:
    rows = target_lines(targets)
    if not rows:
        return "Targets: none measurable with the chosen routes and scenarios."
    table = (
        "All targets (median over rounds of the ratio within each round [lowest-highest])",
        ["target", "goal", "measured", "verdict"],
        [list(r) for r in rows],
    )
    return render_text(table) + "\n" + noise_note(targets)


# -- machine ----------------------------------------------------------------------------------
def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and the versions that matter for these numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    from .. import __version__, core_available

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            "fastbridge": __version__,
            "jax": _version("jax"),
            "jaxlib": _version("jaxlib"),
            "tensorflow": _version("tensorflow-cpu")
            if _version("tensorflow") == "not installed"
            else _version("tensorflow"),
            "numpy": _version("numpy"),
        },
        "core_available": core_available(),
    }


def markdown(result: dict[str, Any]) -> str:
    """The whole run as Markdown, ready to paste into benches/RESULTS.md: the headline first,
    then the setup, every target, the per-route tables and the plots."""
    meta = result["meta"]
    plots = [os.path.basename(p) for p in result.get("plots") or []]
    figure = "headline.png" if "headline.png" in plots else None
    lines = [
        f"## Results: {meta['started']}{' (--quick)' if meta['args'].get('quick') else ''}",
        "",
        *headline.markdown(result["targets"], figure),
        "",
        "### Setup",
        "",
        *_setup_lines(meta),
        "",
        "### All targets",
        "",
        "Each ratio pairs the routes round by round (runs seconds apart, so drift cancels): the",
        "median over rounds, with the lowest and highest round in brackets.",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---:|---|",
    ]
    for name, goal, ratio, said in target_lines(result["targets"]):
        said = f"**{said}**" if said.startswith("MISSED") else said
        lines.append(f"| {name} | {goal} | {ratio} | {said} |")
    lines += ["", noise_note(result["targets"]), "", "### Every route"]
    for table in tables(result["summary"]):
        lines += ["", render_markdown(table)]
    if result.get("gpu"):
        lines += ["", "### Accelerator", "", str(result["gpu"])]
    others = [p for p in plots if p != figure]
    if others:
        lines += ["", "### Plots", ""]
        lines += [f"![{p}]({p})" for p in others]
    return "\n".join(lines) + "\n"


def _setup_lines(meta: dict[str, Any]) -> list[str]:
    m = meta["machine"]
    v = m["versions"]
    lines = [
        f"- Machine: {m['cpu']}, {m['cores']} cores"
        + (f", {m['memory_bytes'] / (1 << 30):.0f} GiB RAM" if m.get("memory_bytes") else ""),
        f"- {m['platform']}; Python {m['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, "
        f"tensorflow {v['tensorflow']}, numpy {v['numpy']}, fastbridge {v['fastbridge']} "
        f"(Rust core {'built' if m['core_available'] else 'missing'})",
        f"- Command: `python -m fastbridge.bench {' '.join(meta['argv'])}`".rstrip(),
        f"- Repeats: {meta['args']['repeats']}, interleaved (A B C ... A B C ...); "
        "medians with [min-max] over repeats.",
    ]
    if meta.get("step_seconds") is not None:
        lines.append(
            f"- Handoff step: a jitted CPU computation measured at "
            f"{meta['step_seconds'] * 1e3:.2f} ms ({meta['step_iterations']} chained "
            f"{meta['step_state']}x{meta['step_state']} matmuls + tanh), waited for every batch."
        )
    if meta.get("e2e_step_seconds") is not None:
        lines.append(
            f"- End-to-end train step: MLP {meta['e2e']}, measured at "
            f"{meta['e2e_step_seconds'] * 1e3:.2f} ms on a resident batch."
        )
    if meta.get("shapes"):
        lines.append(
            f"- Shapes: the stream's transfer route under FASTBRIDGE_TRANSFER=device_put was "
            f"{meta['shapes'].get('transfer_route')!r}."
        )
    return lines
