"""PNG plots drawn from the results JSON (its ``summary`` list, and its ``targets`` for the
headline, computed from the summary where the JSON has none)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import headline
from .cells import LEAF_KINDS, Lookup, parse_leaves_layout, size_label
from .routes import BY_KEY
from .targets import check_targets


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files, or PlotsUnavailable saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "matplotlib is not installed: skipping plots (pip install 'fastbridge[bench]')"
        ) from None
    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _label(handoff: str) -> str:
    known = BY_KEY.get(handoff)
    return f"{known.number} {known.label}" if known else handoff


# One colour per route in every plot, and the copy baselines in greys, unlike any route.
_BASELINE_COLOURS = {"memcpy": "black", "ring_fill": "dimgray"}
# Matplotlib's cycle has ten colours; the routes after the tenth take these.
_MORE_COLOURS = ("darkgoldenrod", "teal", "indigo", "crimson", "olivedrab", "navy")


def _colour(handoff: str) -> str:
    if handoff in _BASELINE_COLOURS:
        return _BASELINE_COLOURS[handoff]
    known = BY_KEY.get(handoff)
    if known is None:
        return "silver"
    if known.number <= 10:
        return f"C{known.number - 1}"
    return _MORE_COLOURS[(known.number - 11) % len(_MORE_COLOURS)]


def _lines(ax: Any, at: Lookup, scenario: str, layout: str, metric: str, scale: float) -> list[int]:
    """Draw one line per route; returns the batch sizes drawn (the caller sets the ticks)."""
    sizes = at.sizes(scenario, layout)
    for handoff in at.handoffs(scenario):
        xs, ys, lo, hi = [], [], [], []
        for size in sizes:
            row = at.rows.get((scenario, layout, size, handoff))
            if row is None or metric not in row["metrics"]:
                continue
            m = row["metrics"][metric]
            xs.append(size)
            ys.append(m["median"] * scale)
            lo.append((m["median"] - m["min"]) * scale)
            hi.append((m["max"] - m["median"]) * scale)
        if xs:
            style = "--" if handoff in ("floor", "memcpy") else "-"
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                label=_label(handoff),
                color=_colour(handoff),
                marker="o",
                ms=3,
                linestyle=style,
                capsize=2,
            )
    return list(sizes)


def _axes(ax: Any, sizes: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [size_label(s) for s in sizes])
    ax.grid(True, which="both", alpha=0.3)


Save = Callable[[Any, str], None]
"""Lays out, writes and closes a figure under a file name."""


def draw(result: dict[str, Any], out_dir: str) -> list[str]:
    """Draw every plot the results allow into ``out_dir``; returns the files written, the
    headline first (then leaves.png and the every-route plots)."""
    plt = pyplot()
    at = Lookup(result["summary"])
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    targets = result.get("targets")
    _headline(plt, targets if targets is not None else check_targets(result["summary"]), save)
    _leaves(plt, at, save)
    _every_handoff(plt, at, result["meta"], save)
    _e2e_and_memory(plt, at, save)
    return written


def _every_handoff(plt: Any, at: Lookup, meta: dict[str, Any], save: Save) -> None:
    """One line per route against batch size: handoff, throughput and sharded."""
    step = meta.get("step_seconds")
    for scenario, metric, scale, unit, name in (
        ("handoff", "consumer_s", 1e6, "consumer-visible µs per batch", "handoff_consumer.png"),
        ("handoff", "wall_s", 1e3, "wall ms per batch (step included)", "handoff_wall.png"),
        ("throughput", "gbps", 1.0, "delivered GB/s (no step)", "throughput.png"),
        ("sharded", "consumer_s", 1e6, "consumer-visible µs per batch", "sharded_consumer.png"),
        ("sharded", "wall_s", 1e3, "wall ms per batch (step included)", "sharded_wall.png"),
    ):
        layouts = at.layouts(scenario)
        if not layouts:
            continue
        fig, axes = plt.subplots(1, len(layouts), figsize=(6.5 * len(layouts), 4.8), squeeze=False)
        for ax, layout in zip(axes[0], layouts, strict=True):
            sizes = _lines(ax, at, scenario, layout, metric, scale)
            if scenario == "throughput":
                # memcpy and ring fill: what moving the bytes costs. Zero-copy routes hand
                # over aliases and move nothing, so their "GB/s" can pass memcpy's.
                sizes += _lines(ax, at, "copy", "", "gbps", 1.0)
                ax.text(
                    0.01,
                    0.01,
                    "zero-copy routes move no bytes: their GB/s is batch size / handoff time",
                    transform=ax.transAxes,
                    fontsize=6,
                    alpha=0.7,
                )
            _axes(ax, sorted(set(sizes)))
            ax.set_title(f"{scenario}: {'one float32 leaf' if layout == 'f32' else '6-leaf dict'}")
            ax.set_xlabel("batch size")
            ax.set_ylabel(unit)
        # Outside the axes: inside, it covered the lines at the largest sizes.
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if scenario == "sharded":
            # Its own calibration, in its own process; plus reading every shard on its device.
            chain = meta.get("sharded", {}).get("step_seconds")
            if chain:
                fig.suptitle(
                    f"jitted CPU step after every batch: {chain * 1e3:.1f} ms of matmuls on one "
                    "device, plus a read of every shard",
                    fontsize=9,
                )
        elif scenario == "handoff" and step:
            fig.suptitle(f"jitted CPU step of {step * 1e3:.1f} ms after every batch", fontsize=9)
        save(fig, name)


def _e2e_and_memory(plt: Any, at: Lookup, save: Save) -> None:
    for layout in at.layouts("e2e"):
        handoffs = at.handoffs("e2e")
        size = at.sizes("e2e", layout)[0]
        rows = [at.rows[("e2e", layout, size, p)]["metrics"] for p in handoffs]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        names = [_label(p) for p in handoffs]
        left.barh(names, [r["steps_per_s"]["median"] for r in rows])
        left.set_xlabel("steps/s (higher is better)")
        right.barh(names, [r["wait_fraction"]["median"] for r in rows])
        right.set_xlabel("share of wall time waiting for input")
        right.set_yticks([])
        fig.suptitle("end to end: JPEG decode + flip, shuffle, batch -> MLP train step")
        save(fig, "e2e.png")

    for layout in at.layouts("memory"):
        handoffs = at.handoffs("memory")
        size = at.sizes("memory", layout)[0]
        rows = [at.rows[("memory", layout, size, p)]["metrics"] for p in handoffs]
        names = [_label(p) for p in handoffs]
        # Only the measures in which the routes differ (bars of one length say nothing).
        shown = []
        for metric, scale, title in (
            ("rss_peak", 1 / (1 << 20), "peak RSS MiB"),
            ("rss_growth", 1 / (1 << 20), "RSS growth MiB over the run"),
            ("minor_faults", 1.0, "minor page faults per batch"),
        ):
            values = [r.get(metric, {"median": 0})["median"] * scale for r in rows]
            if max(values) > 1.05 * min(values) + 1e-9:
                shown.append((values, title))
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(4.7 * len(shown), 4.5), squeeze=False)
        for i, (values, title) in enumerate(shown):
            ax = axes[0][i]
            ax.barh(names, values, color=[_colour(p) for p in handoffs])
            ax.set_xlabel(title)
            if i:
                ax.set_yticks([])
        fig.suptitle(f"memory, {size_label(size)} batches, no step")
        save(fig, "memory.png")


_VERDICT_COLOURS = {"met": "tab:green", "MISSED": "tab:red", "info": "tab:gray"}
_SHORT = {"forced": "shapes"}
"""The headline plot's names of scenarios over their cases, where the key would mislead."""


def _headline(plt: Any, targets: list[dict[str, Any]], save: Save) -> None:
    """headline.png: auto's speed over the best peer at every headline case, the bracket of
    its rounds as an error bar, and the line at 1 (above it, fastbridge is faster)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    rows = [r for r in headline.rows(targets) if r.speed is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(max(7.0, 0.42 * len(rows) + 2.5), 5.2))
    for i, r in enumerate(rows):
        colour = _VERDICT_COLOURS.get(r.verdict.split(" ")[0], "tab:gray")
        if r.verdict.endswith("(noisy)"):
            colour = "tab:orange"
        speed = float(r.speed or 0.0)
        low = speed if r.low is None else r.low
        high = speed if r.high is None else r.high
        ax.errorbar(
            i, speed, yerr=[[speed - low], [high - speed]], fmt="o", ms=5, color=colour, capsize=3
        )
        if abs(r.goal - 1.0) > 1e-9:
            ax.hlines(r.goal, i - 0.35, i + 0.35, colors="black", linestyles=":", lw=1)
    ax.axhline(1.0, color="black", lw=1)
    # A thin line between scenarios, and each scenario's short name centred above its cases.
    starts = [i for i, r in enumerate(rows) if i == 0 or r.key != rows[i - 1].key]
    for start, end in zip(starts, [*starts[1:], len(rows)], strict=True):
        if start:
            ax.axvline(start - 0.5, color="silver", lw=0.8)
        name = _SHORT.get(rows[start].key, rows[start].key)
        ax.text(
            (start + end - 1) / 2,
            1.01,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=7,
        )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=6)
    labels = [f"{r.case} (vs {r.peer})" for r in rows]
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("auto's speed / best peer's\n(above 1: fastbridge is faster)", fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    legend = [
        Line2D([], [], marker="o", ls="", color=c, label=name)
        for name, c in (("met", "tab:green"), ("MISSED", "tab:red"), ("noisy", "tab:orange"))
    ]
    ax.legend(handles=legend, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(
        "fastbridge stream(ds) against the best peer, case by case\n"
        "median over interleaved rounds; bars from the worst to the best round",
        fontsize=9,
        pad=16,
    )
    save(fig, "headline.png")


def _leaves(plt: Any, at: Lookup, save: Save) -> None:
    """leaves.png: batches/s of every route against the leaf count, per source and leaf size."""
    panels: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for layout in at.layouts("leaves"):
        kind, count = parse_leaves_layout(layout)
        for size in at.sizes("leaves", layout):
            panels.setdefault((kind, size), []).append((count, layout))
    if not panels:
        return
    order = sorted(
        panels, key=lambda p: (p[1], LEAF_KINDS.index(p[0]) if p[0] in LEAF_KINDS else 9)
    )
    cols = len({kind for kind, _ in order})
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    for ax, (kind, size) in zip(axes.reshape(-1), order, strict=False):
        cases = sorted(panels[(kind, size)])
        for handoff in at.handoffs("leaves"):
            points = [(c, at.rows.get(("leaves", layout, size, handoff))) for c, layout in cases]
            found = [
                (c, row["metrics"]["batches_per_s"])
                for c, row in points
                if row is not None and "batches_per_s" in row["metrics"]
            ]
            if not found:
                continue
            xs = [c for c, _ in found]
            ys = [m["median"] for _, m in found]
            err = [
                [m["median"] - m["min"] for _, m in found],
                [m["max"] - m["median"] for _, m in found],
            ]
            ax.errorbar(
                xs,
                ys,
                yerr=err,
                label=_label(handoff),
                color=_colour(handoff),
                marker="o",
                ms=3,
                capsize=2,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([c for c, _ in cases], [str(c) for c, _ in cases])
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{kind} source, {size_label(size)} float32 leaves", fontsize=9)
        ax.set_xlabel("leaves per batch")
        ax.set_ylabel("batches/s, no step")
    for ax in axes.reshape(-1)[len(order) :]:
        ax.set_visible(False)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("leaves: the input ceiling of each route (a loop that only pulls batches)")
    save(fig, "leaves.png")
