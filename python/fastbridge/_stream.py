"""``stream()``: batches from a host-side source delivered as pytrees of ``jax.Array``."""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Literal, TypeVar

import jax

from ._backends import CopyConverter, DirectConverter, Placement, SlotConverter
from ._leaves import DtypePolicy, Flattener, check_policy
from ._multihost import agree_on_batches, process_count, shard_source
from ._numpy_ring import NumpyRing
from ._padding import Padder
from ._progress import ProgressBar, summary
from ._state import (
    STATE_VERSION,
    encode_items,
    is_tf_dataset,
    restore,
    save_tf_iterator,
    validate,
)
from .errors import SourceError, StreamClosedError

try:
    from . import _core
except ImportError:  # the extension is not built: the NumPy ring stands in for it
    _core = None  # type: ignore[assignment]

Backend = Literal["auto", "ring", "numpy", "direct", "copy"]
BACKENDS: tuple[str, ...] = ("auto", "ring", "numpy", "direct", "copy")
T = TypeVar("T")

_BATCH, _ERROR, _END = 0, 1, 2


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


def _resolve_backend(backend: str, device: jax.Device, *, tf_source: bool) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if backend == "auto":
        # On CPU, TensorFlow's own buffers need no copy and any extra copy competes with the
        # step for cores and memory bandwidth (benches/RESULTS.md). TensorFlow never reuses a
        # buffer that is still referenced; any other iterable may refill the arrays it yielded
        # (a preallocated batch buffer), so batches the consumer holds would change: those get
        # their own copy in slots. On accelerators, pinned slots feed asynchronous transfers.
        if device.platform == "cpu" and tf_source:
            return "direct"
        return "ring" if _core is not None else "numpy"
    if backend == "ring" and _core is None:
        raise ImportError(
            "backend='ring' needs the Rust extension fastbridge._core, which is not built; "
            "install a fastbridge wheel, or use backend='numpy'"
        )
    return backend


class _Pipeline:
    """State shared by the consumer and the producer thread. The thread references this, not
    the ``Stream``, so an abandoned stream can be garbage-collected (which closes it)."""

    def __init__(
        self,
        backend: str,
        ring: Any,
        converter: Any,
        iterator: Iterator[Any],
        *,
        state_source: Any = None,
        first_index: int = 0,
        padder: Padder | None = None,
        limit: int | None = None,
        x64: bool = False,
    ) -> None:
        self.padder = padder
        # Batches to yield in all (multi-process streams agree on it); past the source's end,
        # padded streams fill up with all-padding batches.
        self.limit = limit
        self.last_item: Any = None
        # checkpoint=True: batches read from the source and not yet delivered, and a lock the
        # producer holds while it reads, so that state() can stop it between two reads.
        self.read_lock = threading.Lock()
        self.unconsumed: collections.deque[Any] | None = None
        self.backend = backend
        self.x64 = x64
        self.ring = ring
        self.converter = converter
        self.iterator = iterator
        # The iterator whose get_state() describes the position (inside any padding wrapper).
        self.state_source = state_source if hasattr(state_source, "get_state") else None
        self.index = first_index
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self.source_seconds = 0.0
        self.convert_seconds = 0.0
        self.pid = os.getpid()
        self.final_ring_stats: dict[str, Any] | None = None

    def step(self) -> tuple[int, Any]:
        """Read and prepare one batch: ``(_BATCH, (batch, nbytes, source_state))``,
        ``(_END, None)`` or ``(_ERROR, exception)``. Errors keep their position."""
        index = self.index
        if self.limit is not None and index >= self.limit:
            return (_END, None)
        started = time.perf_counter()
        padded = False
        try:
            with self.read_lock:
                item = next(self.iterator)
                if self.unconsumed is not None:
                    self.unconsumed.append(item)
        except StopIteration:
            if self.limit is None or self.padder is None or self.last_item is None:
                return (_END, None)
            item, padded = self.padder.empty_like(self.last_item), True
        except Exception as error:
            failure = SourceError(
                f"the source raised {type(error).__name__} at batch {index}: {error}", index
            )
            failure.__cause__ = error
            return (_ERROR, failure)
        source_state = self.state_source.get_state() if self.state_source is not None else None
        read = time.perf_counter()
        self.source_seconds += read - started
        if self.limit is not None and not padded:
            self.last_item = item
        if self.padder is not None and not padded:
            item = self.padder(item)
        batch, nbytes = self.converter(item, index)
        self.convert_seconds += time.perf_counter() - read
        self.index += 1
        return (_BATCH, (batch, nbytes, source_state, not padded))

    def produce(self) -> None:
        # JAX's x64 switch can be thread-local (``with jax.enable_x64():``); the producer
        # imports arrays, so it must see the consumer's setting from when the stream was made.
        with jax.enable_x64(self.x64):
            try:
                while not self.closed.is_set():
                    entry = self.step()
                    if not self.ring.publish(entry) or entry[0] != _BATCH:
                        return
                    del entry
            except StreamClosedError:
                return
            except BaseException as error:  # delivered in order, after every good batch
                if not self.closed.is_set():
                    self.ring.publish((_ERROR, error))

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if os.getpid() != self.pid:
            # A forked child: the producer thread and any lock it held stayed in the parent.
            return
        if self.ring is not None:
            # Stats after the end describe the pool as it was, not the freed one.
            self.final_ring_stats = self.ring.stats()
            self.ring.close()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            # The producer may be inside the source's own next() (e.g. a slow tf.data map);
            # it notices the close as soon as that returns. Do not hang the caller on it.
            thread.join(timeout=1.0)


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
        _check_int("prefetch", prefetch, minimum=1)
        _check_int("slots", slots, minimum=1, optional=True)
        _check_int("max_pool_bytes", max_pool_bytes, minimum=1, optional=True)
        _check_int("copy_threads", copy_threads, minimum=1, optional=True)
        _check_int("batch_size", batch_size, minimum=1, optional=True)
        if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
            raise TypeError(
                f"source must be a tf.data.Dataset or an iterable of NumPy pytrees, "
                f"got {type(source).__name__}"
            )
        if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
            raise TypeError(f"sharding must be a jax.sharding.Sharding, got {sharding!r}")
        if batch_size is not None and not pad_last:
            raise ValueError("batch_size= only applies with pad_last=True")
        self._device = _resolve_device(device)
        if sharding is not None:
            self._device = next(iter(sharding.addressable_devices))
        tf_source = is_tf_dataset(source)
        self._backend = _resolve_backend(backend, self._device, tf_source=tf_source)
        x64 = bool(jax.config.read("jax_enable_x64"))
        check_policy(dtypes, x64)
        if service is not None:
            if not tf_source:
                raise TypeError("service= needs a tf.data.Dataset source")
            from .service import distribute

            source = distribute(source, service)
        limit = None
        if process_count() > 1:
            if service is None and shard_by_process:
                source = shard_source(source, tf_source)
            limit = agree_on_batches(_known_length(source, tf_source), pad_last=pad_last)
        self._base_state = validate(state) if state is not None else None
        self._started = time.perf_counter()
        self._batches = 0
        self._bytes = 0
        self._wait = 0.0
        self._done = False
        self._source_state: Any = None

        placement = Placement(self._device, sharding)
        wants_numpy = self._backend in ("ring", "numpy", "copy")
        if checkpoint and not tf_source:
            raise ValueError(
                "checkpoint=True applies to tf.data sources; other iterables resume exactly "
                "through their iterator's get_state()/set_state(), or by replaying"
            )
        iterator, state_source = restore(source, self._base_state, tf_source, wants_numpy)
        self._tf_iterator = state_source
        if self._base_state is not None:
            self._source_state = self._base_state.get("source")
        elif hasattr(state_source, "get_state"):
            self._source_state = state_source.get_state()
        if pad_last and batch_size is None and self._base_state is not None:
            # The batch size the interrupted stream learned from its first batch: a resume that
            # starts at the short last batch must still pad it to full size.
            batch_size = self._base_state.get("batch_size")
            _check_int("state['batch_size']", batch_size, minimum=1, optional=True)
        padder = Padder(batch_size) if pad_last else None
        flatten = Flattener(x64=x64, dtypes=dtypes, padded=pad_last)
        total = _known_length(source, tf_source)
        self._progress = ProgressBar(total, self._backend) if progress else None

        first = self._base_state["batches"] if self._base_state else 0
        if self._backend == "copy":
            converter: Any = CopyConverter(placement, flatten)
            self._pipeline = _Pipeline(
                "copy", None, converter, iterator,
                state_source=state_source, first_index=first, padder=padder, limit=limit, x64=x64,
            )  # fmt: skip
            if checkpoint:
                self._pipeline.unconsumed = collections.deque()
            self._finalizer = weakref.finalize(self, self._pipeline.close)
            return

        threads = copy_threads or min(2, os.cpu_count() or 1)
        ring_args = dict(
            prefetch=prefetch,
            slots=slots or prefetch + 2,
            max_bytes=max_pool_bytes,
            lock=pin_memory,
            cuda=pin_memory and self._device.platform == "gpu",
            copy_threads=threads,
        )
        if self._backend in ("ring", "numpy"):
            ring: Any = (
                _core.Ring(**ring_args) if self._backend == "ring" else NumpyRing(**ring_args)
            )  # type: ignore[arg-type]
            converter = SlotConverter(ring, placement, flatten)
        elif _core is not None:
            # direct: the core's lock-free ready queue, and slots only for leaves that must be
            # narrowed (allocated on first use, so a batch that aliases its source takes none).
            ring = _core.Ring(**ring_args)  # type: ignore[arg-type]
            narrowing = SlotConverter(ring, placement, flatten)  # used for its slots only
            converter = DirectConverter(placement, flatten, slots=narrowing)
        else:  # direct without the core: NumPy narrows into fresh memory
            ring = NumpyRing(prefetch=prefetch, slots=1)
            converter = DirectConverter(placement, flatten)
        self._pipeline = _Pipeline(
            self._backend, ring, converter, iterator,
            state_source=state_source, first_index=first, padder=padder, limit=limit, x64=x64,
        )  # fmt: skip
        if checkpoint:
            self._pipeline.unconsumed = collections.deque()
        self._finalizer = weakref.finalize(self, self._pipeline.close)
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
        if self._pipeline.pid != os.getpid():
            raise RuntimeError(
                "this stream was created in another process (os.fork()); its producer thread "
                "and slots do not exist here: create a new stream in the child"
            )
        started = time.perf_counter()
        try:
            if self._pipeline.ring is None:  # copy: prepared right here, on the consumer
                try:
                    with jax.enable_x64(self._pipeline.x64):  # as the producer thread does
                        entry = self._pipeline.step()
                except Exception as error:  # e.g. a leaf that does not fit: the stream ends
                    entry = (_ERROR, error)
            else:
                entry = self._pipeline.ring.pop()
        except StreamClosedError:
            self._done = True
            raise StopIteration from None
        finally:
            self._wait += time.perf_counter() - started
        kind, payload = entry
        if kind == _BATCH:
            batch, nbytes, source_state, from_source = payload
            if from_source and self._pipeline.unconsumed is not None:
                self._pipeline.unconsumed.popleft()
            self._batches += 1
            self._bytes += nbytes
            self._source_state = source_state
            if self._progress is not None:
                self._progress.update(self.stats)
            return batch  # type: ignore[no-any-return]
        self.close()
        if kind == _END:
            raise StopIteration
        raise payload

    # -- checkpointing -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """A JSON-serializable position: resume with ``stream(source, state=...)`` to get
        exactly the batches after the last one this stream delivered (see ``_state``)."""
        before = self._base_state["batches"] if self._base_state else 0
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "batches": before + self._batches,
            "source": self._source_state,
        }
        pipeline = self._pipeline
        if pipeline.padder is not None and pipeline.padder.full is not None:
            state["batch_size"] = pipeline.padder.full
        if pipeline.unconsumed is not None:
            # Stop the producer between two reads: the iterator's state plus the batches it
            # read ahead are then exactly "after the last delivered batch".
            with pipeline.read_lock:
                state["tf_iterator"] = save_tf_iterator(self._tf_iterator)
                state["pending"] = encode_items(list(pipeline.unconsumed))
        return state

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the producer (within a second, even if it waits for a free slot) and free every
        slot that no batch holds. Idempotent; batches already delivered stay valid."""
        self._done = True
        if self._progress is not None:
            self._progress.close()
            self._progress = None
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
        ring = self._pipeline.ring
        # direct uses the core's slots only for narrowed leaves; its stats say how many.
        slot_backend = self._backend in ("ring", "numpy") or (
            self._backend == "direct" and getattr(self._pipeline.converter, "slots", None)
        )
        ring_stats: dict[str, Any] = {}
        if slot_backend:
            ring_stats = self._pipeline.final_ring_stats or ring.stats()
        acquire_wait = getattr(self._pipeline.converter, "acquire_seconds", 0.0)
        slots = ring_stats.get("slots", 0)
        pool_bytes = ring_stats.get("pool_bytes", 0)
        copied = ring_stats.get("bytes_copied", 0)
        if self._backend == "copy":
            copied = self._bytes
        return StreamStats(
            backend=self._backend,
            batches=self._batches,
            bytes=self._bytes,
            wait_seconds=self._wait,
            producer_busy_seconds=max(
                0.0, self._pipeline.source_seconds + self._pipeline.convert_seconds - acquire_wait
            ),
            bytes_copied=copied,
            pinned=pool_bytes > 0
            and (
                ring_stats.get("locked_bytes", 0) >= pool_bytes
                or ring_stats.get("cuda_slots", 0) >= slots
            ),
            slots=slots,
            pool_bytes=pool_bytes,
            pool_grown=ring_stats.get("pool_grown", 0),
            elapsed_seconds=time.perf_counter() - self._started,
        )

    def summary(self) -> str:
        """One paragraph on throughput and whether the job is input-bound."""
        return summary(self.stats)

    def __repr__(self) -> str:
        state = "closed" if self._done else "open"
        return f"<fastbridge.Stream backend={self._backend!r} device={self._device} {state}>"


def _check_int(name: str, value: Any, *, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an int >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _known_length(source: Any, tf_source: bool) -> int | None:
    if tf_source:
        n = int(source.cardinality())
        return n if n >= 0 else None
    try:
        return len(source)
    except TypeError:
        return None


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
      backend: ``"auto"`` (fastest correct path: ``direct`` for a ``tf.data.Dataset`` on CPU,
        ``ring`` otherwise), ``"ring"`` (Rust slots), ``"numpy"`` (the same ring in NumPy),
        ``"direct"`` (the source's buffers, no copy: only for sources that never refill an
        array they yielded), ``"copy"`` (``jnp.array``, baseline).
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
        and the batches read ahead, so resuming is exact for any pipeline (unseeded shuffles
        included) and re-reads nothing; costs holding up to ``prefetch + 1`` source batches
        until they are delivered. Without it tf.data streams resume by replaying (``skip``).
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
