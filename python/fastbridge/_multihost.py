"""Multi-process (multi-host) streams.

When ``jax.distributed`` runs several processes, each process reads only its share of the
source (``ds.shard(process_count, process_index)`` for tf.data, every ``process_count``-th item
for other iterables) and every leaf becomes a global ``jax.Array`` whose batch axis spans all
processes: process ``p``'s local batch fills rows ``[p * n, (p + 1) * n)``, the standard
data-parallel layout (a mesh over ``jax.devices()``, which lists devices process by process).

All processes must yield the same number of batches, or the step that follows would hang in
its collectives. With a known length per process they agree once, at start-up: the shortest
count wins (the longer processes drop their last batch), or with ``pad_last=True`` the longest
(the shorter ones add batches that are all padding, mask ``False``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import jax
import numpy as np

from ._state import Checkpointable


def process_count() -> int:
    return int(jax.process_count())


def process_index() -> int:
    return int(jax.process_index())


class _Strided(Iterator[Any]):
    """Every ``count``-th item of ``inner``, starting at its ``index``-th."""

    def __init__(self, inner: Iterator[Any], count: int, index: int) -> None:
        self.inner, self.count = inner, count
        self.skip = index  # items of ``inner`` to pass over before the next one this yields

    def __next__(self) -> Any:
        for _ in range(self.skip):
            next(self.inner)
        item = next(self.inner)
        self.skip = self.count - 1
        return item


class _StatefulStrided(_Strided):
    """A :class:`_Strided` over a Grain-style iterator: its state is the inner iterator's
    plus where this process is in the stride, so a resume stays exact (not a replay)."""

    def get_state(self) -> dict[str, Any]:
        return {"inner": cast(Checkpointable, self.inner).get_state(), "skip": self.skip}

    def set_state(self, state: dict[str, Any]) -> None:
        cast(Checkpointable, self.inner).set_state(state["inner"])
        self.skip = int(state["skip"])


class EveryNth:
    """``source`` restricted to items ``index, index + count, ...`` (re-iterable)."""

    def __init__(self, source: Any, count: int, index: int) -> None:
        self.source, self.count, self.index = source, count, index

    def __iter__(self) -> Iterator[Any]:
        inner: Iterator[Any] = iter(self.source)
        if isinstance(inner, Checkpointable):
            return _StatefulStrided(inner, self.count, self.index)
        return _Strided(inner, self.count, self.index)

    def __len__(self) -> int:
        total = len(self.source)
        return max(0, -(-(total - self.index) // self.count))


def agree_on_batches(local: int | None, *, pad_last: bool) -> int:
    """The number of batches every process yields (a collective: all processes call it)."""
    from jax.experimental import multihost_utils

    if local is None:
        raise ValueError(
            "with several JAX processes every process must yield the same number of batches, "
            "so each one's length must be known: give tf.data a known cardinality (e.g. "
            "ds.apply(tf.data.experimental.assert_cardinality(n))) or pass a source with len()"
        )
    counts = np.asarray(multihost_utils.process_allgather(np.int64(local)))
    return int(counts.max() if pad_last else counts.min())


def global_shape(sharding: jax.sharding.Sharding, local_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the global array that process-local blocks of ``local_shape`` make up."""
    if sharding.is_fully_addressable or not local_shape:
        return local_shape
    return (local_shape[0] * jax.process_count(), *local_shape[1:])
