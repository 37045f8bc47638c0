"""``stream()``: batches from a host-side source delivered as pytrees of ``jax.Array``."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Literal, TypeVar

import jax

from ._backends import CopyConverter, DirectConverter, SlotConverter
from ._numpy_ring import NumpyRing
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
    """Bytes copied into ring slots (0 for ``direct``; counted on the consumer for ``copy``)."""
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


def _is_tf_dataset(source: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(source, tf.data.Dataset)


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


def _resolve_backend(backend: str, device: jax.Device) -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if backend == "auto":
        # On CPU, TensorFlow's own buffers need no copy and any extra copy competes with the
        # step for cores and memory bandwidth (benches/RESULTS.md); on accelerators, pinned
        # slots feed asynchronous transfers.
        if device.platform == "cpu":
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

    def __init__(self, backend: str, ring: Any, converter: Any, *, x64: bool = False) -> None:
        self.backend = backend
        self.x64 = x64
        self.ring = ring
        self.converter = converter
        self.closed = threading.Event()
        self.thread: threading.Thread | None = None
        self.source_seconds = 0.0
        self.convert_seconds = 0.0
        self.pid = os.getpid()
        self.final_ring_stats: dict[str, Any] | None = None

    def produce(self, iterator: Iterator[Any]) -> None:
        # JAX's x64 switch can be thread-local (``with jax.enable_x64():``); the producer
        # imports arrays, so it must see the consumer's setting from when the stream was made.
        with jax.enable_x64(self.x64):
            self._produce(iterator)

    def _produce(self, iterator: Iterator[Any]) -> None:
        ring, convert = self.ring, self.converter
        index = 0
        try:
            while not self.closed.is_set():
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    ring.publish((_END, None))
                    return
                except Exception as error:
                    failure = SourceError(
                        f"the source raised {type(error).__name__} at batch {index}: {error}",
                        index,
                    )
                    failure.__cause__ = error
                    ring.publish((_ERROR, failure))
                    return
                read = time.perf_counter()
                self.source_seconds += read - started
                batch = convert(item, index)
                del item
                self.convert_seconds += time.perf_counter() - read
                if not ring.publish((_BATCH, batch)):
                    return
                del batch
                index += 1
        except StreamClosedError:
            return
        except BaseException as error:  # delivered in order, after every good batch
            if not self.closed.is_set():
                ring.publish((_ERROR, error))

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
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
        max_pool_bytes: int | None = None,
        slots: int | None = None,
        pin_memory: bool = True,
        copy_threads: int | None = None,
    ) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if slots is not None and (not isinstance(slots, int) or slots < 1):
            raise ValueError(f"slots must be an int >= 1 or None, got {slots!r}")
        if max_pool_bytes is not None and (
            not isinstance(max_pool_bytes, int) or max_pool_bytes <= 0
        ):
            raise ValueError(
                f"max_pool_bytes must be a positive int or None, got {max_pool_bytes!r}"
            )
        if copy_threads is not None and (not isinstance(copy_threads, int) or copy_threads < 1):
            raise ValueError(f"copy_threads must be an int >= 1 or None, got {copy_threads!r}")
        if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
            raise TypeError(
                f"source must be a tf.data.Dataset or an iterable of NumPy pytrees, "
                f"got {type(source).__name__}"
            )
        self._device = _resolve_device(device)
        self._backend = _resolve_backend(backend, self._device)
        x64 = bool(jax.config.read("jax_enable_x64"))
        tf_source = _is_tf_dataset(source)
        self._started = time.perf_counter()
        self._batches = 0
        self._bytes = 0
        self._wait = 0.0
        self._done = False
        self._copy_converter: CopyConverter | None = None

        if self._backend == "copy":
            self._iterator = iter(source.as_numpy_iterator() if tf_source else source)  # type: ignore[attr-defined]
            self._copy_converter = CopyConverter(self._device, x64=x64)
            self._pipeline = _Pipeline("copy", None, None)
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
        if self._backend == "ring":
            ring: Any = _core.Ring(**ring_args)
            converter: Any = SlotConverter(ring, self._device, x64=x64)
            iterator = source.as_numpy_iterator() if tf_source else iter(source)  # type: ignore[attr-defined]
        elif self._backend == "numpy":
            ring = NumpyRing(**ring_args)  # type: ignore[arg-type]
            converter = SlotConverter(ring, self._device, x64=x64)
            iterator = source.as_numpy_iterator() if tf_source else iter(source)  # type: ignore[attr-defined]
        else:  # direct: the ready queue only, no slots
            ring = NumpyRing(prefetch=prefetch, slots=1)
            converter = DirectConverter(self._device, x64=x64)
            iterator = iter(source)
        self._pipeline = _Pipeline(self._backend, ring, converter, x64=x64)
        self._finalizer = weakref.finalize(self, self._pipeline.close)
        thread = threading.Thread(
            target=self._pipeline.produce,
            args=(iterator,),
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
        if self._copy_converter is not None:
            try:
                try:
                    item = next(self._iterator)
                except StopIteration:
                    self._done = True
                    raise
                except Exception as error:
                    self._done = True
                    raise SourceError(
                        f"the source raised {type(error).__name__} at batch {self._batches}: "
                        f"{error}",
                        self._batches,
                    ) from error
                batch, nbytes = self._copy_converter(item, self._batches)
            finally:
                self._wait += time.perf_counter() - started
            self._batches += 1
            self._bytes += nbytes
            return batch  # type: ignore[no-any-return]
        try:
            entry = self._pipeline.ring.pop()
        except StreamClosedError:
            self._done = True
            raise StopIteration from None
        finally:
            self._wait += time.perf_counter() - started
        kind, payload = entry
        if kind == _BATCH:
            batch, nbytes = payload
            self._batches += 1
            self._bytes += nbytes
            return batch  # type: ignore[no-any-return]
        self._done = True
        self._pipeline.close()
        if kind == _END:
            raise StopIteration
        raise payload

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the producer (within a second, even if it waits for a free slot) and free every
        slot that no batch holds. Idempotent; batches already delivered stay valid."""
        self._done = True
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
        ring_stats: dict[str, Any] = self._pipeline.final_ring_stats or (
            ring.stats() if ring is not None else {}
        )
        converter = self._pipeline.converter
        acquire_wait = getattr(converter, "acquire_seconds", 0.0)
        slots = ring_stats.get("slots", 0) if self._backend in ("ring", "numpy") else 0
        locked = ring_stats.get("locked_slots", 0) + ring_stats.get("cuda_slots", 0)
        copied = ring_stats.get("bytes_copied", 0) if self._backend in ("ring", "numpy") else 0
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
            pinned=slots > 0 and locked >= slots,
            slots=slots,
            pool_bytes=ring_stats.get("pool_bytes", 0) if slots else 0,
            pool_grown=ring_stats.get("pool_grown", 0) if slots else 0,
            elapsed_seconds=time.perf_counter() - self._started,
        )

    def __repr__(self) -> str:
        state = "closed" if self._done else "open"
        return f"<fastbridge.Stream backend={self._backend!r} device={self._device} {state}>"


def stream(
    source: Iterable[Any],
    *,
    backend: Backend = "auto",
    prefetch: int = 4,
    device: jax.Device | str | None = None,
    max_pool_bytes: int | None = None,
    slots: int | None = None,
    pin_memory: bool = True,
    copy_threads: int | None = None,
) -> Stream[Any]:
    """Stream batches from ``source`` into JAX, prepared in the background.

    Args:
      source: a ``tf.data.Dataset`` (read through ``as_numpy_iterator()``, or its tensors for
        ``direct``) or any iterable of pytrees of NumPy arrays.
      backend: ``"auto"`` (fastest correct path for ``device``: ``direct`` on CPU, ``ring`` on
        accelerators), ``"ring"`` (Rust slots), ``"numpy"`` (the same ring in NumPy),
        ``"direct"`` (the source's buffers, no copy), ``"copy"`` (``jnp.array``, baseline).
      prefetch: batches prepared ahead of the consumer (>= 1).
      device: target ``jax.Device`` or platform name; default ``jax.devices()[0]``.
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
        max_pool_bytes=max_pool_bytes,
        slots=slots,
        pin_memory=pin_memory,
        copy_threads=copy_threads,
    )
