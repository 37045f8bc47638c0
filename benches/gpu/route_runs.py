"""The routes phase: the ring under each transfer route fastbridge can be forced to take
(``FASTBRIDGE_TRANSFER``), each in a subprocess of its own (``check.py --route-worker``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

import jax
from correctness import DONATION_WARNING, correctness_pass
from fastbridge.bench.cells import parse_size
from fastbridge.bench.runner import split
from machine import ROUTE_ENV, ROUTES, available_routes, pick_device
from plan import Plan
from samples import h2d_stream, host_arrays
from summary import medians_text
from timing import Clock, log, median

CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check.py")


def route_worker(args: argparse.Namespace) -> int:
    """Inside the subprocess: the ring's GB/s and a short correctness pass under the route
    ``FASTBRIDGE_TRANSFER`` forces, written to ``args.out``."""
    clock = Clock(args.budget_seconds)
    plan = Plan.make(args.dry)
    device = pick_device(args.dry)
    out: dict[str, Any] = {"requested": os.environ.get(ROUTE_ENV), "gbps": {}}
    sizes = [parse_size(s) for s in split(args.sizes)] if args.sizes else plan.judged_sizes()
    try:
        arrays = {size: host_arrays(size, plan.sources) for size in sizes}
        deadline = clock.deadline(0.6)
        rounds = 0
        while rounds < plan.min_rounds or (rounds < 5 and time.monotonic() < deadline):
            for size in sizes:
                sample = h2d_stream(device, arrays[size], plan.batches(size), plan.warmup, "ring")
                out["gbps"].setdefault(str(size), []).append(sample.gbps)
                out["stats"] = sample.stats
            rounds += 1
        out["median"] = {s: median(v) for s, v in out["gbps"].items()}
        out["reported"] = (out.get("stats") or {}).get("transfer_route")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=DONATION_WARNING)
            out["correctness"] = correctness_pass(
                device, "ring", plan.route_correctness_batches, plan.correctness_rows, 99
            )
    except Exception as error:
        out["error"] = f"{error!r}"
        out["traceback"] = traceback.format_exc()[-3000:]
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def run_route(route: str, plan: Plan, timeout: float) -> dict[str, Any]:
    """``check.py --route-worker route`` in a subprocess, with ``FASTBRIDGE_TRANSFER=route``,
    at the smallest and largest sizes the targets judge; what it wrote, its exit status
    (``rc``, ``None`` when it timed out) and, when it failed, its stderr's tail."""
    env = dict(os.environ, **{ROUTE_ENV: route})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "route.json")
        command = [sys.executable, CHECK, "--route-worker", route]
        command += ["--out", path, "--budget-seconds", f"{timeout * 0.8:.0f}"]
        judged = plan.judged_sizes()
        command += ["--sizes", ",".join(str(s) for s in sorted({judged[0], judged[-1]}))]
        command += ["--dry"] if plan.dry else []
        started = time.monotonic()
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            found: dict[str, Any] = {"rc": done.returncode}
            if os.path.exists(path):
                with open(path) as f:
                    found.update(json.load(f))
            if done.returncode != 0 or "error" in found:
                found["stderr_tail"] = done.stderr[-2000:]
        except subprocess.TimeoutExpired as error:
            stderr = error.stderr or b""
            tail = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            found = {"rc": None, "error": f"timed out after {timeout:.0f} s"}
            found["stderr_tail"] = tail[-2000:]
        found["seconds"] = time.monotonic() - started
    return found


def routes_to_run(
    plan: Plan, device: jax.Device, requested: str, result: dict[str, Any], out: dict[str, Any]
) -> list[str]:
    """The routes to measure, given ``--routes``; the reason for skipping any (or all of them,
    in ``out["skipped"]``) goes into ``out``."""
    supported, how = available_routes(device)
    out["supported"], out["supported_by"] = supported, how
    ring_stats = (result.get("h2d") or {}).get("ring_stats") or {}
    if requested == "none" or (requested == "auto" and plan.dry):
        out["skipped"] = "not requested (--routes none, or auto in a dry run)"
        return []
    if requested == "auto" and ring_stats and ring_stats.get("transfer_route") is None:
        out["skipped"] = (
            "this fastbridge reports no stats.transfer_route, so FASTBRIDGE_TRANSFER is not "
            "supported; pass --routes all to run the subprocesses anyway"
        )
        return []
    every = requested in ("auto", "all")
    todo = []
    for route in ROUTES if every else tuple(split(requested)):
        if every and route not in supported:
            out["results"][route] = {"skipped": f"not offered here ({how})"}
        else:
            todo.append(route)
    return todo


def phase_routes(
    plan: Plan,
    device: jax.Device,
    clock: Clock,
    args: argparse.Namespace,
    result: dict[str, Any],
) -> dict[str, Any]:
    """Each route ``--routes`` asks for, in turn, in the time left; fills ``result["routes"]``.
    A route offered (or asked for) that fails is a crash of the run, not a missing feature."""
    out: dict[str, Any] = {"requested": args.routes, "results": {}}
    result["routes"] = out
    todo = routes_to_run(plan, device, args.routes, result, out)
    cap, least = (30.0, 8.0) if plan.dry else (75.0, 25.0)
    for number, route in enumerate(todo):
        left = clock.left() - 5.0
        if left < least:
            out["results"][route] = {"skipped": f"out of time ({left:.0f} s left)"}
            continue
        found = run_route(route, plan, min(cap, max(least, left / (len(todo) - number))))
        out["results"][route] = found
        if found["rc"] not in (0, None) or ("error" in found and found["rc"] is not None):
            result["errors"].append(
                {"phase": f"route {route}", "error": found.get("error", f"rc {found['rc']}")}
            )
        log(
            f"route {route}: {medians_text(found) or found.get('error', 'no result')} "
            f"(reported route: {found.get('reported')})"
        )
    return out
