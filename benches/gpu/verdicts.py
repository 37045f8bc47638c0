"""The check's targets, evaluated as ratios within the run (round k of fastbridge over round k
of its anchor, so drift between rounds cancels), and the count of bad batches.

    >>> paired([2.0, 3.0], [1.0, 0.0])
    [2.0]
    >>> target("t", "here", ">= 1", [2.0, 0.5, 1.5], lambda r: r >= 1)["status"]
    'PASS'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from correctness import BAD
from fastbridge.bench.cells import size_label
from plan import Plan
from timing import median

LIMIT = "ring H2D >= 0.9 x pinned-copy limit"
NO_BAD_BATCHES = "zero corrupted, lost, repeated or out-of-order batches"


def paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Round k of ``a`` over round k of ``b``: drift between rounds cancels."""
    return [x / y for x, y in zip(a, b, strict=False) if y > 0]


def target(
    name: str,
    where: str,
    goal: str,
    ratios: Sequence[float],
    meets: Callable[[float], bool],
    note: str | None = None,
) -> dict[str, Any]:
    """One target's verdict: ``PASS`` or ``MISS`` by the median ratio, ``N/A`` without one."""
    if not ratios:
        return {
            "target": name,
            "where": where,
            "goal": goal,
            "status": "N/A",
            "ratio": None,
            "note": note or "not measured",
        }
    ratio = median(ratios)
    return {
        "target": name,
        "where": where,
        "goal": goal,
        "ratio": ratio,
        "range": [min(ratios), max(ratios)],
        "status": "PASS" if meets(ratio) else "MISS",
        "note": note,
    }


def h2d_targets(plan: Plan, h2d: dict[str, Any]) -> list[dict[str, Any]]:
    """At each judged size: the ring against the pinned-copy limit, and against the better of
    the two pageable ``device_put`` anchors."""
    found = []
    methods = h2d["methods"]
    for size in plan.judged_sizes():
        key, where = str(size), size_label(size)
        ring = methods["ring"]["gbps"][key]
        limit = h2d.get("limit", {}).get("gbps", {}).get(key, [])
        reasons = h2d.get("limit", {}).get("unavailable", {})
        reason = "; ".join(f"{k} {v}" for k, v in reasons.items()) or None
        found.append(
            target(
                LIMIT,
                where,
                ">= 0.9",
                paired(ring, limit),
                lambda r: r >= 0.9,
                None if limit else reason,
            )
        )
        anchors = ("device_put_reused", "device_put_fresh")
        best = max(anchors, key=lambda m: median(methods[m]["gbps"][key] or [0.0]))
        found.append(
            target(
                "ring H2D >= 2 x device_put of pageable memory",
                where,
                ">= 2.0",
                paired(ring, methods[best]["gbps"][key]),
                lambda r: r >= 2.0,
                f"best pageable anchor: {best}",
            )
        )
    return found


def consumer_targets(consumer: dict[str, Any]) -> list[dict[str, Any]]:
    """At each consumer size: the ring's ``next()`` against the step time, and its steps/s
    against the better of the two loops users write instead."""
    found = []
    for key, entry in consumer["sizes"].items():
        where = size_label(int(key))
        rounds = entry["methods"]
        step = entry["step_seconds"] * 1e6
        found.append(
            target(
                "ring next() <= 0.05 x step time",
                where,
                "<= 0.05",
                [r["next_us_median"] / step for r in rounds["ring"]],
                lambda r: r <= 0.05,
                f"step {step / 1e3:.2f} ms",
            )
        )
        anchors = ("flax_prefetch", "device_put_loop")
        best = max(anchors, key=lambda m: median([r["steps_per_s"] for r in rounds[m]]))
        steps = {name: [r["steps_per_s"] for r in rounds[name]] for name in ("ring", best)}
        found.append(
            target(
                "ring steps/s >= 1.0 x best anchor",
                where,
                ">= 1.0",
                paired(steps["ring"], steps[best]),
                lambda r: r >= 1.0,
                f"best anchor: {best}",
            )
        )
    return found


def evaluate(plan: Plan, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the phases that ran can judge."""
    found: list[dict[str, Any]] = []
    if result.get("h2d"):
        found += h2d_targets(plan, result["h2d"])
    if result.get("consumer"):
        found += consumer_targets(result["consumer"])
    bad = bad_batches(result)
    if bad is not None:
        found.append(
            {
                "target": NO_BAD_BATCHES,
                "where": "correctness",
                "goal": "== 0",
                "ratio": float(bad),
                "status": "PASS" if bad == 0 else "MISS",
                "note": None,
            }
        )
    return found


def bad_batches(result: dict[str, Any]) -> int | None:
    """Corrupted + lost + repeated + out-of-order batches over every correctness pass (the
    main ones and the routes'), or ``None`` when none ran."""
    passes = list((result.get("correctness") or {}).get("backends", {}).values())
    for found in (result.get("routes") or {}).get("results", {}).values():
        if "correctness" in found:
            passes.append(found["correctness"])
    if not passes:
        return None
    total = 0
    for report in passes:
        total += sum(report[k] for k in BAD)
        total += abs(report["batches"] - report["delivered"])
    return total
