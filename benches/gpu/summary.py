"""What the check hands back: its JSON (rewritten after every phase) and the short table it
prints last.

    >>> medians_text({"median": {"4194304": 0.854}})
    '4 MiB 0.85 GB/s'
"""

from __future__ import annotations

import json
import os
from typing import Any

from consumer import MEASURES
from fastbridge.bench.cells import size_label
from h2d import H2D_METHODS

SUMMARY_HEADER = "=== fastbridge GPU check: summary ==="


def medians_text(found: dict[str, Any]) -> str:
    """A route's median GB/s per size (empty when it measured none)."""
    medians = found.get("median") or {}
    return ", ".join(f"{size_label(int(s))} {v:.2f} GB/s" for s, v in medians.items())


def h2d_lines(h2d: dict[str, Any]) -> list[str]:
    sizes = [str(s) for s in h2d["sizes"]]
    lines = [f"{'H2D GB/s (median)':<28}" + "".join(f"{size_label(int(s)):>9}" for s in sizes)]
    for name in H2D_METHODS:
        entry = h2d["methods"][name]
        if not entry["available"]:
            lines.append(f"  {entry['label']:<26} {entry['reason'] or 'unavailable'}")
            continue
        cells = [entry["median"].get(s) for s in sizes]
        lines.append(
            f"  {entry['label']:<26}"
            + "".join(f"{c:9.2f}" if c is not None else f"{'-':>9}" for c in cells)
        )
    stats = h2d.get("ring_stats") or {}
    lines.append(
        f"  ring stats: backend={stats.get('backend')} pinned={stats.get('pinned')} "
        f"transfer_route={stats.get('transfer_route')}; {h2d.get('rounds')} rounds"
    )
    return lines


def consumer_lines(consumer: dict[str, Any]) -> list[str]:
    lines = [f"{'consumer':<28}{'next() med':>11}{'p90 µs':>9}{'steps/s':>9}"]
    for key, entry in consumer["sizes"].items():
        lines.append(f"  {size_label(int(key))}, step {entry['step_seconds'] * 1e3:.2f} ms")
        for name, values in entry["median"].items():
            median_us, p90_us, steps = (values[m] for m in MEASURES)
            lines.append(f"    {name:<24}{median_us:11.1f}{p90_us:9.1f}{steps:9.1f}")
    return lines


def correctness_lines(correctness: dict[str, Any]) -> list[str]:
    return [
        f"correctness {name}: {r['delivered']}/{r['batches']} delivered, "
        f"{r['corrupted']} corrupted, {r['lost']} lost, {r['repeated']} repeated, "
        f"{r['out_of_order']} out of order ({r['held_checked']} held checked)"
        for name, r in correctness["backends"].items()
    ]


def routes_lines(routes: dict[str, Any]) -> list[str]:
    if not routes.get("results"):
        return [f"routes: skipped, {routes['skipped']}"] if routes.get("skipped") else []
    lines = []
    for route, found in routes["results"].items():
        if "skipped" in found:
            lines.append(f"route {route}: skipped, {found['skipped']}")
            continue
        check = found.get("correctness") or {}
        lines.append(
            f"route {route}: {medians_text(found) or found.get('error')} (reported "
            f"{found.get('reported')}; correctness {'OK' if check.get('ok') else 'FAILED'})"
        )
    return lines


def table(result: dict[str, Any]) -> list[str]:
    """The summary: the setup, each phase that ran, every target, every crash, the exit."""
    env = result.get("environment", {})
    lines = [
        SUMMARY_HEADER,
        f"{env.get('device_kind')} ({env.get('platform')}), jax {env.get('jax')}, "
        f"fastbridge {env.get('fastbridge')}, {env.get('cpu_count')} CPUs, "
        f"{'dry run' if result.get('dry') else 'GPU run'} in {result.get('elapsed_s', 0):.0f} s",
    ]
    sections = (
        ("h2d", h2d_lines),
        ("consumer", consumer_lines),
        ("correctness", correctness_lines),
        ("routes", routes_lines),
    )
    for key, lines_of in sections:
        if result.get(key):
            lines += lines_of(result[key])
    for t in result.get("targets", []):
        ratio = "" if t["ratio"] is None else f" {t['ratio']:.3g}"
        span = f" [{t['range'][0]:.3g}-{t['range'][1]:.3g}]" if t.get("range") else ""
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"{t['status']:<5}{t['target']} @ {t['where']}:{ratio}{span}{note}")
    for error in result.get("errors", []):
        lines.append(f"CRASH in {error['phase']}: {error['error']}")
    lines.append(f"exit status {result.get('exit_code')}")
    return lines


def write(path: str, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` whole or not at all (through a partial file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(partial, path)
