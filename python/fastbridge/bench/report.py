"""Summaries, target checks, tables and the Markdown report, all computed from raw samples."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .routes import BY_KEY, PEERS

MiB = 1 << 20
SUMMARY_METRICS = (
    "consumer_s",
    "consumer_median_s",
    "wall_s",
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


def summarize(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median, min and max of every metric, per scenario, layout, size and route."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[(s["scenario"], s.get("layout", ""), s.get("size_bytes", 0), s["route"])].append(s)
    out = []
    for (scenario, layout, size, route), group in groups.items():
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
                "route": route,
                "route_number": group[0].get("route_number", 0),
                "label": group[0].get("label", route),
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
        self, scenario: str, layout: str, size: int, route: str, metric: str
    ) -> float | None:
        row = self.rows.get((scenario, layout, size, route))
        if row is None or metric not in row["metrics"]:
            return None
        return float(row["metrics"][metric]["median"])

    def sizes(self, scenario: str, layout: str) -> list[int]:
        return sorted({k[2] for k in self.rows if k[0] == scenario and k[1] == layout})

    def layouts(self, scenario: str) -> list[str]:
        found = {k[1] for k in self.rows if k[0] == scenario}
        return [x for x in ("f32", "dict", "") if x in found] + sorted(found - {"f32", "dict", ""})

    def routes(self, scenario: str) -> list[str]:
        return sorted({k[3] for k in self.rows if k[0] == scenario}, key=_route_order)


def _route_order(key: str) -> tuple[int, str]:
    route = BY_KEY.get(key)
    return (route.number if route else 100, key)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


Key = tuple[str, str, int, str]
"""(scenario, layout, size, route): one cell of the results."""


class Ratios:
    """Ratios between two cells of one run.

    With raw samples, a ratio is the median over rounds of the ratio within each round
    (route A's round-k sample over route B's round-k sample): runs of one round are seconds
    apart, so drift of the machine between rounds cancels, which is why the routes are
    interleaved. The range over rounds shows how noisy the ratio is. Without samples (or when
    the rounds do not match), it falls back to the ratio of the medians, with no range.
    """

    def __init__(
        self, summary: list[dict[str, Any]], samples: Iterable[dict[str, Any]] | None = None
    ) -> None:
        self.at = Lookup(summary)
        self.rounds: dict[Key, dict[int, dict[str, Any]]] = defaultdict(dict)
        for s in samples or ():
            key = (s["scenario"], s.get("layout", ""), s.get("size_bytes", 0), s["route"])
            self.rounds[key][int(s.get("rep", 0))] = s

    def __call__(
        self, a: Key, b: Key, metric: str
    ) -> tuple[float | None, float | None, float | None]:
        """``(median, lowest, highest)`` of ``a / b`` for ``metric``; the range is ``None``
        when the ratio comes from medians. Only routes of one scenario, layout and size run
        interleaved in the same rounds; other pairs (one layout against another) ran minutes
        apart, so their ratio is the ratio of the medians."""
        ra, rb = self.rounds.get(a, {}), self.rounds.get(b, {})
        if ra and set(ra) == set(rb) and a[:3] == b[:3]:
            per_round = [_ratio(ra[k].get(metric), rb[k].get(metric)) for k in sorted(ra)]
            values = [r for r in per_round if r is not None]
            if len(values) == len(per_round):
                return statistics.median(values), min(values), max(values)
        return _ratio(self.at(*a, metric), self.at(*b, metric)), None, None


def check_targets(
    summary: list[dict[str, Any]], samples: Iterable[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The benchmark's targets, each with its measured ratio and met / MISSED (None: not measured).

    Ratios pair the rounds when ``samples`` are given (see :class:`Ratios`); ``low`` and
    ``high`` are then the lowest and highest ratio over rounds, so a verdict that the noise
    could flip shows as such."""
    at = Lookup(summary)
    ratio = Ratios(summary, samples)
    out: list[dict[str, Any]] = []

    def add(
        name: str,
        detail: str,
        measured: tuple[float | None, float | None, float | None],
        op: str,
        threshold: float,
    ) -> None:
        value, low, high = measured
        met = None
        if value is not None:
            met = value <= threshold if op == "<=" else value >= threshold
        out.append(
            {
                "target": name,
                "where": detail,
                "ratio": value,
                "low": low,
                "high": high,
                "op": op,
                "threshold": threshold,
                "met": met,
            }
        )

    h = "handoff"
    for layout in at.layouts(h):
        for size in at.sizes(h, layout):
            where = f"{layout} {size_label(size)}"

            def c(
                a: str, b: str, metric: str = "consumer_s", size: int = size, layout: str = layout
            ) -> tuple[float | None, float | None, float | None]:
                return ratio((h, layout, size, a), (h, layout, size, b), metric)

            add("auto consumer time vs route 3", where, c("auto", "dlpack"), "<=", 0.25)
            add("auto wall time vs route 3", where, c("auto", "dlpack", "wall_s"), "<=", 1.05)
            if size <= 16 * MiB:
                add("ring consumer time vs route 3", where, c("ring", "dlpack"), "<=", 0.25)
            if size >= 64 * MiB:
                add("ring wall time vs route 3", where, c("ring", "dlpack", "wall_s"), "<=", 1.2)
            if size == 16 * MiB:
                add(
                    "tutorial copy / auto consumer time",
                    where,
                    c("tutorial", "auto"),
                    ">=",
                    10.0,
                )
            add("numpy consumer time vs ring", where, c("numpy", "ring"), "<=", 2.0)
    for scenario in (h, "sharded"):
        for layout in at.layouts(scenario):
            for size in at.sizes(scenario, layout):
                for metric, what, threshold in (
                    ("consumer_s", "consumer", 0.25),
                    ("wall_s", "wall", 1.0),
                ):
                    # The peer with the best median is the one to beat; rounds pair against it.
                    peers = [
                        (value, r)
                        for r in PEERS
                        if (value := at(scenario, layout, size, r, metric)) is not None
                    ]
                    if not peers:
                        continue
                    best = min(peers)[1]
                    add(
                        f"auto {what} time vs best peer",
                        f"{scenario} {layout} {size_label(size)}, vs route {BY_KEY[best].number}",
                        ratio(
                            (scenario, layout, size, "auto"),
                            (scenario, layout, size, best),
                            metric,
                        ),
                        "<=",
                        threshold,
                    )
    if "dict" in at.layouts(h) and "f32" in at.layouts(h):
        for size in at.sizes(h, "dict"):
            for route in ("auto", "ring"):
                add(
                    f"6-leaf dict vs 1 leaf, {route} consumer time",
                    size_label(size),
                    ratio((h, "dict", size, route), (h, "f32", size, route), "consumer_s"),
                    "<=",
                    2.0,
                )
    for size in at.sizes("copy", ""):
        if size < 64 * MiB:
            continue
        fill, memcpy = ("copy", "", size, "ring_fill"), ("copy", "", size, "memcpy")
        add(
            "ring slot fill vs memcpy bandwidth",
            size_label(size),
            ratio(fill, memcpy, "gbps"),
            ">=",
            0.7,
        )
        add(
            "ring slot fill CPU vs memcpy CPU",
            size_label(size),
            ratio(fill, memcpy, "cpu_s"),
            "<=",
            1.3,
        )
    for layout in at.layouts("e2e"):
        for size in at.sizes("e2e", layout):
            # The anchor with the best median is the one to beat; rounds pair against it.
            anchors = [
                (value, r)
                for r in PEERS
                if (value := at("e2e", layout, size, r, "steps_per_s")) is not None
            ]
            best = max(anchors)[1] if anchors else "dlpack"
            add(
                "end-to-end auto steps/s vs best anchor",
                f"e2e, vs route {BY_KEY[best].number}",
                ratio(("e2e", layout, size, "auto"), ("e2e", layout, size, best), "steps_per_s"),
                ">=",
                1.0,
            )
    return out


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


def tables(summary: list[dict[str, Any]]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every scenario, layout and metric present in ``summary``."""
    at = Lookup(summary)
    out = []
    for scenario, specs in TABLES.items():
        for layout in at.layouts(scenario):
            sizes = at.sizes(scenario, layout)
            routes = at.routes(scenario)
            for title, metric, fmt in specs:
                header = ["route", *(size_label(s) for s in sizes)]
                if scenario == "e2e":
                    header = ["route", "value"]
                rows = []
                for route in routes:
                    cells = [
                        _cell(at.rows.get((scenario, layout, s, route)), metric, fmt) for s in sizes
                    ]
                    if all(c == "-" for c in cells):
                        continue
                    known = BY_KEY.get(route)
                    name = f"{known.number} {known.label}" if known else route
                    rows.append([name, *cells])
                heading = SCENARIO_TITLES[scenario]
                if layout:
                    heading += f", {'one float32 leaf' if layout == 'f32' else '6-leaf dict'}"
                out.append((f"{heading}: {title}", header, rows))
    return out


def render_text(table: tuple[str, list[str], list[list[str]]]) -> str:
    title, header, rows = table
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def render_markdown(table: tuple[str, list[str], list[list[str]]]) -> str:
    title, header, rows = table
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def noisy(target: dict[str, Any]) -> bool:
    """Whether the rounds straddle the goal: the best round and the worst one disagree on
    the verdict, so the median alone cannot be trusted (rerun idle, or with more repeats)."""
    low, high = target.get("low"), target.get("high")
    if target["ratio"] is None or low is None or high is None:
        return False
    threshold = target["threshold"]
    if target["op"] == "<=":
        return bool(low <= threshold < high)
    return bool(low < threshold <= high)


def target_lines(targets: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    out = []
    for t in targets:
        ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.3f}"
        if t["ratio"] is not None and t.get("low") is not None:
            ratio += f" [{t['low']:.3f}-{t['high']:.3f}]"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        if noisy(t):
            verdict += " (noisy)"
        out.append(
            (f"{t['target']} ({t['where']})", f"{t['op']} {t['threshold']:g}", ratio, verdict)
        )
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
        "Targets (median over rounds of the ratio within each round [lowest-highest])",
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
    """The whole run as Markdown, ready to paste into benches/RESULTS.md."""
    meta = result["meta"]
    m = meta["machine"]
    v = m["versions"]
    lines = [
        f"## Results: {meta['started']}{' (--quick)' if meta['args'].get('quick') else ''}",
        "",
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
    lines += [
        "",
        "### Targets",
        "",
        "Each ratio pairs the routes round by round (runs seconds apart, so drift cancels): the",
        "median over rounds, with the lowest and highest round in brackets.",
        "",
        "| target | goal | measured | verdict |",
        "|---|---|---:|---|",
    ]
    for name, goal, ratio, verdict in target_lines(result["targets"]):
        verdict = f"**{verdict}**" if verdict.startswith("MISSED") else verdict
        lines.append(f"| {name} | {goal} | {ratio} | {verdict} |")
    lines += ["", noise_note(result["targets"])]
    for table in tables(result["summary"]):
        lines += ["", render_markdown(table)]
    if result.get("gpu"):
        lines += ["", "### Accelerator", "", str(result["gpu"])]
    if result.get("plots"):
        lines += ["", "### Plots", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in result["plots"]]
    return "\n".join(lines) + "\n"
