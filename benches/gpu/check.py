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

    python benches/gpu/check.py --out gpu-check.json          # on the GPU machine
    python benches/gpu/check.py --dry --budget-seconds 40     # anywhere, on CPU
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import faulthandler
import importlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import fastbridge
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from fastbridge import stream

Array = npt.NDArray[Any]
Method = Literal["ring", "numpy"]
MiB = 1 << 20
ROUTES = ("cpu", "dma_map", "pinned_host", "register", "device_put")
ROUTE_ENV = "FASTBRIDGE_TRANSFER"
PHASES = ("h2d", "consumer", "correctness", "routes")
SUMMARY_HEADER = "=== fastbridge GPU check: summary ==="
PREFETCH = 4

# Host-to-device methods, in table order. The limit methods need CUDA through CuPy/PyTorch.
H2D_METHODS = (
    "ring",
    "ring_copy8",
    "numpy",
    "device_put_reused",
    "device_put_fresh",
    "limit_cupy",
    "limit_torch",
)
H2D_LABELS = {
    "ring": "ring (fastbridge)",
    "ring_copy8": "ring, 8 copy threads",
    "numpy": "numpy ring",
    "device_put_reused": "device_put, reused array",
    "device_put_fresh": "device_put, fresh array",
    "limit_cupy": "pinned copy (CuPy)",
    "limit_torch": "pinned copy (PyTorch)",
}
CONSUMER_METHODS = ("ring", "flax_prefetch", "device_put_loop")


def log(message: str) -> None:
    print(f"[check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_size(text: str) -> int:
    """``"16M"``, ``"16MiB"``, ``"512K"`` or a number of bytes."""
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    spec = text.strip().upper().removesuffix("IB").removesuffix("B")
    if spec and spec[-1] in units:
        return int(float(spec[:-1]) * units[spec[-1]])
    return int(spec)


def size_label(nbytes: int) -> str:
    if nbytes >= MiB and nbytes % MiB == 0:
        return f"{nbytes // MiB} MiB"
    return f"{nbytes // 1024} KiB"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


# -- plan ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """Sizes and counts of one run: the real one on the GPU, or the dry one on CPU."""

    dry: bool
    sizes: list[int]
    consumer_sizes: list[int]
    bytes_per_sample: int
    min_batches: int
    max_batches: int
    warmup: int
    consumer_steps: int
    step_seconds: float
    step_dim: int
    correctness_batches: int
    correctness_rows: int
    route_correctness_batches: int
    sources: int
    min_rounds: int
    max_rounds: int

    @classmethod
    def make(cls, dry: bool) -> Plan:
        if dry:
            return cls(
                dry=True,
                sizes=[1 * MiB, 4 * MiB],
                consumer_sizes=[1 * MiB],
                bytes_per_sample=64 * MiB,
                min_batches=4,
                max_batches=32,
                warmup=PREFETCH + 2,
                consumer_steps=32,
                step_seconds=0.001,
                step_dim=96,
                correctness_batches=100,
                correctness_rows=32,
                route_correctness_batches=30,
                sources=2,
                min_rounds=3,
                max_rounds=5,
            )
        return cls(
            dry=False,
            sizes=[1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB],
            consumer_sizes=[16 * MiB, 64 * MiB],
            bytes_per_sample=1 << 30,
            min_batches=8,
            max_batches=256,
            warmup=PREFETCH + 2,
            consumer_steps=100,
            step_seconds=0.004,
            step_dim=2048,
            correctness_batches=1000,
            correctness_rows=1024,
            route_correctness_batches=200,
            sources=4,
            min_rounds=3,
            max_rounds=15,
        )

    def batches(self, nbytes: int) -> int:
        """Batches timed per sample: about ``bytes_per_sample``, within the bounds."""
        return max(self.min_batches, min(self.max_batches, self.bytes_per_sample // nbytes))

    def judged_sizes(self) -> list[int]:
        """Sizes the host-to-device targets judge: 16 MiB and up (dry: the largest)."""
        big = [s for s in self.sizes if s >= 16 * MiB]
        return big if big and not self.dry else self.sizes[-1:]


class Clock:
    """The run's time budget, counted from the process's start."""

    def __init__(self, budget: float) -> None:
        self.started = time.monotonic()
        self.budget = budget

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def deadline(self, share: float) -> float:
        """A phase's deadline: ``share`` of the time left (monotonic clock)."""
        return time.monotonic() + max(0.0, self.left()) * share


def run_rounds(
    name: str, deadline: float, plan: Plan, one_round: Callable[[int], None], max_rounds: int
) -> int:
    """Run ``one_round(k)`` at least ``plan.min_rounds`` times, and more while the next round
    (judged by the mean so far) still ends before ``deadline``."""
    started = time.monotonic()
    done = 0
    while done < max_rounds:
        one_round(done)
        done += 1
        per_round = (time.monotonic() - started) / done
        log(f"{name}: round {done} done ({per_round:.1f} s per round)")
        if done >= plan.min_rounds and time.monotonic() + per_round > deadline:
            break
    return done


# -- sources and devices ------------------------------------------------------------------
def host_arrays(nbytes: int, count: int) -> list[Array]:
    """``count`` distinct float32 arrays of ``nbytes`` (cycled, so no batch stays in cache)."""
    return [np.full(nbytes // 4, float(j + 1), np.float32) for j in range(count)]


def cycle(arrays: Sequence[Array], count: int) -> Iterator[Array]:
    for i in range(count):
        yield arrays[i % len(arrays)]


def stats_dict(stats: Any) -> dict[str, Any]:
    """The ``Stream.stats`` fields this check records (``transfer_route`` when present)."""
    fields = ("backend", "pinned", "slots", "pool_bytes", "pool_grown", "bytes_copied")
    out = {name: getattr(stats, name, None) for name in fields}
    out["transfer_route"] = getattr(stats, "transfer_route", None)
    return out


def pick_device(dry: bool) -> jax.Device:
    if dry:
        return jax.devices("cpu")[0]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as error:
        raise SystemExit(
            f"JAX sees no GPU ({error}); run with --dry on a machine without one"
        ) from None
    return gpus[0]


def available_routes(device: jax.Device) -> tuple[list[str], str]:
    """The transfer routes the running JAX offers for ``device``, and how that was found:
    fastbridge's own probe when this fastbridge has one, else a guess from JAX's API."""
    try:
        transfer: Any = importlib.import_module("fastbridge._transfer")
        return list(transfer.probe(device).routes()), "fastbridge._transfer.probe"
    except Exception as error:  # an older fastbridge: no probe
        reason = f"guessed from JAX's API (no fastbridge probe: {error!r})"
    if device.platform == "cpu":
        return ["cpu", "device_put"], reason
    found = []
    if hasattr(getattr(device, "client", None), "dma_map"):
        found.append("dma_map")
    try:
        if "pinned_host" in [m.kind for m in device.addressable_memories()]:
            found.append("pinned_host")
    except Exception:
        pass
    return [*found, "register", "device_put"], reason


def environment(device: jax.Device | None) -> dict[str, Any]:
    """Versions and machine facts (``device`` is ``None`` when no GPU was found)."""

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return f"{name} {importlib.metadata.version(name)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "jax_plugin": version(
            "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "jax-cuda12-pjrt"
        ),
        "numpy": np.__version__,
        "fastbridge": fastbridge.__version__,
        "fastbridge_file": fastbridge.__file__,
        "core_available": fastbridge.core_available(),
        "cupy": version("cupy-cuda13x", "cupy-cuda12x", "cupy"),
        "torch": version("torch"),
        "jax_devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "machine": platform.machine(),
        ROUTE_ENV: os.environ.get(ROUTE_ENV),
        "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
    }
    if device is None:
        return found
    try:
        memories = [m.kind for m in device.addressable_memories()]
    except Exception as error:
        memories = [f"unknown: {error!r}"]
    found.update(
        platform=device.platform,
        device=str(device),
        device_kind=device.device_kind,
        memory_kinds=memories,
        client_dma_map=hasattr(getattr(device, "client", None), "dma_map"),
    )
    return found


# -- host to device ------------------------------------------------------------------------
@dataclasses.dataclass
class Sample:
    seconds: float
    cpu_seconds: float
    nbytes: int
    stats: dict[str, Any] | None = None

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / 1e9


def h2d_stream(
    device: jax.Device,
    arrays: Sequence[Array],
    batches: int,
    warmup: int,
    backend: Method,
    copy_threads: int | None = None,
) -> Sample:
    """Steady-state GB/s of consuming ``batches`` from ``stream``, each waited for on the
    device, after ``warmup`` batches (pool allocation, pinning, thread start)."""
    nbytes = arrays[0].nbytes
    with stream(
        cycle(arrays, warmup + batches),
        backend=backend,
        device=device,
        prefetch=PREFETCH,
        copy_threads=copy_threads,
    ) as batches_:
        iterator = iter(batches_)
        for _ in range(warmup):
            next(iterator).block_until_ready()
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(batches):
            next(iterator).block_until_ready()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        for _ in iterator:  # nothing is left; this ends the stream the way a loop does
            pass
        stats = stats_dict(batches_.stats)
    return Sample(seconds, cpu, nbytes * batches, stats)


def h2d_device_put(
    device: jax.Device, arrays: Sequence[Array], batches: int, warmup: int, fresh: bool
) -> Sample:
    """``jax.device_put`` of pageable memory: one array reused, or a new one each batch
    (allocated and filled inside the timed loop, as a loader making new batches does)."""
    count, nbytes = arrays[0].size, arrays[0].nbytes

    def one(i: int) -> None:
        if fresh:
            array = np.empty(count, np.float32)
            array.fill(float(i))
        else:
            array = arrays[0]
        jax.device_put(array, device).block_until_ready()

    for i in range(warmup):
        one(i)
    cpu, started = time.process_time(), time.perf_counter()
    for i in range(batches):
        one(i)
    seconds = time.perf_counter() - started
    return Sample(seconds, time.process_time() - cpu, nbytes * batches)


class PinnedCopy:
    """The physical limit: copies from pinned host memory to the device on one CUDA stream,
    all enqueued and then synchronised (through CuPy or PyTorch)."""

    name = ""

    def __init__(self, device_index: int) -> None:
        self.device_index = device_index
        self.buffers: dict[int, Any] = {}

    def prepare(self, nbytes: int) -> Any:
        raise NotImplementedError

    def copy(self, buffers: Any, count: int) -> None:
        """Enqueue ``count`` copies and wait for them."""
        raise NotImplementedError

    def run(self, nbytes: int, batches: int, warmup: int) -> Sample:
        if nbytes not in self.buffers:
            self.buffers[nbytes] = self.prepare(nbytes)
        buffers = self.buffers[nbytes]
        self.copy(buffers, max(1, warmup))
        cpu, started = time.process_time(), time.perf_counter()
        self.copy(buffers, batches)
        seconds = time.perf_counter() - started
        return Sample(seconds, time.process_time() - cpu, nbytes * batches)

    def close(self) -> None:
        self.buffers.clear()


class CupyCopy(PinnedCopy):
    name = "cupy"

    def __init__(self, device_index: int) -> None:
        super().__init__(device_index)
        import cupy
        import cupyx

        self.cupy, self.cupyx = cupy, cupyx
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no CUDA device")
        with cupy.cuda.Device(device_index):
            self.stream = cupy.cuda.Stream(non_blocking=True)

    def prepare(self, nbytes: int) -> Any:
        with self.cupy.cuda.Device(self.device_index):
            host = self.cupyx.empty_pinned((nbytes,), dtype=np.uint8)
            host.fill(1)
            target = self.cupy.empty((nbytes,), dtype=self.cupy.uint8)
        return host, target

    def copy(self, buffers: Any, count: int) -> None:
        host, target = buffers
        runtime = self.cupy.cuda.runtime
        with self.cupy.cuda.Device(self.device_index):
            for _ in range(count):
                runtime.memcpyAsync(
                    target.data.ptr,
                    host.ctypes.data,
                    host.nbytes,
                    runtime.memcpyHostToDevice,
                    self.stream.ptr,
                )
            self.stream.synchronize()


class TorchCopy(PinnedCopy):
    name = "torch"

    def __init__(self, device_index: int) -> None:
        super().__init__(device_index)
        import torch

        self.torch = torch
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        self.device = torch.device("cuda", device_index)
        self.stream = torch.cuda.Stream(device=self.device)

    def prepare(self, nbytes: int) -> Any:
        torch = self.torch
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        host.fill_(1)
        target = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return host, target

    def copy(self, buffers: Any, count: int) -> None:
        host, target = buffers
        with self.torch.cuda.stream(self.stream):
            for _ in range(count):
                target.copy_(host, non_blocking=True)
        self.stream.synchronize()


def pinned_copies(
    dry: bool, device: jax.Device, wanted: Sequence[str]
) -> tuple[list[PinnedCopy], dict[str, str]]:
    """The pinned-copy limits that work here, and why the others do not."""
    found: list[PinnedCopy] = []
    unavailable: dict[str, str] = {}
    index = int(getattr(device, "local_hardware_id", None) or 0)
    for kind in (CupyCopy, TorchCopy):
        if kind.name not in wanted:
            unavailable[kind.name] = "unavailable: not requested (--limits)"
        elif dry:
            unavailable[kind.name] = "unavailable: dry run on CPU (no CUDA)"
            continue
        try:
            found.append(kind(index))
        except Exception as error:
            unavailable[kind.name] = f"unavailable: {error!r}"
    return found, unavailable


def phase_h2d(
    plan: Plan, device: jax.Device, deadline: float, result: dict[str, Any], wanted: Sequence[str]
) -> dict[str, Any]:
    limits, unavailable = pinned_copies(plan.dry, device, wanted)
    methods: dict[str, Callable[[int], Sample]] = {}
    arrays = {size: host_arrays(size, plan.sources) for size in plan.sizes}
    warm = plan.warmup
    copy8 = min(8, os.cpu_count() or 1)
    methods["ring"] = lambda s: h2d_stream(device, arrays[s], plan.batches(s), warm, "ring")
    methods["ring_copy8"] = lambda s: h2d_stream(
        device, arrays[s], plan.batches(s), warm, "ring", copy8
    )
    methods["numpy"] = lambda s: h2d_stream(device, arrays[s], plan.batches(s), warm, "numpy")
    methods["device_put_reused"] = lambda s: h2d_device_put(
        device, arrays[s], plan.batches(s), 2, fresh=False
    )
    methods["device_put_fresh"] = lambda s: h2d_device_put(
        device, arrays[s], plan.batches(s), 2, fresh=True
    )
    for limit in limits:
        methods[f"limit_{limit.name}"] = limit_method(limit, plan)
    out: dict[str, Any] = {
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
    result["h2d"] = out
    order = [name for name in H2D_METHODS if name in methods]

    def one_round(k: int) -> None:
        for size in plan.sizes:
            shift = k % len(order)  # rotate the order so no method always runs first
            for name in order[shift:] + order[:shift]:
                entry = out["methods"][name]
                if not entry["available"]:
                    continue
                try:
                    sample = methods[name](size)
                except Exception as error:
                    # A method that fails stops there and the others go on. A failing limit
                    # (CuPy or PyTorch) is the tool's problem: it becomes unavailable.
                    entry["available"] = False
                    entry["reason"] = f"failed at {size_label(size)}: {error!r}"
                    if name.startswith("limit_"):
                        unavailable[name.removeprefix("limit_")] = entry["reason"]
                    else:
                        result["errors"].append(
                            {
                                "phase": f"h2d {name}",
                                "error": repr(error),
                                "traceback": traceback.format_exc(),
                            }
                        )
                    log(f"h2d {name} at {size_label(size)} failed: {error!r}")
                    continue
                entry["gbps"][str(size)].append(sample.gbps)
                entry["cpu_s_per_gb"][str(size)].append(sample.cpu_seconds / sample.nbytes * 1e9)
                if sample.stats is not None:
                    entry["stats"][str(size)] = sample.stats

    out["rounds"] = run_rounds("h2d", deadline, plan, one_round, plan.max_rounds)
    for limit in limits:
        limit.close()
    for entry in out["methods"].values():
        entry["median"] = {s: median(v) if v else None for s, v in entry["gbps"].items()}
    limit_rounds: dict[str, list[float]] = {}
    for size in plan.sizes:
        # Per round, the faster of the limits that measured that round.
        per_method = [out["methods"][f"limit_{x.name}"]["gbps"][str(size)] for x in limits]
        rounds = max((len(v) for v in per_method), default=0)
        limit_rounds[str(size)] = [
            max(v[r] for v in per_method if len(v) > r) for r in range(rounds)
        ]
    out["limit"] = {
        "gbps": limit_rounds,
        "median": {s: median(v) if v else None for s, v in limit_rounds.items()},
        "sources": [x.name for x in limits],
        "unavailable": unavailable,
    }
    ring_stats = out["methods"]["ring"]["stats"]
    if ring_stats:
        out["ring_stats"] = ring_stats[max(ring_stats, key=int)]
    return out


def limit_method(limit: PinnedCopy, plan: Plan) -> Callable[[int], Sample]:
    return lambda size: limit.run(size, plan.batches(size), 2)


# -- consumer: next() and steps/s with a jitted GPU step -------------------------------------
CHAIN = 8


@jax.jit
def gpu_step(x: jax.Array, w: jax.Array) -> jax.Array:
    """A few matmuls that depend on the whole batch (its mean), so the step waits for it."""
    h = w + jnp.mean(x)
    for _ in range(CHAIN):
        h = jnp.tanh(h @ w)
    return jnp.sum(h)


def time_step(x: jax.Array, w: jax.Array, repeats: int) -> float:
    gpu_step(x, w).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gpu_step(x, w).block_until_ready()
        times.append(time.perf_counter() - started)
    return median(times)


def calibrate_step(
    plan: Plan, device: jax.Device, x: jax.Array
) -> tuple[jax.Array, float, list[dict[str, float]]]:
    """Weights whose matmul chain takes about ``plan.step_seconds`` (the matrix size is
    scaled by the cube root of the miss, at most four compiles)."""
    dim = plan.step_dim
    tried: list[dict[str, float]] = []
    rng = np.random.default_rng(0)
    w = jax.device_put(np.zeros((1, 1), np.float32), device)
    for _ in range(4):
        host = rng.standard_normal((dim, dim), dtype=np.float32) / np.float32(math.sqrt(dim))
        w = jax.device_put(host, device)
        seconds = time_step(x, w, 5)
        tried.append({"dim": dim, "seconds": seconds})
        if 0.75 <= seconds / plan.step_seconds <= 1.33:
            break
        scale = (plan.step_seconds / max(seconds, 1e-6)) ** (1 / 3)
        new = max(32, min(8192, round(dim * scale / 32) * 32))
        if new == dim:
            break
        dim = new
    return w, time_step(x, w, 11), tried


def prefetch_to_device(iterator: Iterator[Any], size: int, device: jax.Device) -> Iterator[Any]:
    """flax.jax_utils.prefetch_to_device, single device: a deque of ``size`` placed batches,
    refilled with the upcoming batch inside the consumer's ``next()``."""
    queue: collections.deque[Any] = collections.deque()

    def enqueue(n: int) -> None:
        for data in itertools.islice(iterator, n):
            queue.append(jax.device_put(data, device))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def consume(iterator: Iterator[Any], w: jax.Array, steps: int, warmup: int) -> dict[str, Any]:
    """Run the step on ``warmup`` then ``steps`` batches, waiting for each step; time each
    ``next()`` and the whole loop."""
    for _ in range(warmup):
        gpu_step(next(iterator), w).block_until_ready()
    waits = []
    started = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(iterator)
        waits.append(time.perf_counter() - before)
        gpu_step(batch, w).block_until_ready()
        del batch
    wall = time.perf_counter() - started
    for _ in iterator:
        pass
    return {"next_s": waits, "steps_per_s": steps / wall}


def phase_consumer(
    plan: Plan, device: jax.Device, deadline: float, result: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": {}, "steps": plan.consumer_steps}
    result["consumer"] = out
    arrays = {size: host_arrays(size, plan.sources) for size in plan.consumer_sizes}
    first = jax.device_put(arrays[plan.consumer_sizes[0]][0], device)
    w, step_seconds, tried = calibrate_step(plan, device, first)
    out["step_seconds"] = step_seconds
    out["step_dim"] = int(w.shape[0])
    out["calibration"] = tried
    log(f"consumer: step {step_seconds * 1e3:.2f} ms at {w.shape[0]}x{w.shape[0]} x {CHAIN}")
    steps, warm = plan.consumer_steps, plan.warmup
    for size in plan.consumer_sizes:
        x = jax.device_put(arrays[size][0], device)
        out["sizes"][str(size)] = {
            "step_seconds": time_step(x, w, 7),
            "methods": {name: [] for name in CONSUMER_METHODS},
        }
        del x

    def run(name: str, size: int) -> dict[str, Any]:
        source = cycle(arrays[size], warm + steps)
        if name == "ring":
            with stream(source, backend="ring", device=device, prefetch=PREFETCH) as batches:
                found = consume(iter(batches), w, steps, warm)
                found["stats"] = stats_dict(batches.stats)
            return found
        if name == "flax_prefetch":
            return consume(prefetch_to_device(source, 2, device), w, steps, warm)
        # The plain loop: iterate host batches (as_numpy_iterator() without TensorFlow) and
        # device_put each on the consumer's thread.
        return consume((jax.device_put(b, device) for b in source), w, steps, warm)

    def one_round(k: int) -> None:
        for size in plan.consumer_sizes:
            shift = k % len(CONSUMER_METHODS)
            for name in CONSUMER_METHODS[shift:] + CONSUMER_METHODS[:shift]:
                found = run(name, size)
                waits = found["next_s"]
                out["sizes"][str(size)]["methods"][name].append(
                    {
                        "next_us_median": median(waits) * 1e6,
                        "next_us_p90": quantile(waits, 0.9) * 1e6,
                        "steps_per_s": found["steps_per_s"],
                        **({"stats": found["stats"]} if "stats" in found else {}),
                    }
                )

    out["rounds"] = run_rounds("consumer", deadline, plan, one_round, plan.max_rounds)
    for entry in out["sizes"].values():
        entry["median"] = {
            name: {
                key: median([r[key] for r in rounds])
                for key in ("next_us_median", "next_us_p90", "steps_per_s")
            }
            for name, rounds in entry["methods"].items()
        }
    return out


# -- correctness -----------------------------------------------------------------------------
def bfloat16() -> np.dtype[Any] | None:
    try:
        dtype: np.dtype[Any] = np.dtype(jnp.bfloat16)
    except Exception:
        return None
    return dtype


def _bits(index: int, salt: int, nbytes: int) -> Array:
    """``nbytes`` pseudo-random bytes that depend only on ``(index, salt)`` (splitmix64)."""
    x = np.arange((nbytes + 7) // 8, dtype=np.uint64)
    x += np.uint64((index * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) % (1 << 64))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x.view(np.uint8)[:nbytes]


def make_batch(index: int, rows: int) -> dict[str, Array]:
    """Batch ``index``: several leaves of distinct dtypes, every byte a function of ``index``."""
    f32 = (_bits(index, 1, rows * 64 * 4).view(np.uint32) >> np.uint32(8)).astype(np.float32)
    batch: dict[str, Array] = {
        "index": np.array([index], np.int32),
        "f32": (f32 * np.float32(2**-24) + np.float32(index)).reshape(rows, 64),
        "i32": _bits(index, 2, rows * 16 * 4).view(np.int32).reshape(rows, 16),
        "u8": _bits(index, 3, rows * 256).reshape(rows, 256).copy(),
        "mask": (_bits(index, 5, rows * 8) & np.uint8(1)).astype(np.bool_).reshape(rows, 8),
    }
    bf16 = bfloat16()
    if bf16 is not None:
        small = (_bits(index, 4, rows * 32 * 2).view(np.uint16) >> np.uint16(4)).astype(np.float32)
        batch["bf16"] = small.astype(bf16).reshape(rows, 32)
    return batch


def host_words(leaf: Array) -> Array:
    flat = np.ascontiguousarray(leaf).reshape(-1)
    if flat.dtype.itemsize == 4:
        return flat.view(np.uint32)
    if flat.dtype.itemsize == 2:
        return flat.view(np.uint16).astype(np.uint32)
    return flat.view(np.uint8).astype(np.uint32)


def host_checksums(batch: dict[str, Array]) -> list[int]:
    """Position-weighted sums of every leaf's words, mod 2**32 (as :func:`device_checks`)."""
    sums = []
    for leaf in jax.tree_util.tree_leaves(batch):
        words = host_words(leaf)
        weights = np.arange(words.size, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        sums.append(int(np.sum(words * weights, dtype=np.uint32)))
    return sums


def same_bits(got: Array, want: Array) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def _device_words(x: jax.Array) -> jax.Array:
    flat = x.reshape(-1)
    if flat.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(flat, jnp.uint32)
    if flat.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(flat, jnp.uint16).astype(jnp.uint32)
    return flat.astype(jnp.uint32)


@jax.jit
def device_checks(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The batch's index and its checksums, computed on the device (no host sync)."""
    sums = []
    for leaf in jax.tree_util.tree_leaves(batch):
        words = _device_words(leaf)
        weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return batch["index"][0], jnp.stack(sums)


def _bump(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A step whose outputs match its inputs' shapes, so a donated batch's buffers are reused."""
    out = {}
    for key, x in batch.items():
        if x.dtype == jnp.bool_:
            out[key] = jnp.logical_not(x)
        elif jnp.issubdtype(x.dtype, jnp.floating):
            out[key] = x * 2
        else:
            out[key] = x + 1
    return out


donated_step = jax.jit(_bump, donate_argnums=0)
plain_step = jax.jit(_bump)


def correctness_pass(
    device: jax.Device,
    backend: Method,
    batches: int,
    rows: int,
    seed: int,
    plant: str | None = None,
) -> dict[str, Any]:
    """Stream ``batches`` batches, holding, dropping and donating them at random; then check
    every delivered batch's checksum and index and every held batch bit for bit."""
    plant_at = batches // 2 if plant else -1  # --plant-corruption: the checker must see it

    def source() -> Iterator[dict[str, Array]]:
        for index in range(batches):
            batch = make_batch(index, rows)
            if index == plant_at and plant == "source":  # a byte of the source changes
                batch["f32"].view(np.uint8).reshape(-1)[5] ^= np.uint8(0x40)
            yield batch

    rng = random.Random(seed)
    held: dict[int, dict[str, jax.Array]] = {}
    checks: list[tuple[jax.Array, jax.Array]] = []
    donated = stepped = dropped = 0
    held_bad: set[int] = set()
    started = time.perf_counter()
    with stream(source(), backend=backend, device=device, prefetch=PREFETCH) as delivered:
        for position, batch in enumerate(delivered):
            checks.append(device_checks(batch))
            draw = rng.random()
            if position == plant_at or (len(held) < 50 and draw < 0.3):
                held[position] = batch
                if position == plant_at and plant == "late":
                    overwrite_held(batch["f32"], checks[-1])
            elif draw < 0.5:
                donated_step(batch)  # the batch's buffers now belong to the step's output
                donated += 1
            elif draw < 0.7:
                plain_step(batch)
                stepped += 1
            if held and rng.random() < 0.2:
                victim = rng.choice(sorted(held))
                if victim != plant_at:
                    # Compared before it goes: whatever happened while it was held shows.
                    if not same_batch(held.pop(victim), victim, rows):
                        held_bad.add(victim)
                    dropped += 1
            del batch
        stats = stats_dict(delivered.stats)
    seconds = time.perf_counter() - started
    found = jax.device_get(checks)
    claimed = [int(index) for index, _ in found]
    counts = collections.Counter(claimed)
    corrupted: set[int] = set()
    for position, (index, sums) in enumerate(found):
        if not 0 <= int(index) < batches:
            corrupted.add(position)
        elif [int(s) for s in sums] != host_checksums(make_batch(int(index), rows)):
            corrupted.add(position)
    checksum_mismatch = len(corrupted)
    for position, batch in held.items():  # the stream has ended: every slot may be reused
        if not same_batch(batch, position, rows):
            held_bad.add(position)
    held_mismatch = len(held_bad)
    corrupted |= held_bad
    report = {
        "backend": backend,
        "batches": batches,
        "delivered": len(claimed),
        "corrupted": len(corrupted),
        "corrupted_positions": sorted(corrupted)[:20],
        "checksum_mismatch": checksum_mismatch,
        "held_checked": len(held) + dropped,
        "held_at_end": len(held),
        "held_mismatch": held_mismatch,
        "lost": sum(1 for i in range(batches) if counts[i] == 0),
        "repeated": sum(n - 1 for n in counts.values() if n > 1),
        "out_of_order": sum(1 for p, i in enumerate(claimed) if p != i),
        "donated": donated,
        "stepped": stepped,
        "dropped": dropped,
        "leaves": sorted(make_batch(0, 1)),
        "seconds": seconds,
        "stats": stats,
        "planted": {"mode": plant, "position": plant_at} if plant else None,
    }
    report["ok"] = not any(
        report[k] for k in ("corrupted", "lost", "repeated", "out_of_order")
    ) and (report["delivered"] == batches)
    return report


def same_batch(batch: dict[str, jax.Array], position: int, rows: int) -> bool:
    """Whether a delivered batch is, bit for bit, the source's batch ``position``."""
    want = make_batch(position, rows)
    got: dict[str, Any] = jax.device_get(batch)
    return sorted(got) == sorted(want) and all(
        same_bits(np.asarray(got[key]), want[key]) for key in want
    )


def overwrite_held(leaf: jax.Array, check: tuple[jax.Array, jax.Array]) -> None:
    """Flip one byte of a delivered (CPU) array's memory once its checksum is computed, so
    only the bitwise comparison of held batches at the end can find it."""
    if leaf.devices() != {jax.devices("cpu")[0]}:
        raise RuntimeError("--plant-corruption late needs the dry run (CPU memory)")
    jax.block_until_ready(check)  # type: ignore[no-untyped-call,unused-ignore]
    address = leaf.unsafe_buffer_pointer() + 5
    byte = ctypes.c_uint8.from_address(address)
    byte.value ^= 0x40


def phase_correctness(
    plan: Plan, device: jax.Device, result: dict[str, Any], plant: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"batches": plan.correctness_batches, "backends": {}}
    result["correctness"] = out
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        backends: tuple[Method, ...] = ("ring", "numpy")
        for k, backend in enumerate(backends):
            report = correctness_pass(
                device,
                backend,
                plan.correctness_batches,
                plan.correctness_rows,
                seed=1234 + k,
                plant=plant if backend == "ring" else None,
            )
            out["backends"][backend] = report
            log(
                f"correctness {backend}: {report['delivered']} delivered, "
                f"{report['corrupted']} corrupted, {report['lost']} lost, "
                f"{report['repeated']} repeated, {report['out_of_order']} out of order "
                f"({report['held_checked']} held checked, {report['donated']} donated, "
                f"{report['seconds']:.1f} s)"
            )
    out["ok"] = all(r["ok"] for r in out["backends"].values())
    return out


# -- transfer routes, each in a subprocess -----------------------------------------------------
def route_worker(args: argparse.Namespace) -> int:
    """Inside the subprocess: the ring's GB/s and a short correctness pass under the route
    ``FASTBRIDGE_TRANSFER`` forces."""
    clock = Clock(args.budget_seconds)
    plan = Plan.make(args.dry)
    device = pick_device(args.dry)
    out: dict[str, Any] = {"requested": os.environ.get(ROUTE_ENV), "gbps": {}}
    sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else plan.judged_sizes()
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
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            out["correctness"] = correctness_pass(
                device, "ring", plan.route_correctness_batches, plan.correctness_rows, 99
            )
    except Exception as error:
        out["error"] = f"{error!r}"
        out["traceback"] = traceback.format_exc()[-3000:]
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


def phase_routes(
    plan: Plan,
    device: jax.Device,
    clock: Clock,
    args: argparse.Namespace,
    result: dict[str, Any],
) -> dict[str, Any]:
    out: dict[str, Any] = {"requested": args.routes, "results": {}}
    result["routes"] = out
    supported, how = available_routes(device)
    out["supported"], out["supported_by"] = supported, how
    ring_stats = (result.get("h2d") or {}).get("ring_stats") or {}
    if args.routes == "none" or (args.routes == "auto" and plan.dry):
        out["skipped"] = "not requested (--routes none, or auto in a dry run)"
        return out
    if args.routes == "auto" and ring_stats and ring_stats.get("transfer_route") is None:
        out["skipped"] = (
            "this fastbridge reports no stats.transfer_route, so FASTBRIDGE_TRANSFER is not "
            "supported; pass --routes all to run the subprocesses anyway"
        )
        return out
    wanted = ROUTES if args.routes in ("auto", "all") else tuple(args.routes.split(","))
    todo = []
    for route in wanted:
        if args.routes in ("auto", "all") and route not in supported:
            out["results"][route] = {"skipped": f"not offered here ({how})"}
        else:
            todo.append(route)
    cap, least = (30.0, 8.0) if plan.dry else (75.0, 25.0)
    for number, route in enumerate(todo):
        left = clock.left() - 5.0
        if left < least:
            out["results"][route] = {"skipped": f"out of time ({left:.0f} s left)"}
            continue
        timeout = min(cap, max(least, left / (len(todo) - number)))
        env = dict(os.environ, **{ROUTE_ENV: route})
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "route.json")
            command = [sys.executable, os.path.abspath(__file__), "--route-worker", route]
            command += ["--out", path, "--budget-seconds", f"{timeout * 0.8:.0f}"]
            judged = plan.judged_sizes()  # the smallest and largest the targets judge
            command += ["--sizes", ",".join(str(s) for s in sorted({judged[0], judged[-1]}))]
            command += ["--dry"] if plan.dry else []
            started = time.monotonic()
            try:
                done = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=timeout
                )
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
        out["results"][route] = found
        if found["rc"] not in (0, None) or ("error" in found and found["rc"] is not None):
            # The route was offered (or asked for) and failed: a crash, not a missing feature.
            result["errors"].append(
                {"phase": f"route {route}", "error": found.get("error", f"rc {found['rc']}")}
            )
        medians = found.get("median") or {}
        shown = ", ".join(f"{size_label(int(s))} {v:.2f} GB/s" for s, v in medians.items())
        log(
            f"route {route}: {shown or found.get('error', 'no result')} "
            f"(reported route: {found.get('reported')})"
        )
    return out


# -- targets and report ------------------------------------------------------------------------
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


def evaluate(plan: Plan, result: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    h2d = result.get("h2d")
    if h2d:
        methods = h2d["methods"]
        for size in plan.judged_sizes():
            key, where = str(size), size_label(size)
            ring = methods["ring"]["gbps"][key]
            limit = h2d.get("limit", {}).get("gbps", {}).get(key, [])
            reasons = h2d.get("limit", {}).get("unavailable", {})
            reason = "; ".join(f"{k} {v}" for k, v in reasons.items()) or None
            found.append(
                target(
                    "ring H2D >= 0.9 x pinned-copy limit",
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
    consumer = result.get("consumer")
    if consumer:
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
            found.append(
                target(
                    "ring steps/s >= 1.0 x best anchor",
                    where,
                    ">= 1.0",
                    paired(
                        [r["steps_per_s"] for r in rounds["ring"]],
                        [r["steps_per_s"] for r in rounds[best]],
                    ),
                    lambda r: r >= 1.0,
                    f"best anchor: {best}",
                )
            )
    bad = bad_batches(result)
    if bad is not None:
        found.append(
            {
                "target": "zero corrupted, lost, repeated or out-of-order batches",
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
        total += sum(report[k] for k in ("corrupted", "lost", "repeated", "out_of_order"))
        total += abs(report["batches"] - report["delivered"])
    return total


def table(result: dict[str, Any]) -> list[str]:
    env = result.get("environment", {})
    lines = [
        SUMMARY_HEADER,
        f"{env.get('device_kind')} ({env.get('platform')}), jax {env.get('jax')}, "
        f"fastbridge {env.get('fastbridge')}, {env.get('cpu_count')} CPUs, "
        f"{'dry run' if result.get('dry') else 'GPU run'} in {result.get('elapsed_s', 0):.0f} s",
    ]
    h2d = result.get("h2d")
    if h2d:
        sizes = [str(s) for s in h2d["sizes"]]
        lines.append(
            f"{'H2D GB/s (median)':<28}" + "".join(f"{size_label(int(s)):>9}" for s in sizes)
        )
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
    consumer = result.get("consumer")
    if consumer:
        lines.append(f"{'consumer':<28}{'next() med':>11}{'p90 µs':>9}{'steps/s':>9}")
        for key, entry in consumer["sizes"].items():
            lines.append(f"  {size_label(int(key))}, step {entry['step_seconds'] * 1e3:.2f} ms")
            for name, values in entry["median"].items():
                lines.append(
                    f"    {name:<24}{values['next_us_median']:11.1f}"
                    f"{values['next_us_p90']:9.1f}{values['steps_per_s']:9.1f}"
                )
    correctness = result.get("correctness")
    if correctness:
        for name, r in correctness["backends"].items():
            lines.append(
                f"correctness {name}: {r['delivered']}/{r['batches']} delivered, "
                f"{r['corrupted']} corrupted, {r['lost']} lost, {r['repeated']} repeated, "
                f"{r['out_of_order']} out of order ({r['held_checked']} held checked)"
            )
    routes = result.get("routes")
    if routes and routes.get("results"):
        for route, found in routes["results"].items():
            if "skipped" in found:
                lines.append(f"route {route}: skipped, {found['skipped']}")
                continue
            medians = found.get("median") or {}
            shown = ", ".join(f"{size_label(int(s))} {v:.2f} GB/s" for s, v in medians.items())
            check = found.get("correctness") or {}
            lines.append(
                f"route {route}: {shown or found.get('error')} (reported "
                f"{found.get('reported')}; correctness {'OK' if check.get('ok') else 'FAILED'})"
            )
    elif routes and routes.get("skipped"):
        lines.append(f"routes: skipped, {routes['skipped']}")
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
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(partial, path)


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
    phases = args.phases.split(",")
    if unknown := [p for p in phases if p not in PHASES]:
        parser.error(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    if args.routes not in ("auto", "all", "none"):
        if unknown := [r for r in args.routes.split(",") if r not in ROUTES]:
            parser.error(f"unknown route(s) {unknown}; choose from {', '.join(ROUTES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.route_worker:
        return route_worker(args)
    clock = Clock(args.budget_seconds)
    faulthandler.enable()
    # A hang prints every thread's stack well before run.sh's hard timeout.
    faulthandler.dump_traceback_later(args.budget_seconds + 15, exit=False)
    plan = Plan.make(args.dry)
    if args.sizes:
        plan.sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.consumer_sizes:
        plan.consumer_sizes = [parse_size(s) for s in args.consumer_sizes.split(",")]
    phases = args.phases.split(",")
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
        write(args.out, result)
        print("\n".join(table(result)), flush=True)
        return 2
    result["environment"] = environment(device)
    log(
        f"{device.device_kind} ({device.platform}); jax {jax.__version__}; budget "
        f"{args.budget_seconds:.0f} s; phases {','.join(phases)}"
    )

    def guarded(name: str, work: Callable[[], object]) -> None:
        started = time.monotonic()
        try:
            work()
        except Exception as error:
            result["errors"].append(
                {"phase": name, "error": repr(error), "traceback": traceback.format_exc()}
            )
            log(f"{name} CRASHED: {error!r}")
            traceback.print_exc()
        result.setdefault("phase_seconds", {})[name] = time.monotonic() - started
        result["elapsed_s"] = clock.elapsed()
        write(args.out, result)  # a later crash or kill keeps what this phase measured

    # Correctness has a fixed size; the measuring phases share what is left, the routes last.
    reserve = 0.0 if "correctness" not in phases else (8.0 if plan.dry else 40.0)
    timed = [p for p in ("h2d", "consumer") if p in phases]
    share = {"h2d": 0.6 if len(timed) == 2 else 0.9, "consumer": 0.9}
    if "routes" in phases and (args.routes != "auto" or not plan.dry) and args.routes != "none":
        share = {"h2d": 0.35 if len(timed) == 2 else 0.55, "consumer": 0.4}

    def deadline(name: str) -> float:
        return time.monotonic() + max(0.0, clock.left() - reserve) * share[name]

    if "h2d" in phases:
        limits = args.limits.split(",")
        guarded("h2d", lambda: phase_h2d(plan, device, deadline("h2d"), result, limits))
    if "consumer" in phases:
        guarded("consumer", lambda: phase_consumer(plan, device, deadline("consumer"), result))
    if "correctness" in phases:
        guarded(
            "correctness", lambda: phase_correctness(plan, device, result, args.plant_corruption)
        )
    if "routes" in phases:
        guarded("routes", lambda: phase_routes(plan, device, clock, args, result))
    result["targets"] = evaluate(plan, result)
    bad = bad_batches(result)
    result["exit_code"] = 1 if bad else 2 if result["errors"] else 0
    result["elapsed_s"] = clock.elapsed()
    write(args.out, result)
    faulthandler.cancel_dump_traceback_later()
    log(f"wrote {args.out}")
    print("\n".join(table(result)), flush=True)
    return int(result["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
