"""The host-to-device phase: GB/s of every method, interleaved round-robin over several rounds.

The methods, in table order: the ring (also with more copy threads), the NumPy ring,
``jax.device_put`` of one reused pageable array and of a freshly allocated one each batch,
and the physical limit (a pinned-host copy through CuPy and/or PyTorch, see :mod:`limits`).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
from fastbridge.bench.cells import size_label
from limits import PinnedCopy, limit_method, pinned_copies
from plan import Plan
from samples import Sample, h2d_device_put, h2d_stream, host_arrays
from timing import log, median, run_rounds

H2D_METHODS = (
    "ring",
    "ring_copy8",
    "numpy",
    "device_put_reused",
    "device_put_fresh",
    "limit_cupy",
    "limit_torch",
)
"""Host-to-device methods, in table order. The limit methods need CUDA through CuPy/PyTorch."""
H2D_LABELS = {
    "ring": "ring (fastbridge)",
    "ring_copy8": "ring, 8 copy threads",
    "numpy": "numpy ring",
    "device_put_reused": "device_put, reused array",
    "device_put_fresh": "device_put, fresh array",
    "limit_cupy": "pinned copy (CuPy)",
    "limit_torch": "pinned copy (PyTorch)",
}

Methods = dict[str, Callable[[int], Sample]]
"""Each available method: one sample at a batch size."""


def h2d_methods(
    plan: Plan, device: jax.Device, limits: Sequence[PinnedCopy], copy8: int
) -> Methods:
    """Every method that can run here (the limits that work among them)."""
    arrays = {size: host_arrays(size, plan.sources) for size in plan.sizes}
    warm, batches = plan.warmup, plan.batches
    methods: Methods = {
        "ring": lambda s: h2d_stream(device, arrays[s], batches(s), warm, "ring"),
        "ring_copy8": lambda s: h2d_stream(device, arrays[s], batches(s), warm, "ring", copy8),
        "numpy": lambda s: h2d_stream(device, arrays[s], batches(s), warm, "numpy"),
        "device_put_reused": lambda s: h2d_device_put(
            device, arrays[s], batches(s), 2, fresh=False
        ),
        "device_put_fresh": lambda s: h2d_device_put(device, arrays[s], batches(s), 2, fresh=True),
    }
    for limit in limits:
        methods[f"limit_{limit.name}"] = limit_method(limit, batches)
    return methods


def empty_record(
    plan: Plan, methods: Methods, unavailable: dict[str, str], copy8: int
) -> dict[str, Any]:
    """The phase's JSON before any round: every method, with empty lists of samples."""
    return {
        "sizes": plan.sizes,
        "batches": {str(s): plan.batches(s) for s in plan.sizes},
        "copy8_threads": copy8,
        "methods": {
            name: {
                "label": H2D_LABELS[name],
                "available": name in methods,
                "reason": unavailable.get(name.removeprefix("limit_")),
                "gbps": {str(s): [] for s in plan.sizes},
                "cpu_s_per_gb": {str(s): [] for s in plan.sizes},
                "stats": {},
            }
            for name in H2D_METHODS
        },
    }


def sample_into(
    name: str,
    size: int,
    methods: Methods,
    out: dict[str, Any],
    unavailable: dict[str, str],
    result: dict[str, Any],
) -> None:
    """One sample of ``name`` at ``size``, added to its entry of ``out``. A method that fails
    stops there and the others go on; a failing limit (CuPy or PyTorch) is the tool's problem,
    so it only becomes unavailable, while any other failure is a crash of the run."""
    entry = out["methods"][name]
    if not entry["available"]:
        return
    try:
        sample = methods[name](size)
    except Exception as error:
        entry["available"] = False
        entry["reason"] = f"failed at {size_label(size)}: {error!r}"
        if name.startswith("limit_"):
            unavailable[name.removeprefix("limit_")] = entry["reason"]
        else:
            result["errors"].append(
                {"phase": f"h2d {name}", "error": repr(error), "traceback": traceback.format_exc()}
            )
        log(f"h2d {name} at {size_label(size)} failed: {error!r}")
        return
    entry["gbps"][str(size)].append(sample.gbps)
    entry["cpu_s_per_gb"][str(size)].append(sample.cpu_seconds / sample.nbytes * 1e9)
    if sample.stats is not None:
        entry["stats"][str(size)] = sample.stats


def limit_record(
    plan: Plan, out: dict[str, Any], limits: Sequence[PinnedCopy], unavailable: dict[str, str]
) -> dict[str, Any]:
    """The limit per size and round: the faster of the limits that measured that round."""
    rounds_by_size: dict[str, list[float]] = {}
    for size in plan.sizes:
        per_method = [out["methods"][f"limit_{x.name}"]["gbps"][str(size)] for x in limits]
        rounds = max((len(v) for v in per_method), default=0)
        rounds_by_size[str(size)] = [
            max(v[r] for v in per_method if len(v) > r) for r in range(rounds)
        ]
    return {
        "gbps": rounds_by_size,
        "median": {s: median(v) if v else None for s, v in rounds_by_size.items()},
        "sources": [x.name for x in limits],
        "unavailable": unavailable,
    }


def phase_h2d(
    plan: Plan, device: jax.Device, deadline: float, result: dict[str, Any], wanted: Sequence[str]
) -> dict[str, Any]:
    """Measure every method at every size, rounds until ``deadline``; fills ``result["h2d"]``."""
    limits, unavailable = pinned_copies(plan.dry, device, wanted)
    copy8 = min(8, os.cpu_count() or 1)
    methods = h2d_methods(plan, device, limits, copy8)
    out = empty_record(plan, methods, unavailable, copy8)
    result["h2d"] = out
    order = [name for name in H2D_METHODS if name in methods]

    def one_round(k: int) -> None:
        shift = k % len(order)  # rotate the order so no method always runs first
        for size in plan.sizes:
            for name in order[shift:] + order[:shift]:
                sample_into(name, size, methods, out, unavailable, result)

    out["rounds"] = run_rounds("h2d", deadline, plan.min_rounds, one_round, plan.max_rounds)
    for limit in limits:
        limit.close()
    for entry in out["methods"].values():
        entry["median"] = {s: median(v) if v else None for s, v in entry["gbps"].items()}
    out["limit"] = limit_record(plan, out, limits, unavailable)
    ring_stats = out["methods"]["ring"]["stats"]
    if ring_stats:
        out["ring_stats"] = ring_stats[max(ring_stats, key=int)]
    return out
