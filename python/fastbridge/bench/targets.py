"""The benchmark's targets: ratios within one run, paired round by round, with verdicts."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from .cells import (
    MEMORY_COUNTS,
    MEMORY_SLACK_MIB,
    Key,
    Lookup,
    MiB,
    parse_leaves_layout,
    sample_key,
    size_label,
)
from .routes import BY_KEY, PEERS, PREFETCHING, SYNCHRONOUS

Measured = tuple[float | None, float | None, float | None]
"""``(median, lowest, highest)``; the range is ``None`` when not paired by rounds."""
Combine = Callable[[list[float]], float | None]
"""A ratio made of one value per cell (in the order of the cells given)."""

LAYOUT_NAMES = {"f32": "one float32 leaf", "dict": "6-leaf dict"}


def _quotient(values: list[float]) -> float | None:
    a, b = values
    return None if b == 0 else a / b


class Ratios:
    """Ratios between cells of one run.

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
            self.rounds[sample_key(s)][int(s.get("rep", 0))] = s

    def __call__(self, a: Key, b: Key, metric: str) -> Measured:
        """``(median, lowest, highest)`` of ``a / b`` for ``metric``; the range is ``None``
        when the ratio comes from medians. Only routes of one scenario, layout and size run
        interleaved in the same rounds; other pairs (one layout against another) ran minutes
        apart, so their ratio is the ratio of the medians."""
        return self.combine([a, b], metric, _quotient)

    def combine(self, cells: list[Key], metric: str, fn: Combine) -> Measured:
        """``fn`` of the cells' ``metric``, round by round where they ran in the same rounds of
        one case (as :meth:`__call__`), else of their medians."""
        found = [self.rounds.get(cell, {}) for cell in cells]
        same_case = all(cell[:3] == cells[0][:3] for cell in cells)
        if found[0] and same_case and all(set(f) == set(found[0]) for f in found):
            per_round = []
            for k in sorted(found[0]):
                values = [f[k].get(metric) for f in found]
                per_round.append(
                    None if None in values else fn([float(v) for v in values if v is not None])
                )
            paired = [r for r in per_round if r is not None]
            if paired and len(paired) == len(per_round):
                return statistics.median(paired), min(paired), max(paired)
        medians = [self.at(*cell, metric) for cell in cells]
        if any(m is None for m in medians):
            return None, None, None
        return fn([float(m) for m in medians if m is not None]), None, None


class _Targets:
    """The targets found so far, and what computing one needs."""

    def __init__(
        self, summary: list[dict[str, Any]], samples: Iterable[dict[str, Any]] | None
    ) -> None:
        self.at = Lookup(summary)
        self.ratio = Ratios(summary, samples)
        self.out: list[dict[str, Any]] = []

    def add(
        self,
        name: str,
        where: str,
        measured: Measured,
        op: str,
        threshold: float,
        **about: Any,
    ) -> None:
        """One target; ``op`` is ``<=``, ``>=`` or ``info`` (a ratio shown without a verdict).
        ``about`` sets ``scenario``, ``case`` (the case in words), ``versus`` (the route
        compared with) and ``headline`` (whether the headline table lists it)."""
        value, low, high = measured
        met = None
        if value is not None and op != "info":
            met = value <= threshold if op == "<=" else value >= threshold
        self.out.append(
            {
                "target": name,
                "where": where,
                "ratio": value,
                "low": low,
                "high": high,
                "op": op,
                "threshold": threshold,
                "met": met,
                "scenario": about.get("scenario", where.split(" ", 1)[0]),
                "case": about.get("case", where),
                "versus": about.get("versus"),
                "headline": bool(about.get("headline", False)),
            }
        )

    def best(
        self, case: tuple[str, str, int], handoffs: Iterable[str], metric: str, highest: bool
    ) -> str | None:
        """The handoff of ``handoffs`` with the best median ``metric`` in ``case`` (the one to
        beat; rounds then pair against it), or ``None`` when none of them ran."""
        found = [(value, r) for r in handoffs if (value := self.at(*case, r, metric)) is not None]
        if not found:
            return None
        return (max(found) if highest else min(found))[1]


def check_targets(
    summary: list[dict[str, Any]], samples: Iterable[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The benchmark's targets, each with its measured ratio and met / MISSED (None: not
    measured, or shown for information).

    Ratios pair the rounds when ``samples`` are given (see :class:`Ratios`); ``low`` and
    ``high`` are then the lowest and highest ratio over rounds, so a verdict that the noise
    could flip shows as such."""
    t = _Targets(summary, list(samples) if samples is not None else None)
    _handoff_scenario_vs_route3(t)
    _vs_peers(t)
    _dict_vs_leaf(t)
    _copy(t)
    _e2e(t)
    _leaves(t)
    _shapes(t)
    return t.out


ROUTE3_TARGETS: tuple[tuple[str, str, str, str, str, float, Callable[[int], bool]], ...] = (
    ("auto consumer time vs route 3", "auto", "dlpack", "consumer_s", "<=", 0.25, lambda _: True),
    ("auto wall time vs route 3", "auto", "dlpack", "wall_s", "<=", 1.05, lambda _: True),
    ("ring consumer time vs route 3", "ring", "dlpack", "consumer_s", "<=", 0.25,
     lambda size: size <= 16 * MiB),
    ("ring wall time vs route 3", "ring", "dlpack", "wall_s", "<=", 1.2,
     lambda size: size >= 64 * MiB),
    ("tutorial copy / auto consumer time", "tutorial", "auto", "consumer_s", ">=", 10.0,
     lambda size: size == 16 * MiB),
    ("numpy consumer time vs ring", "numpy", "ring", "consumer_s", "<=", 2.0, lambda _: True),
)  # fmt: skip
"""handoff: (target, route A, route B, metric, op, goal, at which batch sizes) of A / B."""


def _handoff_scenario_vs_route3(t: _Targets) -> None:
    h = "handoff"
    for layout in t.at.layouts(h):
        for size in t.at.sizes(h, layout):
            where = f"{layout} {size_label(size)}"
            for name, a, b, metric, op, threshold, applies in ROUTE3_TARGETS:
                if applies(size):
                    measured = t.ratio((h, layout, size, a), (h, layout, size, b), metric)
                    t.add(name, where, measured, op, threshold, scenario=h)


PEER_TARGETS = (
    ("auto consumer time vs best prefetching peer", PREFETCHING, "consumer_s", 1.0, False),
    ("auto consumer time vs best synchronous route", SYNCHRONOUS, "consumer_s", 0.25, False),
    ("auto wall time vs best peer", PEERS, "wall_s", 1.0, True),
)
"""handoff and sharded: (target, peers, metric, goal, headline). Time inside ``next()`` is
judged against the peers that prefetch on a thread (which hide their transfer as a stream
does) and, 4 x lower, against those that transfer inside ``next()``; wall time against all."""


def _vs_peers(t: _Targets) -> None:
    for scenario in ("handoff", "sharded"):
        for layout in t.at.layouts(scenario):
            for size in t.at.sizes(scenario, layout):
                case = (scenario, layout, size)
                words = f"{LAYOUT_NAMES.get(layout, layout)}, {size_label(size)}"
                for name, peers, metric, threshold, headline in PEER_TARGETS:
                    best = t.best(case, peers, metric, highest=False)
                    if best is None:
                        continue
                    t.add(
                        name,
                        f"{scenario} {layout} {size_label(size)}, vs route {BY_KEY[best].number}",
                        t.ratio((*case, "auto"), (*case, best), metric),
                        "<=",
                        threshold,
                        scenario=scenario,
                        case=words,
                        versus=best,
                        headline=headline,
                    )


def _dict_vs_leaf(t: _Targets) -> None:
    h = "handoff"
    if "dict" not in t.at.layouts(h) or "f32" not in t.at.layouts(h):
        return
    for size in t.at.sizes(h, "dict"):
        for handoff in ("auto", "ring"):
            t.add(
                f"6-leaf dict vs 1 leaf, {handoff} consumer time",
                size_label(size),
                t.ratio((h, "dict", size, handoff), (h, "f32", size, handoff), "consumer_s"),
                "<=",
                2.0,
                scenario=h,
            )


def _copy(t: _Targets) -> None:
    for size in t.at.sizes("copy", ""):
        if size < 64 * MiB:
            continue
        fill, memcpy = ("copy", "", size, "ring_fill"), ("copy", "", size, "memcpy")
        where = size_label(size)
        bandwidth = t.ratio(fill, memcpy, "gbps")
        t.add("ring slot fill vs memcpy bandwidth", where, bandwidth, ">=", 0.7, scenario="copy")
        cpu = t.ratio(fill, memcpy, "cpu_s")
        t.add("ring slot fill CPU vs memcpy CPU", where, cpu, "<=", 1.3, scenario="copy")


def _e2e(t: _Targets) -> None:
    for layout in t.at.layouts("e2e"):
        for size in t.at.sizes("e2e", layout):
            # The anchor with the best median is the one to beat; rounds pair against it.
            best = t.best(("e2e", layout, size), PEERS, "steps_per_s", highest=True) or "dlpack"
            t.add(
                "end-to-end auto steps/s vs best anchor",
                f"e2e, vs route {BY_KEY[best].number}",
                t.ratio(("e2e", layout, size, "auto"), ("e2e", layout, size, best), "steps_per_s"),
                ">=",
                1.0,
                scenario="e2e",
                case="JPEG decode pipeline -> MLP train step",
                versus=best,
                headline=True,
            )


def sync_goal(leaves: int) -> tuple[str, float]:
    """The leaves scenario's goal against the synchronous loop: shown for information at one
    leaf (one ``device_put`` is all that loop does), as fast from 8 leaves, 1.5 x from 64."""
    if leaves >= 64:
        return ">=", 1.5
    if leaves >= 8:
        return ">=", 1.0
    return "info", 1.0


def _leaves(t: _Targets) -> None:
    s = "leaves"
    for layout in t.at.layouts(s):
        kind, count = parse_leaves_layout(layout)
        for size in t.at.sizes(s, layout):
            case = (s, layout, size)
            about = {"scenario": s, "case": f"{kind}, {count} x {size_label(size)}"}
            where = f"leaves {kind} {count} x {size_label(size)}"
            best = t.best(case, PREFETCHING, "batches_per_s", highest=True)
            if best is not None:
                t.add(
                    "auto batches/s vs best prefetching peer",
                    f"{where}, vs route {BY_KEY[best].number}",
                    t.ratio((*case, "auto"), (*case, best), "batches_per_s"),
                    ">=",
                    1.0,
                    versus=best,
                    headline=True,
                    **about,
                )
            if t.at(*case, "device_put", "batches_per_s") is not None:
                op, goal = sync_goal(count)
                measured = t.ratio((*case, "auto"), (*case, "device_put"), "batches_per_s")
                t.add(
                    "auto batches/s vs sync",
                    f"{where}, vs route 2",
                    measured,
                    op,
                    goal,
                    versus="device_put",
                    **about,
                )
            _leaves_cpu(t, case, where, about)


def _leaves_cpu(t: _Targets, case: tuple[str, str, int], where: str, about: dict[str, Any]) -> None:
    """auto's CPU per batch (all threads) against the leanest prefetching peer's, plus one
    memcpy of the batch where auto's backend copies (the ring does; direct does not)."""
    best = t.best(case, PREFETCHING, "cpu_s", highest=False)
    if best is None or t.at(*case, "auto", "cpu_s") is None:
        return
    copies = (t.at(*case, "auto", "producer_copied_bytes") or 0) > 0
    cells = [(*case, "auto"), (*case, best)]
    if copies:
        cells.append((*case, "memcpy"))
        where += f", vs route {BY_KEY[best].number} + one memcpy of the batch"
    else:
        where += f", vs route {BY_KEY[best].number} (auto copies nothing)"

    def allowance(values: list[float]) -> float | None:
        budget = sum(values[1:])
        return None if budget == 0 else values[0] / budget

    measured = t.ratio.combine(cells, "cpu_s", allowance)
    t.add("auto CPU per batch vs best peer's", where, measured, "<=", 1.0, versus=best, **about)


def _shapes(t: _Targets) -> None:
    for layout in t.at.layouts("shapes"):
        for size in t.at.sizes("shapes", layout):
            case = ("shapes", layout, size)
            where = f"forced device_put route, {layout} leaves from {size_label(size)}"
            about = {"scenario": "shapes", "case": f"{layout} leaves"}
            t.add(
                "distinct-shape vs one-shape time per batch",
                where,
                t.ratio((*case, "distinct"), (*case, "same"), "wall_s"),
                "<=",
                1.5,
                **about,
            )
            row = t.at.rows.get((*case, "distinct"))
            growth = (row or {}).get("metrics", {}).get("rss_growth")
            measured: Measured = (None, None, None)
            if growth is not None:
                measured = (growth["median"] / MiB, growth["min"] / MiB, growth["max"] / MiB)
            t.add(
                "RSS growth MiB over the distinct-shape run", where, measured, "<=", 150.0, **about
            )
            few, many = (f"new{n}" for n in MEMORY_COUNTS)
            t.add(
                f"RSS growth MiB over {MEMORY_COUNTS[1]} new shapes minus over "
                f"{MEMORY_COUNTS[0]} (bounded sizes)",
                where,
                t.ratio.combine(
                    [(*case, many), (*case, few)],
                    "rss_growth",
                    lambda values: (values[0] - values[1]) / MiB,
                ),
                "<=",
                MEMORY_SLACK_MIB,
                **about,
            )
    for layout in t.at.layouts("forced"):
        kind, count = parse_leaves_layout(layout)
        for size in t.at.sizes("forced", layout):
            case = ("forced", layout, size)
            t.add(
                "forced-route batches/s vs sync",
                f"forced device_put route, {kind} {count} x {size_label(size)}, vs route 2",
                t.ratio((*case, "forced"), (*case, "device_put"), "batches_per_s"),
                ">=",
                1.0,
                scenario="forced",
                case=f"{kind}, {count} x {size_label(size)}",
                versus="device_put",
                headline=True,
            )


def noisy(target: dict[str, Any]) -> bool:
    """Whether the rounds straddle the goal: the best round and the worst one disagree on
    the verdict, so the median alone cannot be trusted (rerun idle, or with more repeats)."""
    low, high = target.get("low"), target.get("high")
    if target["ratio"] is None or low is None or high is None or target["op"] == "info":
        return False
    threshold = target["threshold"]
    if target["op"] == "<=":
        return bool(low <= threshold < high)
    return bool(low < threshold <= high)


def verdict(target: dict[str, Any]) -> str:
    """``met``, ``MISSED``, ``not measured`` or ``info``; ``(noisy)`` where :func:`noisy`."""
    if target["op"] == "info" and target["ratio"] is not None:
        return "info"
    text = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
    return text + " (noisy)" if noisy(target) else text
