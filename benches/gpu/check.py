"""The GPU device check: fastbridge's host-to-device path against the machine's own limit.

One run measures, interleaved (round-robin over the methods, several rounds, medians):

* host-to-device GB/s of the ring (``stream(backend="ring")``, also with more copy threads),
  the NumPy ring, ``jax.device_put`` of one reused pageable array and of a freshly allocated
  one each batch, and the physical limit: a pinned-host to device copy through CuPy and/or
  PyTorch (the faster is the limit);
* the consumer's time inside ``next()`` and steps/s with a jitted GPU step of a few
  milliseconds, for the ring, a flax-style ``prefetch_to_device`` (a deque of 2
  ``device_put`` batches) and the plain ``device_put`` loop;
* a correctness pass: batches of several dtypes through the ring and the NumPy ring, held at
  random, dropped, some donated to a jitted step, every batch checksummed on the device and
  every held batch compared bit for bit with its source once the stream has ended;
* optionally (``--routes``) the ring under each transfer route fastbridge can be forced to
  take (``FASTBRIDGE_TRANSFER``), each in its own subprocess.

It evaluates the targets as ratios within the run, writes everything to JSON and prints a
short table last. ``--dry`` runs the same code on CPU with tiny sizes (the pinned-copy limit
is then "unavailable"). Exit status: 0, or 1 when a batch was corrupted, lost, repeated or
out of order, or 2 when a phase crashed or no GPU was found.

This file runs the phases; each lives in a module beside it (``h2d``, ``limits``,
``consumer``, ``correctness``, ``route_runs``), with the run's ``plan``, ``timing``,
``samples``, ``machine`` facts, ``verdicts`` and ``summary``. They import only the parts of
``fastbridge.bench`` that do not import TensorFlow: the GPU machine has none.

    python benches/gpu/check.py --out gpu-check.json          # on the GPU machine
    python benches/gpu/check.py --dry --budget-seconds 40     # anywhere, on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
from consumer import phase_consumer
from correctness import phase_correctness
from fastbridge.bench.cells import parse_size
from fastbridge.bench.runner import split
from h2d import phase_h2d
from machine import ROUTES, environment, pick_device
from plan import Plan
from route_runs import phase_routes, route_worker
from summary import table, write
from timing import Clock, log
from verdicts import bad_batches, evaluate

PHASES = ("h2d", "consumer", "correctness", "routes")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="fastbridge's GPU device check (see the module docstring)"
    )
    parser.add_argument("--dry", action="store_true", help="run on CPU with tiny sizes")
    parser.add_argument("--out", default="gpu-check.json", help="JSON results file")
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=300.0,
        help="time for the whole run; rounds are cut to fit (default 300)",
    )
    parser.add_argument(
        "--routes",
        default="auto",
        help="transfer routes to measure in subprocesses (FASTBRIDGE_TRANSFER): auto (every "
        "route the running JAX offers, on the GPU run only), all, none, or a list such as "
        "dma_map,device_put",
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"phases to run (default {','.join(PHASES)})"
    )
    parser.add_argument(
        "--limits",
        default="cupy,torch",
        help="libraries that measure the pinned-copy limit: cupy, torch, both (default) or none",
    )
    parser.add_argument("--sizes", help="host-to-device sizes, e.g. 1M,16M (default by mode)")
    parser.add_argument("--consumer-sizes", help="batch sizes of the consumer phase")
    # Tests only: corrupt one held batch of the ring's pass, in its host source before it is
    # read ("source"), or in the held batch's own memory after delivery, as a slot reused too
    # early would ("late", CPU only: on CPU the batch aliases its ring slot).
    parser.add_argument("--plant-corruption", choices=("source", "late"), help=argparse.SUPPRESS)
    parser.add_argument("--route-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = split(args.phases)
    if unknown := [p for p in phases if p not in PHASES]:
        parser.error(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    if args.routes not in ("auto", "all", "none"):
        if unknown := [r for r in split(args.routes) if r not in ROUTES]:
            parser.error(f"unknown route(s) {unknown}; choose from {', '.join(ROUTES)}")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    """The mode's plan, with the sizes the command line asks for."""
    plan = Plan.make(args.dry)
    if args.sizes:
        plan.sizes = [parse_size(s) for s in split(args.sizes)]
    if args.consumer_sizes:
        plan.consumer_sizes = [parse_size(s) for s in split(args.consumer_sizes)]
    return plan


def finish(args: argparse.Namespace, clock: Clock, result: dict[str, Any]) -> int:
    """Write the JSON and print the table (last), and return the exit status."""
    result["elapsed_s"] = clock.elapsed()
    write(args.out, result)
    faulthandler.cancel_dump_traceback_later()
    log(f"wrote {args.out}")
    print("\n".join(table(result)), flush=True)
    return int(result["exit_code"])


class Phases:
    """The phases of one run, each guarded: a crash is recorded and the next phase runs, and
    the JSON is rewritten after each, so a later crash or kill keeps what it measured."""

    def __init__(
        self, args: argparse.Namespace, plan: Plan, clock: Clock, result: dict[str, Any]
    ) -> None:
        self.args, self.plan, self.clock, self.result = args, plan, clock, result
        self.names = split(args.phases)
        # Correctness has a fixed size; the measuring phases share what is left, the routes
        # last.
        self.reserve = 0.0 if "correctness" not in self.names else (8.0 if plan.dry else 40.0)
        timed = [p for p in ("h2d", "consumer") if p in self.names]
        self.share = {"h2d": 0.6 if len(timed) == 2 else 0.9, "consumer": 0.9}
        routes = args.routes
        if "routes" in self.names and (routes != "auto" or not plan.dry) and routes != "none":
            self.share = {"h2d": 0.35 if len(timed) == 2 else 0.55, "consumer": 0.4}

    def deadline(self, name: str) -> float:
        left = max(0.0, self.clock.left() - self.reserve)
        return time.monotonic() + left * self.share[name]

    def guarded(self, name: str, work: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            work()
        except Exception as error:
            self.result["errors"].append(
                {"phase": name, "error": repr(error), "traceback": traceback.format_exc()}
            )
            log(f"{name} CRASHED: {error!r}")
            traceback.print_exc()
        self.result.setdefault("phase_seconds", {})[name] = time.monotonic() - started
        self.result["elapsed_s"] = self.clock.elapsed()
        write(self.args.out, self.result)

    def run(self, device: jax.Device) -> None:
        """Every phase asked for, in :data:`PHASES` order."""
        args, plan, result = self.args, self.plan, self.result
        work: dict[str, Callable[[], object]] = {
            "h2d": lambda: phase_h2d(
                plan, device, self.deadline("h2d"), result, split(args.limits)
            ),
            "consumer": lambda: phase_consumer(plan, device, self.deadline("consumer"), result),
            "correctness": lambda: phase_correctness(plan, device, result, args.plant_corruption),
            "routes": lambda: phase_routes(plan, device, self.clock, args, result),
        }
        for name in PHASES:
            if name in self.names:
                self.guarded(name, work[name])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.route_worker:
        return route_worker(args)
    clock = Clock(args.budget_seconds)
    faulthandler.enable()
    # A hang prints every thread's stack well before run.sh's hard timeout.
    faulthandler.dump_traceback_later(args.budget_seconds + 15, exit=False)
    plan = make_plan(args)
    result: dict[str, Any] = {
        "schema": 1,
        "dry": plan.dry,
        "argv": sys.argv[1:] if argv is None else argv,
        "budget_s": args.budget_seconds,
        "plan": dataclasses.asdict(plan),
        "errors": [],
    }
    try:
        device = pick_device(plan.dry)
    except SystemExit as error:
        result["environment"] = environment(None)
        result["errors"].append({"phase": "setup", "error": str(error)})
        result["exit_code"] = 2
        return finish(args, clock, result)
    result["environment"] = environment(device)
    log(
        f"{device.device_kind} ({device.platform}); jax {jax.__version__}; budget "
        f"{args.budget_seconds:.0f} s; phases {','.join(split(args.phases))}"
    )
    Phases(args, plan, clock, result).run(device)
    result["targets"] = evaluate(plan, result)
    bad = bad_batches(result)
    result["exit_code"] = 1 if bad else 2 if result["errors"] else 0
    return finish(args, clock, result)


if __name__ == "__main__":
    sys.exit(main())
