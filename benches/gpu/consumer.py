"""The consumer phase: the time a training loop spends inside ``next()``, and its steps/s, with
the bench's jitted step of a few milliseconds, for the ring and the loops users write instead:
flax's ``prefetch_to_device`` (a deque of 2 ``device_put`` batches) and a plain ``device_put``
loop (both the bench's own routes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jax
from fastbridge import stream
from fastbridge.bench.routes import BY_KEY
from fastbridge.bench.scenarios import STATE, Step, calibrate_step, initial_state, time_step
from plan import PREFETCH, Plan
from samples import Array, cycle, host_arrays, stats_dict
from timing import log, median, quantile, run_rounds

CONSUMER_METHODS = ("ring", "flax_prefetch", "device_put_loop")
MEASURES = ("next_us_median", "next_us_p90", "steps_per_s")
"""What one run of a method records, and the phase's medians over rounds."""


class HostBatches:
    """Host batches as the bench's routes read a ``tf.data`` source (``as_numpy_iterator``)."""

    def __init__(self, batches: Iterator[Array]) -> None:
        self.batches = batches

    def as_numpy_iterator(self) -> Iterator[Array]:
        return self.batches


def consume(iterator: Iterator[Any], step: Step, steps: int, warmup: int) -> dict[str, Any]:
    """Run the step on ``warmup`` then ``steps`` batches, waiting for each step; time each
    ``next()`` and the whole loop."""
    state = initial_state()
    for _ in range(warmup):
        state = step(state, next(iterator))
        state.block_until_ready()
    waits = []
    started = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(iterator)
        waits.append(time.perf_counter() - before)
        state = step(state, batch)
        state.block_until_ready()
        del batch
    wall = time.perf_counter() - started
    for _ in iterator:
        pass
    return {"next_s": waits, "steps_per_s": steps / wall}


def run_method(
    name: str, source: Iterator[Array], device: jax.Device, step: Step, plan: Plan
) -> dict[str, Any]:
    """One run of method ``name`` over ``source`` (JAX's default device is ``device``)."""
    steps, warm = plan.consumer_steps, plan.warmup
    if name == "ring":
        with stream(source, backend="ring", device=device, prefetch=PREFETCH) as batches:
            found = consume(iter(batches), step, steps, warm)
            found["stats"] = stats_dict(batches.stats)
        return found
    # flax_prefetch, or the plain loop: iterate host batches (as_numpy_iterator() without
    # TensorFlow) and device_put each on the consumer's thread.
    route = BY_KEY["flax_prefetch" if name == "flax_prefetch" else "device_put"]
    return consume(route.open(HostBatches(source)), step, steps, warm)


def summary(found: dict[str, Any]) -> dict[str, Any]:
    """What the JSON keeps of one run: ``next()`` in µs (median, p90), steps/s and stats."""
    waits = found["next_s"]
    return {
        "next_us_median": median(waits) * 1e6,
        "next_us_p90": quantile(waits, 0.9) * 1e6,
        "steps_per_s": found["steps_per_s"],
        **({"stats": found["stats"]} if "stats" in found else {}),
    }


def phase_consumer(
    plan: Plan, device: jax.Device, deadline: float, result: dict[str, Any]
) -> dict[str, Any]:
    """Every method at every consumer size, rounds until ``deadline``; fills
    ``result["consumer"]``."""
    out: dict[str, Any] = {"sizes": {}, "steps": plan.consumer_steps}
    result["consumer"] = out
    arrays = {size: host_arrays(size, plan.sources) for size in plan.consumer_sizes}
    with jax.default_device(device):  # the step's state and the routes' device_put
        step = calibrate_step(plan.step_seconds)
        out["step_seconds"] = step.seconds
        out["step_dim"] = STATE
        out["calibration"] = [
            {"dim": STATE, "iterations": step.iterations, "seconds": step.seconds}
        ]
        log(f"consumer: step {step.seconds * 1e3:.2f} ms, {step.iterations} x {STATE}x{STATE}")
        for size in plan.consumer_sizes:
            x = jax.device_put(arrays[size][0], device)
            out["sizes"][str(size)] = {
                "step_seconds": time_step(step.fn, x, 7),
                "methods": {name: [] for name in CONSUMER_METHODS},
            }
            del x

        def one_round(k: int) -> None:
            shift = k % len(CONSUMER_METHODS)
            for size in plan.consumer_sizes:
                for name in CONSUMER_METHODS[shift:] + CONSUMER_METHODS[:shift]:
                    source = cycle(arrays[size], plan.warmup + plan.consumer_steps)
                    found = run_method(name, source, device, step, plan)
                    out["sizes"][str(size)]["methods"][name].append(summary(found))

        out["rounds"] = run_rounds(
            "consumer", deadline, plan.min_rounds, one_round, plan.max_rounds
        )
    for entry in out["sizes"].values():
        entry["median"] = {
            name: {key: median([r[key] for r in rounds]) for key in MEASURES}
            for name, rounds in entry["methods"].items()
        }
    return out
