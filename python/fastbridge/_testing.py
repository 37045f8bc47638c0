"""The one seam the test suite uses to look inside a stream. Not public API: it may change
with any release.

>>> import numpy as np
>>> from fastbridge import stream
>>> from fastbridge._testing import internals
>>> with recorded_slots() as slots, stream([np.ones(4, np.float32)], backend="numpy") as s:
...     batch = next(s)
...     aliased = slot_of(batch.unsafe_buffer_pointer(), slots) is not None
...     kind = type(internals(s).pool).__name__
>>> aliased, kind
(True, 'NumpySlotPool')
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

from ._handoff import Converter
from ._stream import Stream


@dataclasses.dataclass(frozen=True)
class Internals:
    """What the current producer run of a stream is made of."""

    pool: Any
    """The slot pool (``None`` for backends that copy nothing into slots)."""
    queue: Any
    """The ready queue between the producer and ``next()``."""
    converter: Any
    """What turns a source item into a batch (a slot ``Converter`` for slot backends)."""
    thread: threading.Thread | None
    """The producer thread."""


def internals(stream: Stream[Any]) -> Internals:
    pipeline = stream._pipeline
    engine = pipeline.engine
    return Internals(engine.pool, engine.queue, engine.converter, pipeline.thread)


@contextlib.contextmanager
def recorded_slots() -> Iterator[dict[int, int]]:
    """Within the block, the address and capacity of every slot any stream acquires."""
    slots: dict[int, int] = {}
    acquire = Converter._acquire

    def recording(self: Converter, nbytes: int) -> Any:
        slot = acquire(self, nbytes)
        slots[slot.address] = slot.capacity
        return slot

    Converter._acquire = recording  # type: ignore[method-assign]
    try:
        yield slots
    finally:
        Converter._acquire = acquire  # type: ignore[method-assign]


def slot_of(pointer: int, slots: dict[int, int]) -> int | None:
    """The address of the slot that ``pointer`` points into, or ``None``."""
    for address, capacity in slots.items():
        if address <= pointer < address + capacity:
            return address
    return None
