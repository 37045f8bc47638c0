"""``stream()``: batches from a host-side source delivered as pytrees of ``jax.Array``."""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, Literal, TypeVar

import jax

from . import _backends
from ._backends import Placement, make_backend
from ._leaves import DtypePolicy, Flattener, check_policy
from ._multihost import agree_on_batches, process_count, shard_source
from ._numpy_ring import MAX_QUEUE_CAPACITY
from ._padding import Padder
from ._position import BATCH, END, ERROR, Position, Reader, restore
from ._progress import ProgressBar, summary
from ._state import STATE_VERSION, SavedState, Unsaveable, encode_value
from ._state import parse as parse_state
from ._tfdata import PipelineFacts, cardinality, is_dataset, pipeline_facts
from .errors import FastbridgeWarning, StreamClosedError

try:
    from . import _core
except ImportError:  # the extension is not built: the NumPy ring stands in for it
    _core = None  # type: ignore[assignment]

Backend = Literal["auto", "ring", "numpy", "direct", "copy"]
BACKENDS: tuple[str, ...] = ("auto", "ring", "numpy", "direct", "copy")
T = TypeVar("T")

# Upper bounds on the integer options, checked before anything is allocated.
MAX_SLOTS = 1 << 20
MAX_COPY_THREADS = 1024
MAX_POOL_BYTES = (1 << 63) - 1
STATE_TIMEOUT = 5.0
"""Default bound, in seconds, on how long ``Stream.state()`` waits for a source read."""
_JOIN_SECONDS = 1.0


def core_available() -> bool:
    """Whether the Rust extension (``fastbridge._core``) is importable."""
    return _core is not None


@dataclasses.dataclass(frozen=True)
class StreamStats:
    """A snapshot of a stream's counters. ``Stream.stats`` makes a new one on each access."""

    backend: str
    batches: int
    bytes: int
    wait_seconds: float
    """Time the consumer spent blocked inside ``next()``."""
    producer_busy_seconds: float
    """Time the producer spent reading the source and preparing batches (not waiting)."""
    bytes_copied: int
    """Bytes copied into ring slots: every leaf for ``ring`` and ``numpy``, only the narrowed ones
    (64-bit leaves with JAX's x64 off) for ``direct``, all on the consumer for ``copy``."""
    pinned: bool
    """Whether every slot's memory is locked in RAM (or registered with CUDA)."""
    slots: int
    pool_bytes: int
    pool_grown: int
    """How many slots were added because the consumer kept every slot and waited."""
    elapsed_seconds: float

    @property
    def batches_per_second(self) -> float:
        return self.batches / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def gigabytes_per_second(self) -> float:
        return self.bytes / self.elapsed_seconds / 1e9 if self.elapsed_seconds > 0 else 0.0

    @property
    def input_bound_fraction(self) -> float:
        """Share of wall time the consumer waited for input (0: never, 1: always)."""
        return self.wait_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


def _resolve_device(device: jax.Device | str | None) -> jax.Device:
    if device is None:
        return jax.devices()[0]
    if isinstance(device, str):
        try:
            return jax.devices(device)[0]
        except RuntimeError as error:
            raise ValueError(f"device={device!r}: JAX has no such platform ({error})") from None
    if isinstance(device, jax.Device):
        return device
    raise TypeError(f"device must be a jax.Device, a platform name or None, got {device!r}")


def _resolve_backend(backend: str, device: jax.Device, facts: PipelineFacts | None) -> str:
    """``backend`` with ``auto`` resolved; ``facts`` describe a tf.data source (else ``None``)."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if backend == "auto":
        # On CPU, TensorFlow's own buffers need no copy and any extra copy competes with the
        # step for cores and memory bandwidth (benches/RESULTS.md). A buffer TensorFlow made
        # is never written again while referenced; but TensorFlow aliases 64-byte-aligned
        # arrays that Python code in the pipeline returns (from_generator, py_function,
        # numpy_function), and any other iterable may refill the arrays it yielded, so
        # batches the consumer holds could change: those get their own copy in slots. On
        # accelerators, pinned slots feed asynchronous transfers.
        if device.platform == "cpu" and facts is not None and not facts.runs_python:
            return "direct"
        return "ring" if _core is not None else "numpy"
    if backend == "ring" and _core is None:
        raise ImportError(
            "backend='ring' needs the Rust extension fastbridge._core, which is not built; "
            "install a fastbridge wheel, or use backend='numpy'"
        )
    if backend == "direct" and facts is not None and facts.runs_python:
        warnings.warn(
            "backend='direct' hands TensorFlow's buffers to JAX, and this pipeline runs "
            f"Python code ({', '.join(facts.python_ops) or 'from_generator'}) whose arrays "
            "TensorFlow aliases when they are 64-byte aligned: if that code refills an array "
            "it returned, batches you hold change. Use backend='auto' (which copies such "
            "batches into slots), or make the Python code return a new array each time",
            FastbridgeWarning,
            stacklevel=4,
        )
    return backend


def _check_checkpoint(facts: PipelineFacts) -> None:
    """What checkpoint=True cannot restore in this pipeline: refuse, or say so once."""
    if facts.generator:
        raise ValueError(
            "checkpoint=True cannot save this pipeline's position: tf.data cannot save the "
            "state of a Dataset.from_generator iterator. Stream it with checkpoint=False "
            "(resuming then replays the batches already delivered), or build the dataset "
            "with fastbridge.from_numpy or a tf.data source"
        )
    limits = []
    if facts.reshuffles_unseeded:
        limits.append(
            "an unseeded shuffle (or random dataset) runs again after a resume, under a "
            "repeat() or inside an interleave/flat_map, with new seeds: batches up to the end "
            "of the current epoch resume exactly, later epochs come in a different order. "
            "Pass shuffle(..., seed=N) (or call tf.random.set_seed) to make them exact"
        )
    if facts.stateful_random:
        limits.append(
            f"stateful random ops ({', '.join(facts.stateful_random)}) keep state that tf.data "
            "does not save: after a resume they draw different numbers. Use stateless random "
            "ops (tf.random.stateless_uniform, Dataset.random) to make them exact"
        )
    if limits:
        warnings.warn(
            "checkpoint=True cannot resume this pipeline exactly: " + "; and ".join(limits),
            FastbridgeWarning,
            stacklevel=4,
        )


class _Pipeline:
    """What the producer thread shares with the consumer. The thread references this, never
    the ``Stream``, so an abandoned stream can be garbage-collected (which closes it)."""

    def __init__(
        self, reader: Reader, backend: _backends.Backend, cursor: Position, x64: bool
    ) -> None:
        self.reader = reader
        self.backend = backend
        # The position of the last batch the consumer delivered: replaced in one step by the
        # consumer, read in one step by state() and by the reader (to forget delivered batches).
        self.cursor = cursor
        self.x64 = x64
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self.source_seconds = 0.0
        self.convert_seconds = 0.0
        self.pid = os.getpid()

    def step(self) -> tuple[int, Any, int, Position | None]:
        """Read and prepare one batch: ``(kind, payload, nbytes, position)`` where ``kind`` is
        ``BATCH``, ``END`` or ``ERROR`` (then ``payload`` is the exception)."""
        started = time.perf_counter()
        kind, item, position = self.reader.read(self.cursor.batches)
        read = time.perf_counter()
        self.source_seconds += read - started
        if kind != BATCH:
            return (kind, item, 0, None)
        assert position is not None
        try:
            payload, nbytes = self.backend.prepare(item, position.batches - 1)
        except Exception as error:  # e.g. a leaf that does not fit: the stream ends here
            return (ERROR, error, 0, None)
        finally:
            self.convert_seconds += time.perf_counter() - read
        return (BATCH, payload, nbytes, position)

    def produce(self) -> None:
        # JAX's x64 switch can be thread-local (``with jax.enable_x64():``); the producer
        # imports arrays, so it must see the consumer's setting from when the stream was made.
        queue = self.backend.queue
        with jax.enable_x64(self.x64):
            try:
                while not self.closed.is_set():
                    entry = self.step()
                    if not queue.publish(entry) or entry[0] != BATCH:
                        return
                    del entry
            except StreamClosedError:
                return
            except BaseException as error:  # delivered in order, after every good batch
                if not self.closed.is_set():
                    queue.publish((ERROR, error, 0, None))

    def close(self, join: float = _JOIN_SECONDS) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if os.getpid() != self.pid:
            # A forked child: the producer thread and any lock it held stayed in the parent.
            return
        self.backend.close()
        thread = self.thread
        if join and thread is not None and thread is not threading.current_thread():
            # The producer may be inside the source's own next() (e.g. a slow tf.data map);
            # it notices the close as soon as that returns. Do not hang the caller on it.
            thread.join(timeout=join)


# Streams still open, closed together at interpreter exit within one bounded wait (closing
# them one by one would wait up to _JOIN_SECONDS for each producer blocked in its source).
_OPEN: weakref.WeakSet[_Pipeline] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    pipelines = list(_OPEN)
    for pipeline in pipelines:
        pipeline.close(join=0)
    deadline = time.monotonic() + _JOIN_SECONDS
    for pipeline in pipelines:
        thread = pipeline.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


class Stream(Iterator[T], Generic[T]):
    """An iterator of batches (pytrees of ``jax.Array``) and a context manager.

    Made by :func:`stream`. ``close()`` (or leaving the ``with`` block) stops the producer and
    frees every slot that no batch still holds; batches you kept stay valid.
    """

    def __init__(
        self,
        source: Iterable[Any],
        *,
        backend: Backend = "auto",
        prefetch: int = 4,
        device: jax.Device | str | None = None,
        sharding: jax.sharding.Sharding | None = None,
        pad_last: bool = False,
        batch_size: int | None = None,
        dtypes: DtypePolicy = "canonical",
        state: dict[str, Any] | None = None,
        checkpoint: bool = False,
        service: str | None = None,
        shard_by_process: bool = True,
        progress: bool = False,
        max_pool_bytes: int | None = None,
        slots: int | None = None,
        pin_memory: bool = True,
        copy_threads: int | None = None,
    ) -> None:
        _check_int("prefetch", prefetch, 1, MAX_QUEUE_CAPACITY)
        _check_int("slots", slots, 1, MAX_SLOTS, optional=True)
        _check_int("max_pool_bytes", max_pool_bytes, 1, MAX_POOL_BYTES, optional=True)
        _check_int("copy_threads", copy_threads, 1, MAX_COPY_THREADS, optional=True)
        _check_int("batch_size", batch_size, 1, MAX_POOL_BYTES, optional=True)
        for name, flag in (
            ("pad_last", pad_last),
            ("checkpoint", checkpoint),
            ("shard_by_process", shard_by_process),
            ("progress", progress),
            ("pin_memory", pin_memory),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        _check_source(source)
        if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
            raise TypeError(f"sharding must be a jax.sharding.Sharding, got {sharding!r}")
        if sharding is not None and device is not None:
            raise ValueError(
                "pass device= or sharding=, not both: a sharding already says which devices "
                "hold the batch"
            )
        if batch_size is not None and not pad_last:
            raise ValueError("batch_size= only applies with pad_last=True")
        self._device = _resolve_device(device)
        if sharding is not None:
            self._device = next(iter(sharding.addressable_devices))
        tf_source = is_dataset(source)
        facts = pipeline_facts(source) if tf_source else None
        self._backend = _resolve_backend(backend, self._device, facts)
        x64 = bool(jax.config.read("jax_enable_x64"))
        check_policy(dtypes, x64)
        if checkpoint and facts is None:
            raise ValueError(
                "checkpoint=True applies to tf.data sources; other iterables resume exactly "
                "through their iterator's get_state()/set_state(), or by replaying"
            )
        if checkpoint and facts is not None:
            _check_checkpoint(facts)
        if service is not None:
            if not tf_source:
                raise TypeError("service= needs a tf.data.Dataset source")
            from .service import distribute

            source = distribute(source, service)
        unsharded = source
        limit = None
        if process_count() > 1:
            if service is None and shard_by_process:
                source = shard_source(source, tf_source)
            limit = agree_on_batches(_known_length(source, tf_source), pad_last=pad_last)
        saved = parse_state(state) if state is not None else None
        if saved is not None:
            _check_state_fits(saved, source, tf_source, limit)
        self._started = time.perf_counter()
        self._bytes = 0
        self._wait = 0.0
        self._done = False
        # The batch taken from the queue and not yet returned: a KeyboardInterrupt between
        # the two leaves it here, and the next call returns it (see __next__).
        self._inflight: list[Any] = []

        placement = Placement(self._device, sharding)
        numpy_items = self._backend in ("ring", "numpy", "copy")
        items, stateful, log = restore(source, saved, tf_source, numpy_items, checkpoint)
        if pad_last and batch_size is None and saved is not None:
            # The batch size the interrupted stream learned from its first batch: a resume that
            # starts at the short last batch must still pad it to full size.
            batch_size = saved.batch_size
        padder = Padder(batch_size) if pad_last else None
        first = saved.batches if saved is not None else 0
        self._first = first
        reader = Reader(
            items,
            first=first,
            stateful=stateful,
            log=log,
            limit=limit,
            padder=padder,
            template=_template(unsharded, tf_source, numpy_items) if limit is not None else None,
        )
        flatten = Flattener(x64=x64, dtypes=dtypes, padded=pad_last)
        self._backend_impl = make_backend(
            self._backend,
            core=_core,
            placement=placement,
            flatten=flatten,
            prefetch=prefetch,
            slots=slots or prefetch + 2,
            max_pool_bytes=max_pool_bytes,
            pin_memory=pin_memory,
            copy_threads=copy_threads or min(2, os.cpu_count() or 1),
        )
        self._padder = padder
        start = Position(first, encode_value(saved.source) if saved and saved.source else None)
        self._pipeline = _Pipeline(reader, self._backend_impl, start, x64)
        self._log = log
        total = _known_length(source, tf_source)
        self._progress = ProgressBar(total, self._backend) if progress else None
        self._finalizer = weakref.finalize(self, self._pipeline.close)
        self._finalizer.atexit = False  # _close_all_at_exit closes every stream at once
        _OPEN.add(self._pipeline)
        thread = threading.Thread(
            target=self._pipeline.produce,
            name=f"fastbridge-producer-{self._backend}",
            daemon=True,
        )
        self._pipeline.thread = thread
        thread.start()

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        pipeline = self._pipeline
        if pipeline.pid != os.getpid():
            raise RuntimeError(
                "this stream was created in another process (os.fork()); its producer thread "
                "and slots do not exist here: create a new stream in the child"
            )
        # Exactly once under Ctrl-C: the queue moves the next entry into ``inflight`` (never
        # taking it when a signal is pending), and the entry leaves ``inflight`` only in the
        # last statements before ``return``, which call nothing, so no KeyboardInterrupt can
        # arrive between them. An interrupt anywhere earlier leaves the entry in ``inflight``
        # and the next call delivers it: nothing is lost, nothing is delivered twice.
        inflight = self._inflight
        if not inflight:
            started = time.perf_counter()
            try:
                pipeline.backend.queue.pop_into(inflight)
            except StreamClosedError:
                self._done = True
                raise StopIteration from None
            finally:
                self._wait += time.perf_counter() - started
        kind, payload, nbytes, position = inflight[0]
        if kind != BATCH:
            del inflight[0]
            self.close()
            if kind == END:
                raise StopIteration
            raise payload
        try:
            batch = pipeline.backend.deliver(payload)
        except Exception:  # copy's conversion failed (e.g. a leaf that does not fit): the end
            del inflight[0]
            self.close()
            raise
        if self._progress is not None:
            self._progress.update(self._stats(delivered=position.batches))
        # Commit: plain stores only from here to ``return``.
        pipeline.cursor = position
        self._bytes += nbytes
        del inflight[0]
        return batch  # type: ignore[no-any-return]

    # -- checkpointing -----------------------------------------------------------------------
    def state(self, *, timeout: float = STATE_TIMEOUT) -> dict[str, Any]:
        """A JSON-serializable position: resume with ``stream(source, state=...)`` to get
        exactly the batches after the last one this stream delivered.

        Safe from any thread. Returns within about ``timeout`` seconds: with ``checkpoint=True``
        it waits at most that long for a source read in progress, then saves the last
        iterator state it has (resuming then re-reads the batches after it); after ``close()``
        it does not wait at all.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        pipeline = self._pipeline
        fields: dict[str, Any] = {}
        if self._log is not None:
            wait = 0.0 if pipeline.closed.is_set() else float(timeout)
            cursor, fields = self._log.state(lambda: pipeline.cursor, wait)
        else:
            cursor = pipeline.cursor  # one read: batches and source state always agree
        source = cursor.source
        if isinstance(source, Unsaveable):
            raise TypeError(f"state() cannot save this stream's position: {source.message}")
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "batches": cursor.batches,
            "source": source,
            **fields,
        }
        padder = self._padder
        if padder is not None and padder.full is not None:
            state["batch_size"] = padder.full
        return state

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the producer (within a second, even if it waits for a free slot) and free every
        slot that no batch holds. Idempotent; batches already delivered stay valid."""
        self._done = True
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._inflight.clear()
        self._finalizer()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self._backend

    @property
    def device(self) -> jax.Device:
        return self._device

    @property
    def stats(self) -> StreamStats:
        return self._stats(self._pipeline.cursor.batches)

    def _stats(self, delivered: int) -> StreamStats:
        backend = self._backend_impl
        pool = backend.pool_stats()
        slots = pool.get("slots", 0)
        pool_bytes = pool.get("pool_bytes", 0)
        copied = self._bytes if backend.consumer_copies() else pool.get("bytes_copied", 0)
        pipeline = self._pipeline
        return StreamStats(
            backend=self._backend,
            batches=delivered - self._first,
            bytes=self._bytes,
            wait_seconds=self._wait,
            producer_busy_seconds=max(
                0.0, pipeline.source_seconds + pipeline.convert_seconds - backend.acquire_seconds
            ),
            bytes_copied=copied,
            pinned=pool_bytes > 0
            and (pool.get("locked_bytes", 0) >= pool_bytes or pool.get("cuda_slots", 0) >= slots),
            slots=slots,
            pool_bytes=pool_bytes,
            pool_grown=pool.get("pool_grown", 0),
            elapsed_seconds=time.perf_counter() - self._started,
        )

    def summary(self) -> str:
        """One paragraph on throughput and whether the job is input-bound."""
        return summary(self.stats)

    def __repr__(self) -> str:
        state = "closed" if self._done else "open"
        return f"<fastbridge.Stream backend={self._backend!r} device={self._device} {state}>"


def _check_int(name: str, value: Any, low: int, high: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    allowed = f"an int from {low} to {high}" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_source(source: Any) -> None:
    if isinstance(source, Mapping):
        raise TypeError(
            f"source is a {type(source).__name__}: iterating a mapping yields its keys, not "
            "batches. To stream batches from arrays, make a dataset of them, e.g. "
            "fastbridge.from_numpy(arrays).batch(256), or pass a list of batch dicts"
        )
    if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
        raise TypeError(
            f"source must be a tf.data.Dataset or an iterable of NumPy pytrees, "
            f"got {type(source).__name__}"
        )


def _known_length(source: Any, tf_source: bool) -> int | None:
    if tf_source:
        return cardinality(source)
    try:
        return len(source)
    except TypeError:
        return None


def _check_state_fits(saved: SavedState, source: Any, tf_source: bool, limit: int | None) -> None:
    """Refuse a state that cannot belong to this source, before anything is read."""
    if tf_source and saved.source is not None:
        raise ValueError(
            "state['source'] holds a source iterator's own state (a Grain-style source), but "
            "this source is a tf.data.Dataset"
        )
    if not tf_source and saved.tf_iterator is not None:
        raise ValueError(
            "state['tf_iterator'] holds a tf.data iterator state, but this source is not a "
            "tf.data.Dataset"
        )
    total = limit if limit is not None else _known_length(source, tf_source)
    if total is not None and saved.batches > total:
        raise ValueError(
            f"state['batches'] = {saved.batches}, but this source has {total} batches: the "
            "state was saved from another source"
        )


def _template(source: Any, tf_source: bool, numpy_items: bool) -> Any:
    """A function giving the source's first batch: the shape of padding for a process that
    has no batch of its own to take it from (see ``_multihost``)."""

    def first() -> Any:
        if tf_source:
            one = source.take(1)
            return next(iter(one.as_numpy_iterator() if numpy_items else one), None)
        return next(iter(source), None)

    return first


def stream(
    source: Iterable[Any],
    *,
    backend: Backend = "auto",
    prefetch: int = 4,
    device: jax.Device | str | None = None,
    sharding: jax.sharding.Sharding | None = None,
    pad_last: bool = False,
    batch_size: int | None = None,
    dtypes: DtypePolicy = "canonical",
    state: dict[str, Any] | None = None,
    checkpoint: bool = False,
    service: str | None = None,
    shard_by_process: bool = True,
    progress: bool = False,
    max_pool_bytes: int | None = None,
    slots: int | None = None,
    pin_memory: bool = True,
    copy_threads: int | None = None,
) -> Stream[Any]:
    """Stream batches from ``source`` into JAX, prepared in the background.

    Args:
      source: a ``tf.data.Dataset`` (read through ``as_numpy_iterator()``, or its tensors for
        ``direct``) or any iterable of pytrees of NumPy arrays.
      backend: ``"auto"`` (fastest correct path: ``direct`` for a ``tf.data.Dataset`` on CPU
        that runs no Python code, ``ring`` otherwise), ``"ring"`` (Rust slots), ``"numpy"``
        (the same ring in NumPy), ``"direct"`` (the source's buffers, no copy: only for sources
        that never refill an array they yielded), ``"copy"`` (``jnp.array`` on the consumer,
        the baseline).
      prefetch: batches prepared ahead of the consumer (>= 1).
      device: target ``jax.Device`` or platform name; default ``jax.devices()[0]``.
      sharding: a ``jax.sharding.Sharding`` (e.g. ``NamedSharding(mesh, P("data"))``): batches
        become global arrays; on CPU each shard of the batch axis aliases its own slot block.
      pad_last: pad a short last batch to full size and yield ``(batch, mask)`` pairs, where
        ``mask`` is a bool array ``[batch_size]`` (``False`` on padding rows), for every batch,
        so a jitted step never recompiles.
      batch_size: the full batch size for ``pad_last`` (default: the first batch's rows).
      dtypes: ``"canonical"`` (JAX's dtypes: 64-bit leaves narrowed, checked, when x64 is off),
        ``"keep"`` (64-bit leaves stay 64-bit; needs x64), or ``{leaf path: dtype}`` such as
        ``{"['image']": "float32"}``, converted on the producer thread.
      state: a ``Stream.state()`` to resume from.
      checkpoint: for tf.data sources, make ``state()`` save the dataset iterator's own state
        (shuffle buffers and random state included) and the batches read ahead, so resuming
        re-reads nothing and is exact even for an unseeded shuffle, up to the end of the
        current epoch: tf.data does not save the seeds an unseeded shuffle under ``repeat()``
        draws for later epochs, nor the state of stateful random ops (a warning says so when a
        pipeline has them; ``from_generator`` pipelines are refused). Costs holding up to
        ``prefetch + 2`` source batches until they are delivered, and one save of the
        iterator before the first read. Without it tf.data streams resume by replaying
        (``skip``), which is exact for deterministic pipelines.
      service: a tf.data service dispatcher (``"grpc://host:port"``): preprocessing runs on
        its workers (``fastbridge.service.distribute``).
      shard_by_process: with several JAX processes (``jax.distributed``), read only this
        process's share of the source and build global arrays across processes (see
        ``fastbridge._multihost``); ``False`` when the source is already split per process.
        Either way all processes yield the same number of batches.
      progress: show a progress bar with batches/s and input-wait % (needs tqdm).
      max_pool_bytes: cap on slot memory; growing past it raises ``PoolExhaustedError``.
      slots: slots allocated before the pool counts as grown (default ``prefetch + 2``).
      pin_memory: lock slot pages in RAM (and register them with CUDA on GPUs) when allowed.
      copy_threads: threads that fill one large slot (default ``min(2, cpu_count)``).

    Every batch is delivered exactly once, in order, across ``state()`` and resume, Ctrl-C
    (a ``KeyboardInterrupt`` raised inside ``next()`` leaves the batch for the next call)
    and source errors (a resume re-reads the batch whose read failed).

    Example:
      >>> import numpy as np
      >>> from fastbridge import stream
      >>> data = [{"x": np.full((2, 3), i, np.float32)} for i in range(3)]
      >>> with stream(data, backend="numpy", prefetch=2) as batches:
      ...     print([float(b["x"].sum()) for b in batches])
      [0.0, 6.0, 12.0]
    """
    return Stream(
        source,
        backend=backend,
        prefetch=prefetch,
        device=device,
        sharding=sharding,
        pad_last=pad_last,
        batch_size=batch_size,
        dtypes=dtypes,
        state=state,
        checkpoint=checkpoint,
        service=service,
        shard_by_process=shard_by_process,
        progress=progress,
        max_pool_bytes=max_pool_bytes,
        slots=slots,
        pin_memory=pin_memory,
        copy_threads=copy_threads,
    )
