"""``python -m fastbridge.bench``: copy versus zero-copy, every route side by side.

Options and profiles are in ``options``; the leaves and shapes scenarios in their own modules.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from .options import FULL, QUICK, SCENARIOS, build_parser, resolve
from .progress import Progress
from .runner import Run, split

__all__ = ["FULL", "QUICK", "SCENARIOS", "Progress", "build_parser", "main", "run", "run_gpu"]

CHILD = "FASTBRIDGE_BENCH_SHARDED_CHILD"
"""Set in the subprocess that runs the sharded scenario (so it never starts another)."""

Scenario = tuple[Callable[[Run], int], Callable[[Run], None]]
"""How many runs a scenario makes (for the progress bar), and the scenario itself."""


def _check(args: argparse.Namespace) -> list[str]:
    """The scenarios wanted; exits with a message on an unknown scenario, layout or size."""
    from . import report
    from .batches import LAYOUTS

    wanted = split(args.scenarios)
    for name in wanted:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    for option in ("sizes", "throughput_sizes", "copy_sizes", "sharded_sizes", "leaves_sizes"):
        for text in split(getattr(args, option)):
            report.parse_size(text)
    layouts = split(args.layouts) + split(args.throughput_layouts) + split(args.sharded_layouts)
    for layout in layouts:
        if layout not in LAYOUTS:
            raise SystemExit(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return wanted


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every chosen scenario; returns the results dictionary (also what results.json holds)."""
    from . import report
    from . import routes as routes_mod
    from .batches import tf_module
    from .resources import peak_rss_bytes

    chosen = routes_mod.resolve(args.routes)
    skipped = [why for r in chosen if (why := routes_mod.missing(r)) is not None]
    for why in skipped:
        print(why, file=sys.stderr)
    chosen = [r for r in chosen if routes_mod.missing(r) is None]
    if not chosen:
        raise SystemExit("none of the chosen routes can run here")
    wanted = _check(args)

    import jax

    tf_module()
    meta: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": argv,
        "args": vars(args),
        "machine": report.machine_info(),
        "jax_device": str(jax.devices()[0]),
        "routes": [
            {"number": r.number, "key": r.key, "label": r.label, "kind": r.kind} for r in chosen
        ],
        "skipped_routes": skipped,
    }
    bench = Run(args, chosen, meta)
    plan = [(name, _scenarios()[name]) for name in SCENARIOS if name in wanted]
    bench.progress = Progress(sum(count(bench) for _, (count, _) in plan), not args.no_progress)
    started = time.perf_counter()
    timings: dict[str, float] = meta.setdefault("scenario_seconds", {})
    try:
        for name, (_, scenario) in plan:
            mark = time.perf_counter()
            scenario(bench)
            timings[name] = time.perf_counter() - mark
    finally:
        bench.progress.close()
    meta["seconds"] = time.perf_counter() - started
    meta["peak_rss_bytes"] = peak_rss_bytes()
    summary = report.summarize(bench.samples)
    return {
        "meta": meta,
        "samples": bench.samples,
        "summary": summary,
        "targets": report.check_targets(summary, bench.samples),
    }


def _scenarios() -> dict[str, Scenario]:
    from . import leaves, shapes

    return {
        "handoff": (_handoff_scenario_count, _handoff_scenario),
        "throughput": (_throughput_count, _throughput),
        "e2e": (lambda b: b.args.e2e_repeats * len(b.chosen), _e2e),
        "memory": (lambda b: len(b.chosen), _memory),
        "sharded": (_sharded_count, _sharded),
        "leaves": (leaves.count, leaves.run),
        "shapes": (shapes.count, shapes.run),
    }


def _sizes(text: str) -> list[int]:
    from .cells import parse_size

    return [parse_size(s) for s in split(text)]


def _rounds(
    bench: Run, scenario: str, handoffs: list[Any], case: tuple[str, int, Any, Any], **how: Any
) -> None:
    """``args.repeats`` rounds of every route on one case, interleaved: A B C ... A B C."""
    from .batches import batch_nbytes
    from .cells import size_label
    from .loop import measure

    layout, size, batch, ds = case
    args = bench.args
    for rep in range(args.repeats):
        for handoff in handoffs:
            m = measure(
                handoff,
                ds,
                batches=args.batches,
                warmup=args.warmup,
                probe_copies=True,
                stream_options=bench.stream_options,
                **how,
            )
            m["gbps"] = batch_nbytes(batch) / m["wall_s"] / 1e9
            m["rss_growth"] = m["rss_end"] - m["rss_start"]
            bench.add(scenario, handoff, layout, size, rep, **m)
            bench.progress.update(f"{scenario} {layout} {size_label(size)} {handoff.key}")


def _handoff_scenario_count(bench: Run) -> int:
    args = bench.args
    cases = len(_sizes(args.sizes)) * len(split(args.layouts))
    return cases * int(args.repeats) * len(bench.chosen)


def _handoff_scenario(bench: Run) -> None:
    import jax

    from .step import STATE, calibrate_step, time_step

    args, meta = bench.args, bench.meta
    step = calibrate_step(args.step_ms / 1e3)
    meta.update(step_seconds=step.seconds, step_iterations=step.iterations, step_state=STATE)
    bench.progress.note(
        f"handoff step: jitted CPU computation measured at {step.seconds * 1e3:.2f} ms "
        f"({step.iterations} chained {STATE}x{STATE} matmuls)"
    )
    for layout, size, batch, ds in _datasets(split(args.layouts), _sizes(args.sizes)):
        resident = jax.device_put(batch)
        meta.setdefault("step_seconds_by_case", {})[f"{layout} {size}"] = time_step(
            step.fn, resident, runs=5
        )
        case = (layout, size, batch, ds)
        _rounds(bench, "handoff", bench.chosen, case, step=step, resident=resident)
        del resident


def _throughput_count(bench: Run) -> int:
    args = bench.args
    cases = len(_sizes(args.throughput_sizes)) * len(split(args.throughput_layouts))
    return cases * int(args.repeats) * len(bench.chosen) + len(_sizes(args.copy_sizes))


def _throughput(bench: Run) -> None:
    from . import routes as routes_mod
    from .batches import batch_nbytes
    from .cells import size_label
    from .copies import copy_rates
    from .loop import measure

    args = bench.args
    layouts, sizes = split(args.throughput_layouts), _sizes(args.throughput_sizes)
    for layout, size, batch, ds in _datasets(layouts, sizes):
        nbytes = batch_nbytes(batch)
        # Fewer batches for huge ones: each run moves at most about 2 GiB.
        batches = max(3, min(args.throughput_batches, (2 << 30) // nbytes))
        for rep in range(args.repeats):
            for handoff in bench.chosen:
                m = measure(
                    handoff,
                    ds,
                    batches=batches,
                    warmup=args.warmup,
                    step=None,
                    probe_copies=True,
                    stream_options=bench.stream_options,
                )
                m["gbps"] = nbytes / m["wall_s"] / 1e9
                m["rss_growth"] = m["rss_end"] - m["rss_start"]
                bench.add("throughput", handoff, layout, size, rep, **m)
                bench.progress.update(f"throughput {layout} {size_label(size)} {handoff.key}")
    for size in _sizes(args.copy_sizes):
        copies = max(3, min(20, (1 << 30) // size))
        rates = copy_rates(size, args.threads, args.repeats, copies)
        for name, runs in rates.items():
            fake = routes_mod.Route(0, name, name, "copy", lambda ds: iter(()))
            for rep, m in enumerate(runs):
                bench.add("copy", fake, "", size, rep, threads=args.threads, **m)
        bench.progress.update(f"memcpy vs ring fill {size_label(size)}")


def _e2e(bench: Run) -> None:
    import jax

    from .batches import batch_nbytes
    from .e2e import e2e_dataset, measure_e2e, mlp_step

    args = bench.args
    train, init = mlp_step(args.e2e_hidden, args.e2e_batch)
    bench.meta.update(
        e2e_step_seconds=train.seconds, e2e=f"3072-{args.e2e_hidden}-10, batch {args.e2e_batch}"
    )
    ds = e2e_dataset(records=max(256, 8 * args.e2e_batch), batch=args.e2e_batch)
    resident = jax.device_put(next(ds.as_numpy_iterator()))
    size = batch_nbytes(resident)
    for rep in range(args.e2e_repeats):
        for handoff in bench.chosen:
            m = measure_e2e(
                handoff,
                ds,
                steps=args.e2e_steps,
                warmup=args.e2e_warmup,
                step=train,
                init=init,
                resident=resident,
            )
            bench.add("e2e", handoff, "", size, rep, **m)
            bench.progress.update(f"e2e {handoff.key}")


def _memory(bench: Run) -> None:
    from . import report
    from .batches import make_batch, repeated_dataset
    from .loop import measure

    args = bench.args
    size = report.parse_size(args.memory_size)
    ds = repeated_dataset(make_batch("f32", size))
    for handoff in bench.chosen:
        m = measure(
            handoff,
            ds,
            batches=args.memory_batches,
            warmup=args.warmup,
            step=None,
            keep_times=False,
            stream_options=bench.stream_options,
        )
        m["rss_growth"] = m["rss_end"] - m["rss_start"]
        bench.add("memory", handoff, "", size, 0, **m)
        bench.progress.update(f"memory {handoff.key}")


def _sharded_here(bench: Run) -> bool:
    import jax

    return jax.device_count() >= int(bench.args.sharded_devices)


def _sharded_count(bench: Run) -> int:
    if not _sharded_here(bench):
        return 0  # a subprocess runs it, with its own progress
    args = bench.args
    cases = len(_sizes(args.sharded_sizes)) * len(split(args.sharded_layouts))
    return cases * int(args.repeats) * sum(r.sharded for r in bench.chosen)


def _sharded(bench: Run) -> None:
    import jax

    from .step import batch_sharding, calibrate_step, sharded_step

    args, meta = bench.args, bench.meta
    handoffs = [r for r in bench.chosen if r.sharded]
    if not _sharded_here(bench):
        if os.environ.get(CHILD):
            raise SystemExit(
                f"the sharded scenario needs {args.sharded_devices} devices and JAX sees "
                f"{jax.device_count()} even with forced host devices"
            )
        bench.progress.note(
            f"sharded: running in a subprocess with {args.sharded_devices} forced CPU devices"
        )
        child = _run_sharded_child(args, [r.key for r in handoffs])
        bench.samples += [s for s in child["samples"] if s["scenario"] == "sharded"]
        meta["sharded"] = child["meta"].get("sharded", {})
        return
    sharding = batch_sharding(args.sharded_devices)
    step = sharded_step(calibrate_step(args.step_ms / 1e3))
    meta["sharded"] = {
        "devices": args.sharded_devices,
        "sharding": str(sharding),
        "step_seconds": step.seconds,
        "step_iterations": step.iterations,
    }
    bench.progress.note(
        f"sharded: {args.sharded_devices} devices, {sharding}; step measured at "
        f"{step.seconds * 1e3:.2f} ms"
    )
    layouts, sizes = split(args.sharded_layouts), _sizes(args.sharded_sizes)
    for layout, size, batch, ds in _datasets(layouts, sizes):
        resident = jax.device_put(batch, sharding)
        case = (layout, size, batch, ds)
        _rounds(bench, "sharded", handoffs, case, step=step, resident=resident, sharding=sharding)
        del resident


def _run_sharded_child(args: argparse.Namespace, handoffs: list[str]) -> dict[str, Any]:
    """The sharded scenario in a fresh interpreter: XLA reads the forced host device count
    when JAX starts, and this process's JAX has started with one device."""
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(
        [f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
        + [f"--xla_force_host_platform_device_count={args.sharded_devices}"]
    )
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", CHILD: "1"}
    with tempfile.TemporaryDirectory(prefix="fastbridge-bench-sharded-") as out:
        argv = [
            "--scenarios", "sharded", "--routes", ",".join(handoffs), "--out", out,
            "--sharded-sizes", args.sharded_sizes, "--sharded-layouts", args.sharded_layouts,
            "--sharded-devices", str(args.sharded_devices), "--repeats", str(args.repeats),
            "--batches", str(args.batches), "--warmup", str(args.warmup),
            "--step-ms", str(args.step_ms), "--prefetch", str(args.prefetch),
            "--threads", str(args.threads), "--no-plots",
        ]  # fmt: skip
        if args.no_progress:
            argv.append("--no-progress")
        # The child's tables go to its stdout, dropped: the parent prints them with the rest.
        done = subprocess.run(
            [sys.executable, "-m", "fastbridge.bench", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"the sharded scenario's subprocess failed (exit {done.returncode})")
        with open(os.path.join(out, "results.json")) as f:
            result: dict[str, Any] = json.load(f)
    return result


def _datasets(layouts: list[str], sizes: list[int]) -> Iterator[tuple[Any, ...]]:
    from .batches import make_batch, repeated_dataset

    # One (layout, size) at a time, so at most one size's datasets and slots are alive.
    for size in sizes:
        for layout in layouts:
            gc.collect()  # the previous size's datasets and slots, before allocating the next
            batch = make_batch(layout, size)
            yield layout, size, batch, repeated_dataset(batch)


def run_gpu(args: argparse.Namespace, argv: list[str]) -> int:
    """Accelerator mode; exits 0 with a clear message when JAX sees no GPU."""
    from . import report
    from .accelerator import gpu_devices, host_to_device

    devices = gpu_devices()
    if not devices:
        import jax

        print(
            f"--device gpu: JAX sees no GPU on this machine (devices: "
            f"{', '.join(str(d) for d in jax.devices())}); nothing to measure, exiting."
        )
        return 0
    sizes = [report.parse_size(s) for s in split(args.throughput_sizes)]
    results: dict[str, Any] = {"device": str(devices[0]), "sizes": {}}
    print(f"host-to-device GB/s on {devices[0]}, median of {args.repeats}")
    for size in sizes:
        rates = host_to_device(devices[0], size, batches=max(3, args.batches), repeats=args.repeats)
        results["sizes"][str(size)] = rates
        for name, values in rates.items():
            values = sorted(values)
            print(
                f"  {report.size_label(size):>8}  {name:<24} {values[len(values) // 2]:7.2f} "
                f"[{values[0]:.2f}-{values[-1]:.2f}]"
            )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump({"argv": argv, "machine": report.machine_info(), "results": results}, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fastbridge.bench``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = resolve(build_parser().parse_args(argv))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device == "gpu":
        return run_gpu(args, argv)

    from . import headline, report

    result = run(args, argv)
    os.makedirs(args.out, exist_ok=True)
    plots: list[str] = []
    if not args.no_plots:
        from . import plots as plots_mod

        try:
            plots = plots_mod.draw(result, args.out)
        except plots_mod.PlotsUnavailable as error:
            print(error, file=sys.stderr)
    result["plots"] = plots
    # The headline first; the full target list and every route's tables below it.
    print()
    print(headline.text(result["targets"]))
    print()
    print(report.render_targets_text(result["targets"]))
    for table in report.tables(result["summary"]):
        print()
        print(report.render_text(table))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(report.markdown(result))
    print(
        f"\nheadline (top of this output and of summary.md): {headline.sentence(result['targets'])}"
        f"\nwrote {args.out}/results.json, {args.out}/summary.md"
        + (f" and {len(plots)} plots" if plots else "")
        + f" in {result['meta']['seconds']:.0f} s"
    )
    return 0
