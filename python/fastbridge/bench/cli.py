"""``python -m fastbridge.bench``: copy versus zero-copy, every route side by side."""

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
from collections.abc import Iterator
from typing import Any

QUICK = {
    "sizes": "64K,1M,16M,64M",
    "layouts": "f32,dict",
    "repeats": 3,
    "batches": 6,
    "warmup": 2,
    "throughput_sizes": "1M,64M",
    "throughput_layouts": "f32",
    "throughput_batches": 6,
    "copy_sizes": "64M",
    "e2e_steps": 15,
    "e2e_warmup": 3,
    "e2e_repeats": 2,
    "e2e_batch": 128,
    "memory_batches": 300,
    "sharded_sizes": "1M,16M",
    "sharded_layouts": "f32",
}
FULL = {
    "sizes": "64K,1M,16M,64M",
    "layouts": "f32,dict",
    "repeats": 5,
    "batches": 30,
    "warmup": 3,
    "throughput_sizes": "64K,1M,16M,64M,256M",
    "throughput_layouts": "f32,dict",
    "throughput_batches": 40,
    "copy_sizes": "16M,64M,256M",
    "e2e_steps": 200,
    "e2e_warmup": 20,
    "e2e_repeats": 5,
    "e2e_batch": 256,
    "memory_batches": 10_000,
    "sharded_sizes": "64K,1M,16M,64M",
    "sharded_layouts": "f32,dict",
}
SCENARIOS = ("handoff", "throughput", "e2e", "memory", "sharded")
CHILD = "FASTBRIDGE_BENCH_SHARDED_CHILD"
"""Set in the subprocess that runs the sharded scenario (so it never starts another)."""


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where it is one: options left unset take their value from the
    profile (``[quick ..., full ...]`` in their help), which "(default: None)" would hide."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class _DeprecatedAlias(argparse.Action):
    """An option's old name: stores into the new one's ``dest`` and says so on stderr."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{option_string} is deprecated, use --{self.dest.replace('_', '-')}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastbridge.bench",
        description=(
            "Measure every way of handing tf.data batches to JAX side by side, on a built-in "
            "synthetic dataset (no downloads). Routes: 1 tutorial copy (jnp.array per leaf), "
            "2 as_numpy_iterator + device_put, 3 EagerTensor -> jax.dlpack by hand, "
            "4 flax-style deque of device_put, 5 fastbridge ring, 6 numpy, 7 direct, 8 auto, "
            "9 the floor (iterate as_numpy_iterator only), and the peers: 10 Grain's "
            "experimental.device_put pipeline, 11 Keras's model.fit input path on JAX, "
            "12 big_vision's memoryview + per-device shards, 13 "
            "jax.make_array_from_process_local_data (Grain and Keras are skipped with a note "
            "when not installed). Routes run interleaved "
            "(A B C ... A B C ...) and repeated; tables show medians with [min-max]. Writes "
            "results.json (every raw sample), summary.md (paste into benches/RESULTS.md) and "
            "PNG plots into --out. See benches/README.md."
        ),
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, few repeats: under two minutes on 2 cores. Options given "
        "explicitly still override it",
    )
    p.add_argument(
        "--out",
        default="bench-results",
        help="directory for results.json, summary.md and the plots",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu: the scenarios below. gpu: host-to-device GB/s from pinned ring "
        "slots vs pageable NumPy vs device_put of a fresh array; says so and "
        "exits 0 when JAX sees no GPU",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated subset of: handoff (one cached batch repeated, a "
        "jitted CPU step after each), throughput (no step, plus memcpy and ring "
        "slot fill at the same thread count), e2e (a real tf.data pipeline "
        "feeding a jitted MLP train step), memory (RSS and page faults), sharded (the "
        "handoff with batches split over --sharded-devices CPU devices by "
        "NamedSharding(Mesh(devices, ('batch',)), P('batch')), in a subprocess that forces "
        "that many host devices; only routes that take a sharding)",
    )
    p.add_argument(
        "--routes",
        default="all",
        help="comma-separated route numbers or names (tutorial, device_put, dlpack, "
        "flax_prefetch, ring, numpy, direct, auto, floor, grain, keras, big_vision, "
        "process_local), or 'all'",
    )
    # The option's earlier name, kept so that existing commands still run; not in --help.
    p.add_argument("--paths", dest="routes", action=_DeprecatedAlias, help=argparse.SUPPRESS)
    p.add_argument(
        "--sizes",
        default=None,
        help="handoff batch sizes, e.g. 64K,1M,16M,64M [quick/full: 64K,1M,16M,64M]",
    )
    p.add_argument(
        "--layouts",
        default=None,
        help="handoff layouts: f32 (one float32 leaf) and/or dict (6 leaves: uint8 "
        "image, float32 features, float64, int64, bool mask, float16)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds over all routes [quick 3, full 5]",
    )
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help="measured batches per route per round in handoff [quick 6, full 30]",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="batches per run before measuring (at least 2) [quick 2, full 3]",
    )
    p.add_argument(
        "--step-ms",
        type=float,
        default=5.0,
        help="target duration of the handoff's jitted CPU step (the targets assume 4 to "
        "10 ms); the measured duration is printed and recorded",
    )
    p.add_argument(
        "--throughput-sizes",
        default=None,
        help="throughput batch sizes [quick 1M,64M; full 64K,1M,16M,64M,256M]",
    )
    p.add_argument("--throughput-layouts", default=None, help="throughput layouts [quick f32]")
    p.add_argument(
        "--throughput-batches",
        type=int,
        default=None,
        help="most batches per throughput run (fewer for huge batches)",
    )
    p.add_argument(
        "--copy-sizes",
        default=None,
        help="sizes for memcpy vs ring slot fill [quick 64M; full 16M,64M,256M]",
    )
    p.add_argument(
        "--e2e-steps", type=int, default=None, help="train steps per e2e run [quick 15, full 200]"
    )
    p.add_argument(
        "--e2e-warmup",
        type=int,
        default=None,
        help="steps per e2e run before measuring, while tf.data's autotuner settles and the "
        "shuffle buffer fills [quick 3, full 20]",
    )
    p.add_argument(
        "--e2e-repeats", type=int, default=None, help="interleaved e2e rounds [quick 2, full 5]"
    )
    p.add_argument(
        "--e2e-batch", type=int, default=None, help="examples per e2e batch (32x32x3) [quick 128]"
    )
    p.add_argument("--e2e-hidden", type=int, default=256, help="hidden units of the e2e MLP")
    p.add_argument("--memory-size", default="1M", help="batch size of the memory scenario")
    p.add_argument(
        "--memory-batches",
        type=int,
        default=None,
        help="batches per route in the memory scenario [quick 300, full 10000]",
    )
    p.add_argument(
        "--sharded-sizes",
        default=None,
        help="sharded batch sizes [quick 1M,16M; full 64K,1M,16M,64M]",
    )
    p.add_argument(
        "--sharded-layouts", default=None, help="sharded layouts [quick f32; full f32,dict]"
    )
    p.add_argument(
        "--sharded-devices",
        type=int,
        default=8,
        help="devices the sharded scenario splits each batch over (forced CPU devices)",
    )
    p.add_argument("--prefetch", type=int, default=4, help="prefetch of the fastbridge routes")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="copy threads for the ring and for the memcpy baseline [min(2, cores)]",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    profile = QUICK if args.quick else FULL
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.warmup < 2:
        raise SystemExit("--warmup must be at least 2 (two live batches tell copies apart)")
    if args.e2e_warmup < 0:
        raise SystemExit("--e2e-warmup must be at least 0")
    for name in (
        "repeats",
        "batches",
        "throughput_batches",
        "e2e_steps",
        "e2e_repeats",
        "memory_batches",
        "prefetch",
        "sharded_devices",
    ):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is None:
        args.threads = min(2, os.cpu_count() or 1)
    return args


class Progress:
    """tqdm when installed and wanted, else one plain line now and then."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar: Any = None
        self.last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(what, refresh=False)
            self.bar.update()
        elif self.enabled and (time.monotonic() - self.last > 5 or self.done == self.total):
            self.last = time.monotonic()
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A status line above the bar (printing it directly would land inside the bar)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _sample(
    scenario: str, route: Any, layout: str, size: int, rep: int, **m: Any
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "route": route.key,
        "route_number": route.number,
        "label": route.label,
        "layout": layout,
        "size_bytes": size,
        "rep": rep,
        **m,
    }


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Every chosen scenario; returns the results dictionary (also what results.json holds)."""
    from . import report
    from . import routes as routes_mod
    from . import scenarios as sc

    chosen = routes_mod.resolve(args.routes)
    skipped = [why for r in chosen if (why := routes_mod.missing(r)) is not None]
    for why in skipped:
        print(why, file=sys.stderr)
    chosen = [r for r in chosen if routes_mod.missing(r) is None]
    if not chosen:
        raise SystemExit("none of the chosen routes can run here")
    wanted = _split(args.scenarios)
    for name in wanted:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    sizes = [report.parse_size(s) for s in _split(args.sizes)]
    layouts = _split(args.layouts)
    t_sizes = [report.parse_size(s) for s in _split(args.throughput_sizes)]
    t_layouts = _split(args.throughput_layouts)
    copy_sizes = [report.parse_size(s) for s in _split(args.copy_sizes)]
    s_sizes = [report.parse_size(s) for s in _split(args.sharded_sizes)]
    s_layouts = _split(args.sharded_layouts)
    for layout in {*layouts, *t_layouts, *s_layouts}:
        if layout not in sc.LAYOUTS:
            raise SystemExit(f"unknown layout {layout!r}; choose from {', '.join(sc.LAYOUTS)}")
    stream_options = {"prefetch": args.prefetch, "copy_threads": args.threads}

    import jax

    sc.tf_module()
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
    samples: list[dict[str, Any]] = []

    total = 0
    if "handoff" in wanted:
        total += len(sizes) * len(layouts) * args.repeats * len(chosen)
    if "throughput" in wanted:
        total += len(t_sizes) * len(t_layouts) * args.repeats * len(chosen)
        total += len(copy_sizes)
    if "e2e" in wanted:
        total += args.e2e_repeats * len(chosen)
    if "memory" in wanted:
        total += len(chosen)
    sharded_routes = [r for r in chosen if r.sharded]
    sharded_here = "sharded" in wanted and jax.device_count() >= args.sharded_devices
    if sharded_here:
        total += len(s_sizes) * len(s_layouts) * args.repeats * len(sharded_routes)
    progress = Progress(total, not args.no_progress)

    def rounds(
        scenario: str,
        routes: list[Any],
        layout: str,
        size: int,
        batch: Any,
        ds: Any,
        step: Any,
        resident: Any,
        sharding: Any,
    ) -> None:
        """``args.repeats`` rounds of every route on one case, interleaved: A B C ... A B C."""
        for rep in range(args.repeats):
            for route in routes:
                m = sc.measure(
                    route,
                    ds,
                    batches=args.batches,
                    warmup=args.warmup,
                    step=step,
                    resident=resident,
                    probe_copies=True,
                    stream_options=stream_options,
                    sharding=sharding,
                )
                m["gbps"] = sc.batch_nbytes(batch) / m["wall_s"] / 1e9
                m["rss_growth"] = m["rss_end"] - m["rss_start"]
                samples.append(_sample(scenario, route, layout, size, rep, **m))
                progress.update(f"{scenario} {layout} {report.size_label(size)} {route.key}")

    started = mark = time.perf_counter()
    timings: dict[str, float] = meta.setdefault("scenario_seconds", {})
    try:
        if "handoff" in wanted:
            step = sc.calibrate_step(args.step_ms / 1e3)
            meta.update(
                step_seconds=step.seconds, step_iterations=step.iterations, step_state=sc.STATE
            )
            progress.note(
                f"handoff step: jitted CPU computation measured at {step.seconds * 1e3:.2f} ms "
                f"({step.iterations} chained {sc.STATE}x{sc.STATE} matmuls)"
            )
            for layout, size, batch, ds in _datasets(sc, layouts, sizes):
                resident = jax.device_put(batch)
                meta.setdefault("step_seconds_by_case", {})[f"{layout} {size}"] = sc.time_step(
                    step.fn, resident, runs=5
                )
                rounds("handoff", chosen, layout, size, batch, ds, step, resident, None)
                del resident
        timings["handoff"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if "throughput" in wanted:
            for layout, size, batch, ds in _datasets(sc, t_layouts, t_sizes):
                nbytes = sc.batch_nbytes(batch)
                # Fewer batches for huge ones: each run moves at most about 2 GiB.
                batches = max(3, min(args.throughput_batches, (2 << 30) // nbytes))
                for rep in range(args.repeats):
                    for route in chosen:
                        m = sc.measure(
                            route,
                            ds,
                            batches=batches,
                            warmup=args.warmup,
                            step=None,
                            probe_copies=True,
                            stream_options=stream_options,
                        )
                        m["gbps"] = nbytes / m["wall_s"] / 1e9
                        m["rss_growth"] = m["rss_end"] - m["rss_start"]
                        samples.append(_sample("throughput", route, layout, size, rep, **m))
                        progress.update(
                            f"throughput {layout} {report.size_label(size)} {route.key}"
                        )
            for size in copy_sizes:
                copies = max(3, min(20, (1 << 30) // size))
                rates = sc.copy_rates(size, args.threads, args.repeats, copies)
                for name, runs in rates.items():
                    fake = routes_mod.Route(0, name, name, "copy", lambda ds: iter(()))
                    for rep, m in enumerate(runs):
                        samples.append(
                            _sample("copy", fake, "", size, rep, threads=args.threads, **m)
                        )
                progress.update(f"memcpy vs ring fill {report.size_label(size)}")
        timings["throughput"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if "e2e" in wanted:
            train, init = sc.mlp_step(args.e2e_hidden, args.e2e_batch)
            meta.update(
                e2e_step_seconds=train.seconds,
                e2e=f"3072-{args.e2e_hidden}-10, batch {args.e2e_batch}",
            )
            ds = sc.e2e_dataset(records=max(256, 8 * args.e2e_batch), batch=args.e2e_batch)
            resident = jax.device_put(next(ds.as_numpy_iterator()))
            size = sc.batch_nbytes(resident)
            for rep in range(args.e2e_repeats):
                for route in chosen:
                    m = sc.measure_e2e(
                        route,
                        ds,
                        steps=args.e2e_steps,
                        warmup=args.e2e_warmup,
                        step=train,
                        init=init,
                        resident=resident,
                    )
                    samples.append(_sample("e2e", route, "", size, rep, **m))
                    progress.update(f"e2e {route.key}")
            del ds, resident
        timings["e2e"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if "memory" in wanted:
            size = report.parse_size(args.memory_size)
            batch = sc.make_batch("f32", size)
            ds = sc.repeated_dataset(batch)
            for route in chosen:
                m = sc.measure(
                    route,
                    ds,
                    batches=args.memory_batches,
                    warmup=args.warmup,
                    step=None,
                    keep_times=False,
                    stream_options=stream_options,
                )
                m["rss_growth"] = m["rss_end"] - m["rss_start"]
                samples.append(_sample("memory", route, "", size, 0, **m))
                progress.update(f"memory {route.key}")
        timings["memory"] = time.perf_counter() - mark
        mark = time.perf_counter()
        if "sharded" in wanted and sharded_here:
            sharding = sc.batch_sharding(args.sharded_devices)
            step = sc.sharded_step(sc.calibrate_step(args.step_ms / 1e3))
            meta["sharded"] = {
                "devices": args.sharded_devices,
                "sharding": str(sharding),
                "step_seconds": step.seconds,
                "step_iterations": step.iterations,
            }
            progress.note(
                f"sharded: {args.sharded_devices} devices, {sharding}; step measured at "
                f"{step.seconds * 1e3:.2f} ms"
            )
            for layout, size, batch, ds in _datasets(sc, s_layouts, s_sizes):
                resident = jax.device_put(batch, sharding)
                rounds("sharded", sharded_routes, layout, size, batch, ds, step, resident, sharding)
                del resident
        elif "sharded" in wanted:
            if os.environ.get(CHILD):
                raise SystemExit(
                    f"the sharded scenario needs {args.sharded_devices} devices and JAX sees "
                    f"{jax.device_count()} even with forced host devices"
                )
            progress.note(
                f"sharded: running in a subprocess with {args.sharded_devices} forced CPU devices"
            )
            child = _run_sharded_child(args, [r.key for r in sharded_routes])
            samples += [s for s in child["samples"] if s["scenario"] == "sharded"]
            meta["sharded"] = child["meta"].get("sharded", {})
        timings["sharded"] = time.perf_counter() - mark
        mark = time.perf_counter()
    finally:
        progress.close()
    meta["seconds"] = time.perf_counter() - started
    meta["peak_rss_bytes"] = sc.peak_rss_bytes()
    summary = report.summarize(samples)
    return {
        "meta": meta,
        "samples": samples,
        "summary": summary,
        "targets": report.check_targets(summary, samples),
    }


def _run_sharded_child(args: argparse.Namespace, routes: list[str]) -> dict[str, Any]:
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
            "--scenarios", "sharded", "--routes", ",".join(routes), "--out", out,
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


def _datasets(sc: Any, layouts: list[str], sizes: list[int]) -> Iterator[tuple[Any, ...]]:
    # One (layout, size) at a time, so at most one size's datasets and slots are alive.
    for size in sizes:
        for layout in layouts:
            gc.collect()  # the previous size's datasets and slots, before allocating the next
            batch = sc.make_batch(layout, size)
            yield layout, size, batch, sc.repeated_dataset(batch)


def run_gpu(args: argparse.Namespace, argv: list[str]) -> int:
    """Accelerator mode; exits 0 with a clear message when JAX sees no GPU."""
    from . import report
    from . import scenarios as sc

    devices = sc.gpu_devices()
    if not devices:
        import jax

        print(
            f"--device gpu: JAX sees no GPU on this machine (devices: "
            f"{', '.join(str(d) for d in jax.devices())}); nothing to measure, exiting."
        )
        return 0
    sizes = [report.parse_size(s) for s in _split(args.throughput_sizes)]
    results: dict[str, Any] = {"device": str(devices[0]), "sizes": {}}
    print(f"host-to-device GB/s on {devices[0]}, median of {args.repeats}")
    for size in sizes:
        rates = sc.host_to_device(
            devices[0], size, batches=max(3, args.batches), repeats=args.repeats
        )
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
    args = _resolve(build_parser().parse_args(argv))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device == "gpu":
        return run_gpu(args, argv)

    from . import report

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
    for table in report.tables(result["summary"]):
        print()
        print(report.render_text(table))
    print()
    print(report.render_targets_text(result["targets"]))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(report.markdown(result))
    print(
        f"\nwrote {args.out}/results.json, {args.out}/summary.md"
        + (f" and {len(plots)} plots" if plots else "")
        + f" in {result['meta']['seconds']:.0f} s"
    )
    return 0
