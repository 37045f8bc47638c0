"""PNG plots drawn from the results JSON (only its ``summary`` list is read)."""

from __future__ import annotations

import os
from typing import Any

from .report import Lookup, size_label
from .routes import BY_KEY


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


def _label(route: str) -> str:
    known = BY_KEY.get(route)
    return f"{known.number} {known.label}" if known else route


# One colour per route in every plot, and the copy baselines in greys, unlike any route.
_BASELINE_COLOURS = {"memcpy": "black", "ring_fill": "dimgray"}
# Matplotlib's cycle has ten colours; the routes after the tenth take these.
_MORE_COLOURS = ("darkgoldenrod", "teal", "indigo", "crimson", "olivedrab", "navy")


def _colour(route: str) -> str:
    if route in _BASELINE_COLOURS:
        return _BASELINE_COLOURS[route]
    known = BY_KEY.get(route)
    if known is None:
        return "silver"
    if known.number <= 10:
        return f"C{known.number - 1}"
    return _MORE_COLOURS[(known.number - 11) % len(_MORE_COLOURS)]


def _lines(ax: Any, at: Lookup, scenario: str, layout: str, metric: str, scale: float) -> list[int]:
    """Draw one line per route; returns the batch sizes drawn (the caller sets the ticks)."""
    sizes = at.sizes(scenario, layout)
    for route in at.routes(scenario):
        xs, ys, lo, hi = [], [], [], []
        for size in sizes:
            row = at.rows.get((scenario, layout, size, route))
            if row is None or metric not in row["metrics"]:
                continue
            m = row["metrics"][metric]
            xs.append(size)
            ys.append(m["median"] * scale)
            lo.append((m["median"] - m["min"]) * scale)
            hi.append((m["max"] - m["median"]) * scale)
        if xs:
            style = "--" if route in ("floor", "memcpy") else "-"
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                label=_label(route),
                color=_colour(route),
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


def draw(result: dict[str, Any], out_dir: str) -> list[str]:
    """Draw every plot the results allow into ``out_dir``; returns the files written."""
    plt = pyplot()
    at = Lookup(result["summary"])
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    step = result["meta"].get("step_seconds")
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
            chain = result["meta"].get("sharded", {}).get("step_seconds")
            if chain:
                fig.suptitle(
                    f"jitted CPU step after every batch: {chain * 1e3:.1f} ms of matmuls on one "
                    "device, plus a read of every shard",
                    fontsize=9,
                )
        elif scenario == "handoff" and step:
            fig.suptitle(f"jitted CPU step of {step * 1e3:.1f} ms after every batch", fontsize=9)
        save(fig, name)

    for layout in at.layouts("e2e"):
        routes = at.routes("e2e")
        size = at.sizes("e2e", layout)[0]
        rows = [at.rows[("e2e", layout, size, p)]["metrics"] for p in routes]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        names = [_label(p) for p in routes]
        left.barh(names, [r["steps_per_s"]["median"] for r in rows])
        left.set_xlabel("steps/s (higher is better)")
        right.barh(names, [r["wait_fraction"]["median"] for r in rows])
        right.set_xlabel("share of wall time waiting for input")
        right.set_yticks([])
        fig.suptitle("end to end: JPEG decode + flip, shuffle, batch -> MLP train step")
        save(fig, "e2e.png")

    for layout in at.layouts("memory"):
        routes = at.routes("memory")
        size = at.sizes("memory", layout)[0]
        rows = [at.rows[("memory", layout, size, p)]["metrics"] for p in routes]
        names = [_label(p) for p in routes]
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
            ax.barh(names, values, color=[_colour(p) for p in routes])
            ax.set_xlabel(title)
            if i:
                ax.set_yticks([])
        fig.suptitle(f"memory, {size_label(size)} batches, no step")
        save(fig, "memory.png")
    return written
