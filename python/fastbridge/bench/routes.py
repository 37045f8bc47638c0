"""The routes (ways to hand a ``tf.data`` batch to JAX) that the benchmark compares.

Each route is a generator of batches. The benchmark times only the ``next()`` call on it, so
whatever a route does on the consumer's thread (``jnp.array``, ``device_put``, a DLPack import)
counts as consumer-visible time, and whatever it does in a background thread does not.

Routes 10 to 14 are the peers users pick instead of fastbridge: Grain's ``device_put``
pipeline, Keras's ``fit`` input path on JAX, big_vision's sharded pattern,
``jax.make_array_from_process_local_data`` and Grain's pattern written by hand (a thread that
``device_put``s into a queue). They and route 2 take a ``sharding`` (the sharded scenario passes
one; elsewhere they place on the default device). Routes 2, 10, 12, 14 and the fastbridge routes
also read a plain iterable of NumPy batches (the leaves scenario's other source). Grain and
Keras are optional: :func:`missing` says why a route cannot run, and the benchmark skips it
with that note.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import itertools
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import stream


@dataclasses.dataclass(frozen=True)
class Route:
    """One way of turning dataset elements into JAX arrays."""

    number: int
    key: str
    label: str
    kind: str
    """``anchor`` (what users write today), ``fastbridge`` or ``floor``."""
    open: Callable[..., Iterator[Any]]
    sharded: bool = False
    """Whether the route takes ``sharding=`` (and so runs in the sharded scenario)."""
    needs: str | None = None
    """The optional package the route needs (``grain``, ``keras``), ``None`` when none."""


def _tutorial_copy(ds: Any) -> Iterator[Any]:
    # What most tutorials write: a fresh device copy of every leaf, on the consumer's thread.
    for batch in ds.as_numpy_iterator():
        yield jax.tree_util.tree_map(jnp.array, batch)


def host_batches(ds: Any) -> Iterator[Any]:
    """NumPy batches of ``ds``: ``as_numpy_iterator()`` of a ``tf.data.Dataset``, else the
    iterable's own items (a list of NumPy dicts, as Grain and Hugging Face yield them)."""
    reader = getattr(ds, "as_numpy_iterator", None)
    return iter(reader() if reader is not None else ds)


def _device_put(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # device_put aliases 64-byte-aligned NumPy memory on CPU (TensorFlow's buffers are); with a
    # sharding it slices every leaf and places the slices, still on the consumer's thread.
    for batch in host_batches(ds):
        yield jax.device_put(batch, sharding)


def _dlpack(ds: Any) -> Iterator[Any]:
    # The best zero-copy loop written by hand: EagerTensors straight into JAX through DLPack.
    for batch in ds:
        yield jax.tree_util.tree_map(jax.dlpack.from_dlpack, batch)


def _flax_prefetch(ds: Any, size: int = 2) -> Iterator[Any]:
    # flax.jax_utils.prefetch_to_device without sharding: a deque of device_put batches that
    # the consumer's own next() refills, so the transfer still runs on the consumer's thread.
    queue: collections.deque[Any] = collections.deque()
    source = ds.as_numpy_iterator()

    def enqueue(n: int) -> None:
        for batch in itertools.islice(source, n):
            queue.append(jax.device_put(batch))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


class _StreamIterator(Iterator[Any]):
    """A fastbridge stream as a route; keeps the ``Stream`` reachable for its stats."""

    def __init__(self, ds: Any, backend: str, **options: Any) -> None:
        self.stream = stream(ds, backend=backend, **options)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        return next(self.stream)

    def close(self) -> None:
        self.stream.close()


def _stream_handoff(backend: str) -> Callable[..., Iterator[Any]]:
    def run(ds: Any, **options: Any) -> Iterator[Any]:
        return _StreamIterator(ds, backend, **options)

    run.__name__ = f"_stream_{backend}"
    return run


def _floor(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # Iterating the dataset and touching nothing: the cost no route can go below.
    yield from ds.as_numpy_iterator()


def _default_sharding() -> jax.sharding.Sharding:
    # The unsharded scenarios' placement for routes that need a sharding: the default device.
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _grain_device_put(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # Grain's own pipeline, grain.experimental.device_put: a thread prefetch of 4 host batches,
    # a map that calls jax.device_put(batch, sharding), and a thread prefetch of 2 placed ones.
    # It is fed the source's batches themselves (as_numpy_iterator views, or the iterable's
    # items, wrapped as a Grain IterDataset below), so every route reads the same source at the
    # same cost.
    import grain

    source = _host_iter_dataset(grain)(ds)
    placed = grain.experimental.device_put(
        source, sharding or _default_sharding(), cpu_buffer_size=4, device_buffer_size=2
    )
    return iter(placed)


def _host_iter_dataset(grain: Any) -> Any:
    """A Grain ``IterDataset`` over :func:`host_batches`, with a position as its state
    (Grain's prefetch snapshots each element's state; this one is never restored)."""

    class TfIterator(grain.DatasetIterator):  # type: ignore[misc]
        def __init__(self, ds: Any) -> None:
            super().__init__()
            self._source = host_batches(ds)
            self._position = 0

        def __next__(self) -> Any:
            batch = next(self._source)
            self._position += 1
            return batch

        def get_state(self) -> dict[str, int]:
            return {"position": self._position}

        def set_state(self, state: dict[str, int]) -> None:
            raise NotImplementedError("the benchmark never restores a Grain iterator")

    class TfIterDataset(grain.IterDataset):  # type: ignore[misc]
        def __init__(self, ds: Any) -> None:
            super().__init__()
            self._ds = ds

        def __iter__(self) -> Any:
            return TfIterator(self._ds)

    return TfIterDataset


def _keras_modules() -> tuple[Any, Any, Any]:
    # Keras picks its backend when first imported; the JAX trainer needs the JAX backend.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    from keras.src.backend.jax import trainer
    from keras.src.distribution import distribution_lib

    return keras, trainer, distribution_lib


def _keras_fit(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # What model.fit(tf_dataset) does on the JAX backend, with Keras's own functions:
    # JAXEpochIterator wraps the dataset in TFDatasetAdapter, whose get_jax_iterator copies every
    # tensor with np.array. On CPU without a distribution it stops there (fit's jitted step
    # then places the NumPy batch); _distribute_data is that placement, as Keras does it on an
    # accelerator (jax.device_put per leaf). With a sharding, a DataParallel distribution over
    # the sharding's devices is current, and the iterator places each batch with
    # jax.make_array_from_process_local_data, batch axis split over the mesh.
    _, trainer, distribution_lib = _keras_modules()
    distribution = None
    if sharding is not None:
        devices = list(_mesh_devices(sharding))
        distribution = distribution_lib.DataParallel(devices=devices)
    previous = distribution_lib.distribution()
    distribution_lib.set_distribution(distribution)
    try:
        epoch = trainer.JAXEpochIterator(x=ds)
        for batch in epoch._get_iterator():
            if distribution is None and any(
                isinstance(leaf, np.ndarray) for leaf in jax.tree_util.tree_leaves(batch)
            ):
                batch = trainer._distribute_data(batch)
            yield batch
    finally:
        distribution_lib.set_distribution(previous)


def _mesh_devices(sharding: jax.sharding.Sharding) -> Any:
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None:
        return mesh.devices.reshape(-1)
    return sorted(sharding.device_set, key=lambda d: d.id)


def _prefetch_thread(source: Iterator[Any], size: int) -> Iterator[Any]:
    """``source`` advanced by a background thread into a queue of ``size`` (big_vision's
    ``prefetch_iterator``); closing this generator stops the thread."""
    buffer: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def fill() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put((True, item), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((False, None))
        except BaseException as error:  # handed to the consumer, who re-raises it
            buffer.put((False, error))

    thread = threading.Thread(target=fill, name="bench-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _big_vision_put(t: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    # One leaf, as big_vision does it: view TensorFlow's buffer without a copy, cut it into the
    # rows each local device holds, device_put each part, assemble one global array.
    x = np.asarray(memoryview(t))
    shards = [
        jax.device_put(x[index], device)
        for device, index in sharding.addressable_devices_indices_map(x.shape).items()
    ]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)


def _big_vision(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # big_vision's input pipeline: the placement runs in a prefetch thread one batch ahead
    # (its train scripts' default prefetch_to_device=1), on the EagerTensors themselves (or on
    # the NumPy batches of a plain iterable).
    where = sharding or _default_sharding()
    placed = (jax.tree_util.tree_map(lambda t: _big_vision_put(t, where), batch) for batch in ds)
    return _prefetch_thread(placed, 1)


def _thread_put(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # Grain's pattern written by hand: a thread runs jax.device_put(batch) on every host batch
    # into a queue.Queue(maxsize=4), and the consumer's next() takes the next placed batch.
    placed = (jax.device_put(batch, sharding) for batch in host_batches(ds))
    return _prefetch_thread(placed, 4)


def _process_local(ds: Any, sharding: jax.sharding.Sharding | None = None) -> Iterator[Any]:
    # JAX's own answer for input data: each process hands its local rows and JAX splits them
    # over the sharding's local devices; on the consumer's thread, no prefetch.
    where = sharding or _default_sharding()
    for batch in ds.as_numpy_iterator():
        yield jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(where, x),  # type: ignore[no-untyped-call]
            batch,
        )


ROUTES: tuple[Route, ...] = (
    Route(1, "tutorial", "tutorial copy (jnp.array per leaf)", "anchor", _tutorial_copy),
    Route(2, "device_put", "as_numpy_iterator + device_put", "anchor", _device_put, True),
    Route(3, "dlpack", "EagerTensor -> jax.dlpack (by hand)", "anchor", _dlpack),
    Route(4, "flax_prefetch", "flax-style deque of device_put (2)", "anchor", _flax_prefetch),
    Route(5, "ring", "fastbridge ring", "fastbridge", _stream_handoff("ring"), True),
    Route(6, "numpy", "fastbridge numpy", "fastbridge", _stream_handoff("numpy"), True),
    Route(7, "direct", "fastbridge direct", "fastbridge", _stream_handoff("direct"), True),
    Route(8, "auto", "fastbridge auto", "fastbridge", _stream_handoff("auto"), True),
    Route(9, "floor", "floor: as_numpy_iterator only", "floor", _floor, True),
    Route(10, "grain", "Grain experimental.device_put", "anchor", _grain_device_put, True, "grain"),
    Route(11, "keras", "Keras fit input path (JAX)", "anchor", _keras_fit, True, "keras"),
    Route(12, "big_vision", "big_vision memoryview + shards", "anchor", _big_vision, True),
    Route(13, "process_local", "make_array_from_process_local", "anchor", _process_local, True),
    Route(14, "thread", "device_put in a thread, queue of 4", "anchor", _thread_put, True),
)
BY_KEY: dict[str, Route] = {r.key: r for r in ROUTES}
BACKGROUND = frozenset({"grain", "big_vision", "thread"})
"""Anchors that place batches on a background thread: what they copy, they copy off the
consumer's thread (counted with the producer's copies)."""
PEERS = ("tutorial", "device_put", "dlpack", "flax_prefetch", "grain", "keras", "big_vision",
         "process_local", "thread")  # fmt: skip
"""Every anchor: what users run instead of fastbridge. Targets compare against the best one."""
PREFETCHING = ("grain", "big_vision", "thread")
"""Peers that place batches ahead on a thread of their own, as a fastbridge stream does."""
SYNCHRONOUS = tuple(key for key in PEERS if key not in PREFETCHING)
"""Peers whose transfer runs inside the consumer's ``next()`` (flax's deque refills there)."""


def resolve(names: str | list[str] | None) -> list[Route]:
    """Routes from a comma-separated list of numbers or keys (``None`` or ``all``: every route)."""
    if names is None:
        return list(ROUTES)
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen: list[Route] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name == "all":
            return list(ROUTES)
        if name.isdigit() and 1 <= int(name) <= len(ROUTES):
            handoff = ROUTES[int(name) - 1]
        elif name in BY_KEY:
            handoff = BY_KEY[name]
        else:
            known = ", ".join(f"{r.number}/{r.key}" for r in ROUTES)
            raise ValueError(f"unknown route {name!r}; choose from {known}")
        if handoff not in chosen:
            chosen.append(handoff)
    if not chosen:
        raise ValueError("no route chosen")
    # Keep the canonical order so every table reads the same way.
    return sorted(chosen, key=lambda r: r.number)


def missing(handoff: Route) -> str | None:
    """Why ``handoff`` cannot run here (its optional package is absent), or ``None``."""
    if handoff.needs is None:
        return None
    if importlib.util.find_spec(handoff.needs) is None:
        return f"route {handoff.number} {handoff.key} skipped: {handoff.needs} is not installed"
    if handoff.needs == "keras" and "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
        if backend != "jax":
            return (
                f"route {handoff.number} keras skipped: Keras was imported with the {backend} "
                "backend (set KERAS_BACKEND=jax before importing it)"
            )
    return None


def open_route(
    handoff: Route, ds: Any, sharding: jax.sharding.Sharding | None = None, **stream_options: Any
) -> Iterator[Any]:
    """A fresh iterator of batches for ``handoff`` over ``ds``, placed by ``sharding`` if given."""
    if sharding is not None and not handoff.sharded:
        raise ValueError(f"route {handoff.key!r} takes no sharding")
    if handoff.kind == "fastbridge":
        if sharding is not None:
            stream_options = {**stream_options, "sharding": sharding}
        return handoff.open(ds, **stream_options)
    if handoff.sharded:
        return handoff.open(ds, sharding=sharding)
    return handoff.open(ds)


def close_route(iterator: Iterator[Any]) -> None:
    """Close an iterator of :func:`open_route` (a generator, or a stream and its thread)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def current_stream(iterator: Iterator[Any]) -> Any:
    """The ``Stream`` behind a fastbridge route's iterator, or ``None`` for other routes."""
    return getattr(iterator, "stream", None)


def host_copy(batch: Any) -> Any:
    """A NumPy copy of every leaf of a delivered batch, for comparing routes.

    Not :func:`fastbridge.to_numpy` (which converts a whole dataset): this copies one batch.
    """
    return jax.tree_util.tree_map(lambda leaf: np.array(leaf), batch)


def collect(
    handoff: Route,
    ds: Any,
    limit: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    **stream_options: Any,
) -> list[Any]:
    """Every batch ``handoff`` delivers for ``ds`` (up to ``limit``), copied to NumPy."""
    iterator = open_route(handoff, ds, sharding, **stream_options)
    out: list[Any] = []
    try:
        for batch in iterator:
            out.append(host_copy(batch))
            if limit is not None and len(out) >= limit:
                break
    finally:
        close_route(iterator)
    return out


def leaf_pointers(batch: Any) -> list[int | None]:
    """Data pointers of a batch's leaves (``None`` for leaves that are not arrays)."""
    out: list[int | None] = []
    for leaf in jax.tree_util.tree_leaves(batch):
        if isinstance(leaf, jax.Array) and len(leaf.addressable_shards) > 1:
            # A sharded leaf: its first shard stands for it (every shard is placed alike).
            out.append(leaf.addressable_shards[0].data.unsafe_buffer_pointer())
        elif isinstance(leaf, jax.Array):
            out.append(leaf.unsafe_buffer_pointer())
        elif isinstance(leaf, np.ndarray):
            out.append(leaf.ctypes.data)
        else:
            out.append(None)
    return out
