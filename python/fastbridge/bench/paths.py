"""The nine ways to hand a ``tf.data`` batch to JAX that the benchmark compares.

Each path is a generator of batches. The benchmark times only the ``next()`` call on it, so
whatever a path does on the consumer's thread (``jnp.array``, ``device_put``, a DLPack import)
counts as consumer-visible time, and whatever it does in a background thread does not.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import stream


@dataclasses.dataclass(frozen=True)
class Path:
    """One way of turning dataset elements into JAX arrays."""

    number: int
    key: str
    label: str
    kind: str
    """``anchor`` (what users write today), ``fastbridge`` or ``floor``."""
    open: Callable[[Any], Iterator[Any]]


def _tutorial_copy(ds: Any) -> Iterator[Any]:
    # What most tutorials write: a fresh device copy of every leaf, on the consumer's thread.
    for batch in ds.as_numpy_iterator():
        yield jax.tree_util.tree_map(jnp.array, batch)


def _device_put(ds: Any) -> Iterator[Any]:
    # device_put aliases 64-byte-aligned NumPy memory on CPU (TensorFlow's buffers are).
    for batch in ds.as_numpy_iterator():
        yield jax.device_put(batch)


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
    """A fastbridge stream as a path; keeps the ``Stream`` reachable for its stats."""

    def __init__(self, ds: Any, backend: str, **options: Any) -> None:
        self.stream = stream(ds, backend=backend, **options)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        return next(self.stream)

    def close(self) -> None:
        self.stream.close()


def _stream_path(backend: str) -> Callable[..., Iterator[Any]]:
    def run(ds: Any, **options: Any) -> Iterator[Any]:
        return _StreamIterator(ds, backend, **options)

    run.__name__ = f"_stream_{backend}"
    return run


def _floor(ds: Any) -> Iterator[Any]:
    # Iterating the dataset and touching nothing: the cost no path can go below.
    yield from ds.as_numpy_iterator()


PATHS: tuple[Path, ...] = (
    Path(1, "tutorial", "tutorial copy (jnp.array per leaf)", "anchor", _tutorial_copy),
    Path(2, "device_put", "as_numpy_iterator + device_put", "anchor", _device_put),
    Path(3, "dlpack", "EagerTensor -> jax.dlpack (by hand)", "anchor", _dlpack),
    Path(4, "flax_prefetch", "flax-style deque of device_put (2)", "anchor", _flax_prefetch),
    Path(5, "ring", "fastbridge ring", "fastbridge", _stream_path("ring")),
    Path(6, "numpy", "fastbridge numpy", "fastbridge", _stream_path("numpy")),
    Path(7, "direct", "fastbridge direct", "fastbridge", _stream_path("direct")),
    Path(8, "auto", "fastbridge auto", "fastbridge", _stream_path("auto")),
    Path(9, "floor", "floor: as_numpy_iterator only", "floor", _floor),
)
BY_KEY: dict[str, Path] = {p.key: p for p in PATHS}


def resolve(names: str | list[str] | None) -> list[Path]:
    """Paths from a comma-separated list of numbers or keys (``None`` or ``all``: every path)."""
    if names is None:
        return list(PATHS)
    items = names.split(",") if isinstance(names, str) else list(names)
    chosen: list[Path] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name == "all":
            return list(PATHS)
        if name.isdigit() and 1 <= int(name) <= len(PATHS):
            path = PATHS[int(name) - 1]
        elif name in BY_KEY:
            path = BY_KEY[name]
        else:
            known = ", ".join(f"{p.number}/{p.key}" for p in PATHS)
            raise ValueError(f"unknown path {name!r}; choose from {known}")
        if path not in chosen:
            chosen.append(path)
    if not chosen:
        raise ValueError("no path chosen")
    # Keep the canonical order so every table reads the same way.
    return sorted(chosen, key=lambda p: p.number)


def open_path(path: Path, ds: Any, **stream_options: Any) -> Iterator[Any]:
    """A fresh iterator of batches for ``path`` over ``ds``."""
    if path.kind == "fastbridge":
        return path.open(ds, **stream_options)
    return path.open(ds)


def current_stream(iterator: Iterator[Any]) -> Any:
    """The ``Stream`` behind a fastbridge path's iterator, or ``None`` for other paths."""
    return getattr(iterator, "stream", None)


def to_numpy(batch: Any) -> Any:
    """A host copy of a delivered batch, for comparing paths."""
    return jax.tree_util.tree_map(lambda leaf: np.array(leaf), batch)


def collect(path: Path, ds: Any, limit: int | None = None, **stream_options: Any) -> list[Any]:
    """Every batch ``path`` delivers for ``ds`` (up to ``limit``), copied to NumPy."""
    iterator = open_path(path, ds, **stream_options)
    out: list[Any] = []
    try:
        for batch in iterator:
            out.append(to_numpy(batch))
            if limit is not None and len(out) >= limit:
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    return out


def leaf_pointers(batch: Any) -> list[int | None]:
    """Data pointers of a batch's leaves (``None`` for leaves that are not arrays)."""
    out: list[int | None] = []
    for leaf in jax.tree_util.tree_leaves(batch):
        if isinstance(leaf, jax.Array):
            out.append(leaf.unsafe_buffer_pointer())
        elif isinstance(leaf, np.ndarray):
            out.append(leaf.ctypes.data)
        else:
            out.append(None)
    return out
