"""Datasets, the jitted step, and the measurement loops of every scenario."""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .routes import BACKGROUND, Route, current_stream, leaf_pointers, open_route

KiB, MiB = 1 << 10, 1 << 20
ROWS = 16
"""Examples per synthetic batch; leaves are (ROWS, n) so a batch looks like a real one."""

# Shares of a 6-leaf batch's bytes, leaf by leaf (they add up to 1).
DICT_SHARES: dict[str, tuple[Any, float]] = {
    "image": (np.uint8, 0.5),
    "features": (np.float32, 0.25),
    "price": (np.float64, 0.0625),
    "user_id": (np.int64, 0.0625),
    "mask": (np.bool_, 0.0625),
    "embedding": (np.float16, 0.0625),
}
LAYOUTS = ("f32", "dict")


def tf_module() -> Any:
    """TensorFlow, imported late (it takes seconds) and with its logging quietened."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow imports Keras, which fixes its backend then: the Keras route needs JAX's.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import tensorflow as tf

    # TensorFlow must not grab an accelerator JAX is using.
    tf.config.set_visible_devices([], "GPU")
    return tf


def make_batch(layout: str, nbytes: int, seed: int = 0) -> Any:
    """One synthetic batch of about ``nbytes``: a float32 array, or a 6-leaf dict."""
    rng = np.random.default_rng(seed)
    if layout == "f32":
        cols = max(1, nbytes // (ROWS * 4))
        return rng.standard_normal((ROWS, cols), dtype=np.float32)
    if layout != "dict":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out: dict[str, np.ndarray] = {}
    for name, (dtype, share) in DICT_SHARES.items():
        item = np.dtype(dtype).itemsize
        cols = max(1, int(nbytes * share) // (ROWS * item))
        shape = (ROWS, cols)
        if dtype == np.uint8:
            out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype == np.bool_:
            out[name] = rng.random(shape) < 0.5
        elif dtype == np.int64:
            # Within int32: with JAX's x64 mode off every route narrows int64 to int32.
            out[name] = rng.integers(-(2**31), 2**31, shape, dtype=np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(dtype)
    return out


def batch_nbytes(batch: Any) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(batch)))


def repeated_dataset(batch: Any) -> Any:
    """One cached batch, repeated forever: producing it costs almost nothing."""
    return tf_module().data.Dataset.from_tensors(batch).repeat()


# -- the step ---------------------------------------------------------------------------------
STATE = 256


@jax.jit
def _touch(leaves: list[jax.Array]) -> jax.Array:
    # Read a little of every leaf so the step depends on the batch (an import that silently
    # failed would show), without making the step's cost grow with the batch.
    total = jnp.float32(0)
    for leaf in leaves:
        flat = leaf.reshape(-1)
        total = total + flat[: min(flat.size, 1024)].astype(jnp.float32).sum()
    return total  # type: ignore[no-any-return]  # jnp arithmetic is typed as Any


def _block(tree: Any) -> Any:
    """``jax.block_until_ready``, which jax leaves untyped."""
    return jax.block_until_ready(tree)  # type: ignore[no-untyped-call]


def _make_step(iterations: int) -> Callable[[jax.Array, Any], jax.Array]:
    weight = jnp.asarray(
        np.random.default_rng(1).standard_normal((STATE, STATE), dtype=np.float32) / 16
    )

    @jax.jit
    def step(state: jax.Array, batch: Any) -> jax.Array:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(batch) if isinstance(leaf, jax.Array)]
        x = state + 1e-9 * _touch(leaves)

        def body(_: int, x: jax.Array) -> jax.Array:
            return jnp.tanh(x @ weight)

        return jax.lax.fori_loop(0, iterations, body, x)  # type: ignore[no-any-return]

    return step


@dataclasses.dataclass
class Step:
    """A jitted CPU step of a calibrated duration: ``state = step(state, batch)``."""

    fn: Callable[[jax.Array, Any], jax.Array]
    iterations: int
    seconds: float
    """Median measured duration on a batch already in JAX."""

    def __call__(self, state: jax.Array, batch: Any) -> jax.Array:
        return self.fn(state, batch)


def sharded_step(base: Step) -> Step:
    """``base`` for batches sharded over several devices: the batch is read on every shard's own
    device, while the matmul chain runs on one device, as calibrated. (Run on the batch's
    devices, the chain would be replicated: 8 times the work on forced host devices that share
    the same cores.)"""
    probe = jnp.zeros((ROWS, 16), jnp.float32)

    def fn(state: jax.Array, batch: Any) -> jax.Array:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(batch) if isinstance(leaf, jax.Array)]
        touched = _touch(leaves)  # dispatched first, so it runs beside the chain
        state = base.fn(state, probe)
        touched.block_until_ready()
        return state

    return Step(fn, base.iterations, base.seconds)


def batch_sharding(devices: int) -> jax.sharding.NamedSharding:
    """``NamedSharding(Mesh(devices, ('batch',)), P('batch'))`` over the first ``devices``."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    found = jax.devices()
    if len(found) < devices:
        raise RuntimeError(
            f"the sharded scenario needs {devices} devices, JAX sees {len(found)} (on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before importing jax)"
        )
    spec = PartitionSpec("batch")  # type: ignore[no-untyped-call]  # jax leaves it untyped
    return NamedSharding(Mesh(np.array(found[:devices]), ("batch",)), spec)


def initial_state() -> jax.Array:
    return jnp.full((STATE, STATE), 0.01, jnp.float32)


def time_step(fn: Callable[[jax.Array, Any], jax.Array], batch: Any, runs: int = 15) -> float:
    state = initial_state()
    fn(state, batch).block_until_ready()  # compile
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        state = fn(state, batch)
        state.block_until_ready()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibrate_step(target_seconds: float) -> Step:
    """Choose the loop count so that one step takes about ``target_seconds`` on this machine."""
    probe = jnp.zeros((ROWS, 16), jnp.float32)
    iterations = 16
    fn = _make_step(iterations)
    seconds = time_step(fn, probe)
    # A few rounds: dispatch overhead skews the first estimate, and the machine is shared.
    for _ in range(4):
        if 0.85 * target_seconds <= seconds <= 1.15 * target_seconds:
            break
        iterations = max(1, round(iterations * target_seconds / max(seconds, 1e-7)))
        fn = _make_step(iterations)
        seconds = time_step(fn, probe)
    return Step(fn, iterations, seconds)


# -- resources --------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size (falls back to the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak RSS so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class RssSampler:
    """Samples RSS from a background thread every 20 ms: the peak of one run, which the
    process-wide ru_maxrss cannot give once an earlier run has set a higher mark."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# -- one measured run -------------------------------------------------------------------------
def _close(iterator: Iterator[Any]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _consumer_copied(route: Route, first: Any, second: Any) -> int:
    """Bytes per batch the consumer's thread copied, for anchor routes: the dataset repeats one
    cached buffer, so a leaf that aliases it has the same address in two live batches."""
    if route.kind != "anchor":
        return 0  # fastbridge copies (if at all) on its producer thread; the floor never does
    total = 0
    leaves = jax.tree_util.tree_leaves(first)
    for leaf, a, b in zip(leaves, leaf_pointers(first), leaf_pointers(second), strict=True):
        if route.key == "tutorial" or a != b:
            total += int(leaf.nbytes)
    return total


def measure(
    route: Route,
    ds: Any,
    *,
    batches: int,
    warmup: int,
    step: Step | None,
    resident: Any = None,
    keep_times: bool = True,
    probe_copies: bool = False,
    stream_options: dict[str, Any] | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, Any]:
    """Run ``route`` over ``ds`` for ``warmup + batches`` batches and measure the last ones.

    With a ``step``, each batch goes through it and the step is waited for, as in training.
    The floor route yields NumPy, so its step runs on ``resident`` (the same batch already in
    JAX): the same work without any handoff.
    """
    # Young generations only: a full collection costs ~0.15 s with TensorFlow loaded, more than
    # many runs; the previous run's batches and slots are freed by reference counting anyway.
    gc.collect(1)
    state = initial_state()
    iterator = open_route(route, ds, sharding, **(stream_options or {}))
    copied = 0
    producer_copied0 = 0
    try:
        held = None
        for i in range(warmup):
            batch = next(iterator)
            if probe_copies and i == warmup - 2:
                held = batch
            if probe_copies and i == warmup - 1 and held is not None:
                copied = _consumer_copied(route, held, batch)
                held = None
            state = _consume(state, batch, step, route, resident)
        del batch
        live = current_stream(iterator)
        if live is not None:
            producer_copied0 = live.stats.bytes_copied
        times: list[float] = []
        with RssSampler() as sampler:
            rss0, faults0 = rss_bytes(), minor_faults()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(batches):
                # Time next() alone: assigning to `batch` afterwards frees the previous batch
                # outside the timed window (its release is wall time, not time inside next()).
                started = time.perf_counter()
                item = next(iterator)
                times.append(time.perf_counter() - started)
                batch = item
                state = _consume(state, batch, step, route, resident)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            faults = minor_faults() - faults0
            del batch, item
            rss1 = rss_bytes()
        producer_copied = 0
        if live is not None:
            producer_copied = (live.stats.bytes_copied - producer_copied0) // batches
        if route.key in BACKGROUND:
            producer_copied, copied = copied, 0
        backend = live.backend if live is not None else route.key
    finally:
        _close(iterator)
    result: dict[str, Any] = {
        "batches": batches,
        "consumer_s": sum(times) / batches,
        "consumer_median_s": statistics.median(times),
        "wall_s": wall / batches,
        "cpu_s": cpu / batches,
        "consumer_copied_bytes": copied,
        "producer_copied_bytes": int(producer_copied),
        "rss_start": rss0,
        "rss_end": rss1,
        "rss_peak": sampler.peak,
        "minor_faults": faults / batches,
        "backend": backend,
    }
    if keep_times:
        result["next_s"] = [round(t, 9) for t in times]
    return result


def _consume(state: jax.Array, batch: Any, step: Step | None, route: Route, resident: Any) -> Any:
    if step is None:
        if route.kind != "floor":
            _block(batch)
        return state
    state = step(state, resident if route.kind == "floor" else batch)
    state.block_until_ready()
    return state


# -- memcpy and slot fills (the physical limit for any route that copies) ----------------------
def _touched(nbytes: int) -> np.ndarray:
    out = np.empty(nbytes, np.uint8)
    out.fill(1)  # fault every page in now, not inside the timed copies
    return out


class ParallelCopy:
    """``np.copyto`` split into ``threads`` slices on a persistent pool (NumPy drops the GIL
    while it copies), so the baseline pays no thread start-up per copy."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None

    def __call__(self, dest: np.ndarray, source: np.ndarray) -> None:
        if self.pool is None:
            np.copyto(dest, source)
            return
        bounds = np.linspace(0, source.size, self.threads + 1, dtype=np.int64)
        futures = [
            self.pool.submit(np.copyto, dest[a:b], source[a:b])
            for a, b in itertools.pairwise(bounds[1:])
        ]
        np.copyto(dest[: bounds[1]], source[: bounds[1]])
        for future in futures:
            future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def copy_rates(
    nbytes: int, threads: int, repeats: int, copies: int
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved samples of memcpy (NumPy, ``threads`` threads), the core's ``copy_into`` and
    a full ring slot fill (acquire, fill, release) of ``nbytes``; seconds and CPU per copy."""
    from .. import core_available

    source = _touched(nbytes)
    dest = _touched(nbytes)
    memcpy = ParallelCopy(threads)
    ways: dict[str, Callable[[], object]] = {"memcpy": lambda: memcpy(dest, source)}
    if core_available():
        from .._native import core as _core

        assert _core is not None
        ways["copy_into"] = lambda: _core.copy_into(dest, 0, source, 0, threads)
        ring = _core.SlotPool(slots=2, copy_threads=threads)
        work = [(source, 0, 0)]

        def fill() -> None:
            slot = ring.acquire(nbytes)
            slot.fill(work)
            slot.release()

        ways["ring_fill"] = fill
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            way()  # warm: the ring allocates its slot on the first fill
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(copies):
                way()
            wall = (time.perf_counter() - wall0) / copies
            cpu = (time.process_time() - cpu0) / copies
            out[name].append({"seconds": wall, "cpu_s": cpu, "gbps": nbytes / wall / 1e9})
    memcpy.close()
    return out


# -- end to end -------------------------------------------------------------------------------
E2E_IMAGE = (32, 32, 3)
E2E_CLASSES = 10


def e2e_dataset(records: int, batch: int, seed: int = 0) -> Any:
    """A real input pipeline: JPEG decode and augmentation in a parallel map, shuffle, batch."""
    tf = tf_module()
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (records, *E2E_IMAGE), dtype=np.uint8)
    encoded = [tf.io.encode_jpeg(image).numpy() for image in images]
    labels = rng.integers(0, E2E_CLASSES, records, dtype=np.int32)

    def decode(data: Any, label: Any) -> dict[str, Any]:
        image = tf.io.decode_jpeg(data, channels=3)
        image = tf.image.random_flip_left_right(image, seed=seed)
        image = tf.cast(image, tf.float32) / 255.0
        return {"image": image, "label": label}

    ds = tf.data.Dataset.from_tensor_slices((encoded, labels)).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Every route opens its own iterator, which refills the shuffle buffer: keep it a few batches.
    ds = ds.shuffle(4 * batch, seed=seed).batch(batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def mlp_step(hidden: int, batch: int) -> tuple[Step, Callable[[], Any]]:
    """A jitted SGD step of a small MLP on the e2e batches, and its initial parameters."""
    features = int(np.prod(E2E_IMAGE))

    def init() -> Any:
        rng = np.random.default_rng(0)
        return {
            "w1": jnp.asarray(rng.standard_normal((features, hidden), np.float32) * 0.02),
            "b1": jnp.zeros(hidden),
            "w2": jnp.asarray(rng.standard_normal((hidden, E2E_CLASSES), np.float32) * 0.02),
            "b2": jnp.zeros(E2E_CLASSES),
        }

    def loss(params: Any, batch: Any) -> jax.Array:
        x = batch["image"].reshape(batch["image"].shape[0], -1)
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        logits = h @ params["w2"] + params["b2"]
        labels = jax.nn.one_hot(batch["label"], E2E_CLASSES)
        return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1))

    @jax.jit
    def train(params: Any, batch: Any) -> Any:
        grads = jax.grad(loss)(params, batch)
        return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)

    probe = {
        "image": jnp.zeros((batch, *E2E_IMAGE), jnp.float32),
        "label": jnp.zeros((batch,), jnp.int32),
    }
    params = init()
    train(params, probe)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        params = train(params, probe)
        _block(params)
        times.append(time.perf_counter() - started)
    return Step(train, 0, statistics.median(times)), init


def measure_e2e(
    route: Route,
    ds: Any,
    *,
    steps: int,
    warmup: int,
    step: Step,
    init: Callable[[], Any],
    resident: Any,
) -> dict[str, Any]:
    """Train ``steps`` steps on ``route``'s batches: steps/s and the share spent waiting."""
    gc.collect(1)
    params = init()
    iterator = open_route(route, ds)
    try:
        for _ in range(warmup):
            batch = next(iterator)
            params = step(params, resident if route.kind == "floor" else batch)
        _block(params)
        times: list[float] = []
        with RssSampler() as sampler:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                started = time.perf_counter()  # next() alone, as in the handoff loop
                item = next(iterator)
                times.append(time.perf_counter() - started)
                batch = item
                # The floor measures the pipeline alone: it drops the batch and skips the step.
                if route.kind != "floor":
                    params = step(params, batch)
                    _block(params)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            del batch, item
    finally:
        _close(iterator)
    return {
        "batches": steps,
        "steps_per_s": steps / wall,
        "wait_fraction": sum(times) / wall,
        "consumer_s": sum(times) / steps,
        "wall_s": wall / steps,
        "cpu_s": cpu / steps,
        "rss_peak": sampler.peak,
        "next_s": [round(t, 9) for t in times],
    }


# -- accelerator ------------------------------------------------------------------------------
def gpu_devices() -> list[jax.Device]:
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:
        return []


def host_to_device(
    device: jax.Device, nbytes: int, batches: int, repeats: int
) -> dict[str, list[float]]:
    """Host-to-device GB/s: pinned ring slots, the pageable NumPy ring, and ``device_put`` of a
    fresh NumPy array each batch (what a plain loop does)."""
    source = np.ones(nbytes // 4, np.float32)
    data = [source] * batches
    out: dict[str, list[float]] = {"ring (pinned)": [], "numpy ring (pageable)": []}
    out["device_put fresh array"] = []
    from .. import core_available, stream

    for _ in range(repeats):
        for name in list(out):
            if name == "ring (pinned)" and not core_available():
                continue
            started = time.perf_counter()
            if name == "device_put fresh array":
                for leaf in data:
                    jax.device_put(np.array(leaf), device).block_until_ready()
            else:
                backend = "ring" if name.startswith("ring") else "numpy"
                with stream(data, backend=backend, device=device) as batches_:  # type: ignore[arg-type]
                    for batch in batches_:
                        batch.block_until_ready()
            out[name].append(nbytes * batches / (time.perf_counter() - started) / 1e9)
    return {k: v for k, v in out.items() if v}
