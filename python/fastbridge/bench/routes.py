"""The nine routes (ways to hand a ``tf.data`` batch to JAX) that the benchmark compares.

Each route is a generator of batches. The benchmark times only the ``next()`` call on it, so
whatever a route does on the consumer's thread (``jnp.array``, ``device_put``, a DLPack import)
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
class Route:
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
    """A fastbridge stream as a route; keeps the ``Stream`` reachable for its stats."""

    def __init__(self, ds: Any, backend: str, **options: Any) -> None:
        self.stream = stream(ds, backend=backend, **options)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        return next(self.stream)

    def close(self) -> None:
        self.stream.close()


def _stream_route(backend: str) -> Callable[..., Iterator[Any]]:
    def run(ds: Any, **options: Any) -> Iterator[Any]:
        return _StreamIterator(ds, backend, **options)

    run.__name__ = f"_stream_{backend}"
    return run


def _floor(ds: Any) -> Iterator[Any]:
    # Iterating the dataset and touching nothing: the cost no route can go below.
    yield from ds.as_numpy_iterator()


ROUTES: tuple[Route, ...] = (
    Route(1, "tutorial", "tutorial copy (jnp.array per leaf)", "anchor", _tutorial_copy),
    Route(2, "device_put", "as_numpy_iterator + device_put", "anchor", _device_put),
    Route(3, "dlpack", "EagerTensor -> jax.dlpack (by hand)", "anchor", _dlpack),
    Route(4, "flax_prefetch", "flax-style deque of device_put (2)", "anchor", _flax_prefetch),
    Route(5, "ring", "fastbridge ring", "fastbridge", _stream_route("ring")),
    Route(6, "numpy", "fastbridge numpy", "fastbridge", _stream_route("numpy")),
    Route(7, "direct", "fastbridge direct", "fastbridge", _stream_route("direct")),
    Route(8, "auto", "fastbridge auto", "fastbridge", _stream_route("auto")),
    Route(9, "floor", "floor: as_numpy_iterator only", "floor", _floor),
)
BY_KEY: dict[str, Route] = {r.key: r for r in ROUTES}


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
            route = ROUTES[int(name) - 1]
        elif name in BY_KEY:
            route = BY_KEY[name]
        else:
            known = ", ".join(f"{r.number}/{r.key}" for r in ROUTES)
            raise ValueError(f"unknown route {name!r}; choose from {known}")
        if route not in chosen:
            chosen.append(route)
    if not chosen:
        raise ValueError("no route chosen")
    # Keep the canonical order so every table reads the same way.
    return sorted(chosen, key=lambda r: r.number)


def open_route(route: Route, ds: Any, **stream_options: Any) -> Iterator[Any]:
    """A fresh iterator of batches for ``route`` over ``ds``."""
    if route.kind == "fastbridge":
        return route.open(ds, **stream_options)
    return route.open(ds)


def current_stream(iterator: Iterator[Any]) -> Any:
    """The ``Stream`` behind a fastbridge route's iterator, or ``None`` for other routes."""
    return getattr(iterator, "stream", None)


def host_copy(batch: Any) -> Any:
    """A NumPy copy of every leaf of a delivered batch, for comparing routes.

    Not :func:`fastbridge.to_numpy` (which converts a whole dataset): this copies one batch.
    """
    return jax.tree_util.tree_map(lambda leaf: np.array(leaf), batch)


def collect(route: Route, ds: Any, limit: int | None = None, **stream_options: Any) -> list[Any]:
    """Every batch ``route`` delivers for ``ds`` (up to ``limit``), copied to NumPy."""
    iterator = open_route(route, ds, **stream_options)
    out: list[Any] = []
    try:
        for batch in iterator:
            out.append(host_copy(batch))
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
