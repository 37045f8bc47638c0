"""The stream's position, with one owner.

The producer's :class:`Reader` is the only code that reads the source. It attaches to every
batch an immutable :class:`Position`: how many batches the stream has produced up to and
including this one, and a snapshot of the source iterator's own state right after reading it.
The consumer keeps the position of the last batch it delivered (one reference, replaced in
one step), and ``Stream.state()`` is derived from that position and nothing else, plus, for
``tf.data`` with ``checkpoint=True``, what :class:`TfLog` read ahead of it. No counter is
kept in two places, so no thread can see one half of an update.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from ._padding import Padder
from ._state import (
    Unsaveable,
    encode_items,
    encode_value,
)
from ._tfdata import save_iterator
from .errors import SourceError, StateTimeoutError

BATCH, ERROR, END = 0, 1, 2


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """Where the stream stands after one batch."""

    batches: int
    """Batches of the stream up to and including this one (a resume starts at this index)."""
    source: Any = None
    """The source iterator's ``get_state()`` right after this batch, encoded to JSON (an
    :class:`Unsaveable` when it cannot be), or ``None`` for sources that are replayed."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Base:
    """A saved iterator state to fall back on: restore ``tf_iterator``, yield ``pending``, drop
    ``drop`` batches, and the next one is batch ``start``."""

    tf_iterator: str
    pending: list[Any]
    drop: int
    start: int


class TfLog:
    """``checkpoint=True`` for tf.data: the dataset iterator plus the batches read from it and
    not yet delivered.

    ``state()`` stops the producer between two reads (a lock it holds while reading) and saves
    the iterator's state and the batches read ahead of the delivered position. It never waits
    longer than its ``timeout`` for a read in progress, and it cannot use the iterator after a
    read failed (tf.data has moved past the failed element): in both cases it falls back on
    the last state it saved (or the one taken before the first read), plus how many batches to
    drop after it. Resuming from such a state re-reads those batches, exactly as the iterator
    produced them, so nothing is lost, including the batch whose read failed.
    """

    def __init__(
        self, iterator: Any, *, pending: list[Any], drop: int, base: _Base | None, start: int
    ) -> None:
        self._iterator = iterator
        self._pending = collections.deque(pending)  # resumed batches, yielded before iterator
        self._drop = drop  # batches of pending + iterator to drop before batch ``start``
        self._start = start
        self._log: collections.deque[tuple[int, Any]] = collections.deque()
        # An RLock because it can say whether this thread holds it (see state()).
        self._lock = threading.RLock()
        self._base = base
        self._failed = False

    @classmethod
    def resumed(cls, iterator: Any, saved: Any, pending: list[Any]) -> TfLog:
        """A log over an iterator restored from ``saved`` (a ``SavedState``)."""
        base = _Base(saved.tf_iterator, saved.pending, saved.skip, saved.batches)
        return cls(iterator, pending=pending, drop=saved.skip, base=base, start=saved.batches)

    def _next(self) -> Any:
        return self._pending.popleft() if self._pending else next(self._iterator)

    def read(self, index: int, delivered: int) -> Any:
        """Producer: the next item (batch ``index``). Raises what the source raises."""
        with self._lock:
            while self._log and self._log[0][0] < delivered:
                self._log.popleft()
            try:
                if self._base is None:
                    # Before the first read: a state to fall back on that needs no re-reading
                    # from the dataset's start (and holds the seeds of unseeded shuffles).
                    self._base = _Base(save_iterator(self._iterator), [], self._drop, self._start)
                while self._drop:
                    self._next()
                    self._drop -= 1
                item = self._next()
            except StopIteration:
                raise
            except BaseException:
                self._failed = True
                raise
            self._log.append((index, item))
            return item

    def state(
        self, cursor: Callable[[], Position], timeout: float
    ) -> tuple[Position, dict[str, Any]]:
        """The delivered position (read with ``cursor()``) and the ``tf_iterator``, ``pending``
        and ``skip`` fields that resume right after it."""
        lock = self._lock
        try:
            if lock.acquire(timeout=timeout) and not self._failed:
                # Under the lock: the producer forgets delivered batches while it holds it,
                # so a position read before the lock could name a batch already forgotten.
                position = cursor()
                delivered = position.batches
                saved = save_iterator(self._iterator)
                ahead = [item for index, item in self._log if index >= delivered]
                pending = encode_items([*ahead, *self._pending])
                self._base = _Base(saved, pending, self._drop, delivered)
                return position, {"tf_iterator": saved, "pending": pending, "skip": self._drop}
        finally:
            # Asked, not remembered: a KeyboardInterrupt can arrive right after acquire()
            # returned and before its result was stored, and the lock must not stay held.
            if lock._is_owned():  # type: ignore[attr-defined]
                lock.release()
        base = self._base
        if base is None:
            raise StateTimeoutError(
                f"state() waited {timeout} s for the producer to save the dataset iterator "
                "before its first read; call it again, or pass a longer timeout"
            )
        position = cursor()
        return position, {
            "tf_iterator": base.tf_iterator,
            "pending": base.pending,
            "skip": base.drop + (position.batches - base.start),
        }


class Reader:
    """Reads the source on the producer thread and gives every batch its :class:`Position`.

    ``limit``: batches to produce in all (several processes agree on it); with a ``padder``,
    batches past the source's end are all padding, shaped like the last real batch, or like
    ``template()`` (the source's first batch) when this stream has read none.
    """

    def __init__(
        self,
        items: Iterator[Any],
        *,
        start: Position,
        stateful: Any = None,
        log: TfLog | None = None,
        limit: int | None = None,
        padder: Padder | None = None,
        template: Callable[[], Any] | None = None,
        owned: Any = None,
    ) -> None:
        self._items = items
        self._owned = owned
        self.start = start  # the position before this reader's first batch
        self._index = start.batches
        self._stateful = stateful
        self.log = log
        self._limit = limit
        self.padder = padder
        self._template = template
        self._last: Any = None
        self._snapshot: Any = None

    def read(self, delivered: int) -> tuple[int, Any, Position | None]:
        """``(BATCH, item, position)``, ``(END, None, None)`` or ``(ERROR, SourceError, None)``."""
        index = self._index
        if self._limit is not None and index >= self._limit:
            return (END, None, None)
        try:
            item = self.log.read(index, delivered) if self.log else next(self._items)
            padded = False
        except StopIteration:
            if self._limit is None or self.padder is None:
                return (END, None, None)
            item, padded = self._blank(), True
        except Exception as error:
            failure = SourceError(
                f"the source raised {type(error).__name__} at batch {index}: {error}", index
            )
            failure.__cause__ = error
            return (ERROR, failure, None)
        if self._stateful is not None and not padded:
            self._snapshot = _snapshot(self._stateful)
        if self.padder is not None and not padded:
            self._last = item
            item = self.padder(item)
        self._index = index + 1
        return (BATCH, item, Position(index + 1, self._snapshot))

    def close(self) -> None:
        """Close the iterator this stream opened on the source (never one the user passed):
        a Grain ``mp_prefetch`` iterator's worker processes, or a generator's ``finally``,
        must not wait for garbage collection. Called on the producer thread, the one thread
        that uses the iterator."""
        owned, self._owned = self._owned, None
        close_iterator(owned)

    def _blank(self) -> Any:
        assert self.padder is not None
        model = self._last
        if model is None and self._template is not None:
            model = self._template()
        if model is None:
            raise SourceError("pad_last=True: no batch to take the padding's shape from", -1)
        return self.padder.empty_like(model)


def _snapshot(iterator: Any) -> Any:
    try:
        return encode_value(iterator.get_state())
    except TypeError as error:
        return Unsaveable(f"the source iterator's {error}")


def close_iterator(iterator: Any) -> None:
    """``iterator.close()`` when it has one; a failure to close is a warning, not an error
    (every batch was already read)."""
    close = getattr(iterator, "close", None)
    if not callable(close):
        return
    try:
        close()
    except Exception as error:
        warnings.warn(
            f"closing the source's iterator raised {type(error).__name__}: {error}",
            RuntimeWarning,
            stacklevel=2,
        )


def opened(source: Any, iterator: Any) -> Any:
    """``iterator`` when ``iter(source)`` made a new one that the stream must close, else
    ``None`` (the source is its own iterator: the user's to close)."""
    return None if iterator is source else iterator
