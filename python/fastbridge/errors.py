"""The exceptions fastbridge raises.

Every error derives from :class:`FastbridgeError` and from the built-in exception a caller
would already expect (``TypeError`` for a leaf of the wrong kind, ``MemoryError`` for a pool at
its cap, ...), so both ``except FastbridgeError`` and ``except TypeError`` work.

The Rust core raises these same classes (it imports this module), and so does the pure-NumPy
fallback, so behaviour does not depend on whether the extension is built.

Two are raised only by the slot pool itself (``fastbridge._core`` and its NumPy twin), for
code that drives it directly: :class:`SlotTimeoutError` when ``SlotPool.acquire(timeout=...)``
finds no free slot in time, and :class:`CoreRangeError` when a narrowing copy meets a value
that does not fit (the stream and the conversions turn it into a :class:`LeafOverflowError`
that names the leaf's path).
"""

from __future__ import annotations

import os
import sys
import warnings


class FastbridgeError(Exception):
    """Base class of every fastbridge error."""


class StreamClosedError(FastbridgeError, RuntimeError):
    """The stream was closed while an operation waited on it."""


class PoolExhaustedError(FastbridgeError, MemoryError):
    """Growing the slot pool would exceed ``max_pool_bytes``.

    The pool grows when the consumer keeps batches (``list(stream(ds))``) so that it never
    deadlocks; a byte cap turns unbounded growth into this error instead.
    """


class StateTimeoutError(FastbridgeError, TimeoutError):
    """``Stream.state()`` could not save the position within its ``timeout``."""


class SlotTimeoutError(FastbridgeError, TimeoutError):
    """``SlotPool.acquire(nbytes, timeout=...)`` found no free slot within ``timeout``: every
    slot is still referenced by a batch, and the pool was not allowed to grow."""


class SourceError(FastbridgeError):
    """The source (the dataset or iterable) raised; the original exception is ``__cause__``.

    Raised at the position where the source failed, after every good batch before it.
    ``batch_index`` is the index of the batch that failed.
    """

    def __init__(self, message: str, batch_index: int) -> None:
        super().__init__(message)
        self.batch_index = batch_index


class UnsupportedLeafError(FastbridgeError, TypeError):
    """A leaf cannot become a ``jax.Array`` (ragged, sparse, or Python objects).

    ``path`` names the leaf, e.g. ``['tokens']``.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class LeafOverflowError(FastbridgeError, OverflowError):
    """A value does not fit the dtype the leaf is converted to (e.g. int64 → int32 with JAX's
    x64 mode off). ``path`` names the leaf. Values are never wrapped silently."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class CoreRangeError(LeafOverflowError):
    """A narrowing copy in the core (``Slot.fill``, ``copy_into``) met a value that does not fit
    the narrower dtype. The core knows leaves only by position: ``leaf`` is the index into the
    leaves it was given and ``value`` the value as text; ``path`` is ``<leaf N>``. The Python
    layer turns it into a :class:`LeafOverflowError` that names the leaf's real path."""

    def __init__(self, leaf: int, value: str) -> None:
        super().__init__(
            f"leaf {leaf} has value {value}, which does not fit the narrower dtype",
            f"<leaf {leaf}>",
        )
        self.leaf = leaf
        self.value = value


class ShardingError(FastbridgeError, ValueError):
    """A leaf cannot be laid out as ``sharding=`` says (a scalar where the sharding splits an
    axis, or an axis that does not divide evenly). ``path`` names the leaf."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class StructureChangedError(FastbridgeError, ValueError):
    """A batch's pytree structure or a leaf's dtype differs from the first batch's.

    Shapes may change from batch to batch (``padded_batch``); structure and dtypes may not.
    """


class ConversionError(FastbridgeError, ValueError):
    """An input cannot be converted: infinite cardinality, mismatched leading dimensions,
    a ``dtype=`` that names an unknown leaf or asks for an unsafe cast, ..."""


class MemmapPathError(FastbridgeError, OSError):
    """``to_numpy(memmap=PATH)`` cannot write to ``PATH`` (not writable, not a directory, or a
    non-empty directory that was not written by ``to_numpy``)."""


class FastbridgeWarning(UserWarning):
    """Something will work, but not as well as a user would assume: e.g. ``checkpoint=True``
    on a pipeline that tf.data cannot restore exactly. Filter it with ``warnings`` like any
    other warning."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """Issue a ``FastbridgeWarning`` attributed to the user's line: the first frame outside
    this package, however the call reached here (``stream()``, ``Stream()``, a wrapper)."""
    frame = sys._getframe(1)
    level = 2  # warnings.warn's stacklevel=1 is this function; 2 its caller, frame here
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, FastbridgeWarning, stacklevel=level)


__all__ = [
    "ConversionError",
    "CoreRangeError",
    "FastbridgeError",
    "FastbridgeWarning",
    "LeafOverflowError",
    "MemmapPathError",
    "PoolExhaustedError",
    "ShardingError",
    "SlotTimeoutError",
    "SourceError",
    "StateTimeoutError",
    "StreamClosedError",
    "StructureChangedError",
    "UnsupportedLeafError",
]
