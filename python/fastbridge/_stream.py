"""``stream()``: batches from a host-side source delivered as pytrees of ``jax.Array``.

A :class:`Stream` composes the pieces, each in its own module, in this order: the validated
options (``_options``), the device, the :class:`~fastbridge._sources.Source` (the one place
that knows what kind of source it reads), the backend chosen for both (``_backends``), and a
:class:`~fastbridge._pipeline.Pipeline`: the producer run, made of the source's
:class:`~fastbridge._position.Reader` (the only code that reads the source, and the one owner
of positions) and the backend's engine (its queue, converter and slots).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Generic, NoReturn, TypeVar

import jax

from ._backends import choose, make_engine
from ._leaves import Flattener
from ._multihost import agree_on_batches, process_count, process_index
from ._native import available as core_available
from ._options import StreamOptions, takes_options, x64_enabled
from ._padding import Padder
from ._pipeline import OPEN, Pipeline
from ._placement import Placement
from ._position import BATCH, END
from ._progress import ProgressBar, StreamStats, summary
from ._put import release_host_arrays
from ._sources import check_source, make_source
from ._state import STATE_VERSION, SavedState, Unsaveable
from ._state import parse as parse_state
from .errors import StateTimeoutError, StreamClosedError

T = TypeVar("T")

STATE_TIMEOUT = 5.0
"""Default bound, in seconds, on how long ``Stream.state()`` waits for a source read."""

__all__ = ["STATE_TIMEOUT", "Stream", "StreamStats", "core_available", "stream"]


def _resolve_device(options: StreamOptions) -> jax.Device:
    if options.sharding is not None:
        return next(iter(options.sharding.addressable_devices))
    device = options.device
    if device is None:
        return jax.devices()[0]
    if isinstance(device, str):
        try:
            return jax.devices(device)[0]
        except RuntimeError as error:
            raise ValueError(f"device={device!r}: JAX has no such platform ({error})") from None
    return device


class Stream(Iterator[T], Generic[T]):
    """An iterator of batches (pytrees of ``jax.Array``) and a context manager.

    Made by :func:`stream`, or as ``Stream(source, StreamOptions(...))``. ``close()`` (or
    leaving the ``with`` block) stops the producer and frees every slot that no batch still
    holds; batches you kept stay valid. ``get_state()``/``set_state()`` save and restore the
    position the way Grain's iterators do (:class:`fastbridge.Checkpointable`).
    """

    def __init__(self, source: Iterable[Any], options: StreamOptions | None = None) -> None:
        options = options if options is not None else StreamOptions()
        if not isinstance(options, StreamOptions):
            raise TypeError(f"options must be a StreamOptions, got {type(options).__name__}")
        self._options = options
        check_source(source)  # before the device: a wrong source is the first thing to say
        self._device = _resolve_device(options)
        self._source = make_source(source, options, self._device)
        self._backend_name = choose(options.backend, self._device, self._source.facts)
        self._limit: int | None = None
        if process_count() > 1:
            if options.service is None and options.shard_by_process:
                self._source = self._source.shard(process_count(), process_index())
            self._limit = agree_on_batches(self._source.length(), pad_last=options.pad_last)
        self._x64 = x64_enabled()
        self._placement = Placement(self._device, options.sharding)
        self._started = time.perf_counter()
        self._bytes = 0
        self._wait = 0.0
        self._progress = None
        if options.progress:
            self._progress = ProgressBar(self._source.length(), self._backend_name)
        self._closed = False  # by close(): only then does set_state() refuse
        self._interrupted: str | None = None  # why a set_state() left no producer running
        self._delivered_before = 0  # batches delivered by the runs before the current one
        self._inflight: list[Any] = []
        self._done = False
        self._pipeline = self._build(self._parse(options.state))
        self._start()

    def _parse(self, state: Any) -> SavedState | None:
        if state is None:
            return None
        saved = parse_state(state)
        self._source.check_state(saved, self._limit)
        return saved

    def _build(self, saved: SavedState | None) -> Pipeline:
        """A producer run from ``saved`` (``None``: the beginning), not started yet. Opens the
        source there, so a state the source refuses raises here (``ValueError``)."""
        options = self._options
        flatten = Flattener(x64=self._x64, dtypes=options.dtypes, padded=options.pad_last)
        engine = make_engine(self._backend_name, self._placement, flatten, options)
        padder = None
        if options.pad_last:
            # A resume that starts at the short last batch must still pad it to full size: the
            # batch size the interrupted stream learned from its first batch, if none was given.
            batch_size = options.batch_size
            if batch_size is None and saved is not None:
                batch_size = saved.batch_size
            padder = Padder(batch_size)
        try:
            reader = self._source.open(
                saved, numpy_items=engine.numpy_items, limit=self._limit, padder=padder
            )
        except BaseException:
            engine.close()
            raise
        return Pipeline(reader, engine, self._x64)

    def _start(self) -> None:
        """Start the producer of ``self._pipeline`` and make the stream's finalizer close it."""
        pipeline = self._pipeline
        # An abandoned stream is closed without waiting for its producer: the finalizer may run
        # inside a garbage collection, and every other thread's gc.collect() does nothing
        # until that collection ends. close() and the source's end wait (_finish).
        self._finalizer = weakref.finalize(self, pipeline.close, 0)
        self._finalizer.atexit = False  # _close_all_at_exit closes every stream at once
        OPEN.add(pipeline)
        thread = threading.Thread(
            target=pipeline.produce,
            name=f"fastbridge-producer-{self._backend_name}",
            daemon=True,
        )
        pipeline.thread = thread
        thread.start()

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        while True:
            if self._done:
                self._raise_end()
            pipeline = self._pipeline
            if pipeline.pid != os.getpid():
                raise RuntimeError(
                    "this stream was created in another process (os.fork()); its producer "
                    "thread and slots do not exist here: create a new stream in the child"
                )
            # Exactly once under Ctrl-C: the queue moves the next entry into ``inflight``
            # (never taking it when a signal is pending), and the entry leaves ``inflight``
            # only in the last statements before ``return``, which call nothing, so no
            # KeyboardInterrupt can arrive between them. An interrupt anywhere earlier leaves
            # the entry in ``inflight`` and the next call delivers it: nothing is lost,
            # nothing is delivered twice.
            inflight = self._inflight
            if inflight:
                break
            # Batches dropped since the last call give their slots back before this one waits
            # (JAX defers releasing the host memory its arrays aliased).
            release_host_arrays()
            started = time.perf_counter()
            try:
                pipeline.engine.queue.pop_into(inflight)
                break
            except StreamClosedError:
                if self._pipeline is not pipeline and not self._closed:
                    continue  # set_state() from another thread started a new run: read it
                self._done = True
                self._raise_end()
            finally:
                self._wait += time.perf_counter() - started
        kind, payload, nbytes, position = inflight[0]
        if kind != BATCH:
            del inflight[0]
            self._finish()
            if kind == END:
                raise StopIteration
            raise payload
        try:
            batch = pipeline.engine.deliver(payload)
        except Exception:  # copy's conversion failed (e.g. a leaf that does not fit): the end
            del inflight[0]
            self._finish()
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
        pipeline = self._pipeline  # one read: a set_state() meanwhile swaps the whole run
        fields: dict[str, Any] = {}
        if pipeline.log is not None:
            wait = 0.0 if pipeline.closed.is_set() else float(timeout)
            cursor, fields = pipeline.log.state(lambda: pipeline.cursor, wait)
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
        padder = pipeline.padder
        if padder is not None and padder.full is not None:
            state["batch_size"] = padder.full
        return state

    def get_state(self) -> dict[str, Any]:
        """``state()`` with its default timeout: the Grain-style spelling."""
        return self.state()

    def set_state(self, state: dict[str, Any], /) -> None:
        """Go on from ``state`` (a ``state()`` of a stream over the same source and options).

        The batches read ahead are dropped and the producer restarts at ``state``; batches
        already delivered stay valid. Call it between batches, from any thread (a ``next()``
        waiting meanwhile goes on with the new position). A state whose fields are wrong
        raises ``ValueError`` and leaves the stream as it was; so does one that tf.data
        refuses, since a tf.data source is reopened before anything is stopped. Another
        source is iterated again only once the producer has let go of it (``StateTimeoutError``
        after ``STATE_TIMEOUT`` seconds in a read); a one-shot iterator without
        ``get_state()``/``set_state()`` cannot go back, and is refused. After ``close()``,
        make a new stream with ``stream(source, state=...)``.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict made by Stream.state(), got {state!r}")
        if self._closed:
            raise StreamClosedError(
                "set_state() on a closed stream: make a new one with stream(source, state=...)"
            )
        if self._pipeline.pid != os.getpid():
            raise RuntimeError("this stream was created in another process (os.fork())")
        saved = self._parse(state)
        self._source.check_rewind()
        old = self._pipeline
        try:
            if self._source.reopens_alongside:
                # A new iterator of the dataset: restored while the old run goes on, so a
                # state tf.data refuses leaves this stream as it was.
                new = self._build(saved)
                self._finalizer.detach()
                old.close()
            else:
                # The same source object: the old producer must let go of it first.
                self._finalizer.detach()
                old.close(join=STATE_TIMEOUT)
                if not old.stopped():
                    raise StateTimeoutError(
                        f"set_state(): the source is still inside a read after "
                        f"{STATE_TIMEOUT} s, and reading it again meanwhile would interleave "
                        "the two; this stream is closed: resume with stream(source, state=...)"
                    )
                new = self._build(saved)
        except BaseException as error:
            if self._pipeline is old and old.closed.is_set():
                # Interrupted (or refused) after the old run stopped: nothing runs any more.
                self._interrupted = (
                    f"set_state() did not finish ({type(error).__name__}): the stream has no "
                    "position; call set_state() again, or make a new stream"
                )
                self._done = True
            raise
        self._delivered_before += old.cursor.batches - old.first
        self._inflight = []
        self._pipeline = new
        self._interrupted = None
        self._done = False
        self._start()

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the producer (within a second, even if it waits for a free slot) and free every
        slot that no batch holds. Idempotent; batches already delivered stay valid."""
        self._closed = True
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._finish()
        release_host_arrays()  # slots of batches dropped before close() come back now

    def _finish(self) -> None:
        """The end of this run (the source's end, an error, or close()): ``set_state()`` may
        still start another unless the stream was closed."""
        self._done = True
        self._inflight.clear()
        if self._finalizer.detach() is not None:
            self._pipeline.close()

    def _raise_end(self) -> NoReturn:
        if self._interrupted is not None:
            raise StreamClosedError(self._interrupted)
        raise StopIteration

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self._backend_name

    @property
    def device(self) -> jax.Device:
        return self._device

    @property
    def stats(self) -> StreamStats:
        return self._stats(self._pipeline.cursor.batches)

    def _stats(self, delivered: int) -> StreamStats:
        # The stream owns what the consumer saw, the run its producer's time, the engine its
        # slots and copies.
        pipeline = self._pipeline
        return StreamStats(
            backend=self._backend_name,
            batches=self._delivered_before + delivered - pipeline.first,
            bytes=self._bytes,
            wait_seconds=self._wait,
            producer_busy_seconds=pipeline.busy_seconds,
            elapsed_seconds=time.perf_counter() - self._started,
            **pipeline.engine.stats(self._bytes),
        )

    def summary(self) -> str:
        """One paragraph on throughput and whether the job is input-bound."""
        return summary(self.stats)

    def __repr__(self) -> str:
        state = "closed" if self._done else "open"
        return f"<fastbridge.Stream backend={self._backend_name!r} device={self._device} {state}>"


@takes_options(StreamOptions)
def stream(source: Iterable[Any], options: StreamOptions) -> Stream[Any]:
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
      copy_threads: threads that fill one large slot (default ``min(2, cpu_count)`` on CPU,
        every core for an accelerator).

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
    return Stream(source, options)
