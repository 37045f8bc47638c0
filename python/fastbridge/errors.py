"""The exceptions fastbridge raises.

Conditions that are fastbridge's own (a source that failed, a leaf that cannot become a
``jax.Array``, a pool at its cap, a closed stream, ...) raise a subclass of
:class:`FastbridgeError`, which also derives from the built-in exception a caller would already
expect (``TypeError`` for a leaf of the wrong kind, ``MemoryError`` for a pool at its cap, ...),
so both ``except FastbridgeError`` and ``except TypeError`` work. Every exception class in this
module is such a subclass, except the warning :class:`FastbridgeWarning`.

Invalid arguments raise the plain ``ValueError`` (a value out of range or in conflict) or
``TypeError`` (a value of the wrong type), as Python's own functions do, each naming the
argument; so do misuses of the slot pool's low-level API (a released slot, a bad layout). An
allocation the operating system refuses is a plain ``MemoryError``, and errors of the libraries
fastbridge calls (JAX, TensorFlow, NumPy) pass through unchanged, except a source's, which
arrive as :class:`SourceError` with the original as ``__cause__``.

The Rust core raises these same classes (it imports this module), and so does the pure-NumPy
fallback, so behaviour does not depend on whether the extension is built. Both take the
messages of the errors they raise from one table here, :data:`CORE_MESSAGES`, through
:func:`core_error`.

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
    """Base class of every exception class fastbridge defines (see the module's docstring
    for the plain ``ValueError`` and ``TypeError`` it raises for invalid arguments)."""


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


CORE_MESSAGES: dict[str, tuple[type[Exception], str]] = {
    "closed": (StreamClosedError, "the stream was closed"),
    "slot_timeout": (SlotTimeoutError, "timed out waiting for a free slot"),
    "pool_exhausted": (
        PoolExhaustedError,
        "max_pool_bytes={max_bytes} reached: the pool already holds {held} bytes in slots that "
        "batches still reference, and the next batch needs {requested} more; release batches "
        "you keep, or raise max_pool_bytes",
    ),
    "allocation_failed": (MemoryError, "could not allocate a {nbytes}-byte slot"),
    "already_exported": (RuntimeError, "a slot cannot be written after it has been exported"),
    "released": (ValueError, "the slot was released"),
    "bad_timeout": (ValueError, "timeout must be a number of seconds >= 0 or None, got {timeout}"),
    "queue_capacity": (ValueError, "capacity must be between 1 and {limit}, got {capacity}"),
    "queue_has_pool": (ValueError, "a ready queue feeds one slot pool only"),
    "at_least_one": (ValueError, "{name} must be >= 1, got {value}"),
    "unknown_conversion": (ValueError, "unknown conversion code {code}"),
    "fill_source": (ValueError, "source {source} of {sources}"),
    "fill_units": (
        ValueError,
        "{length} bytes from byte {start} are not whole {unit}-byte elements",
    ),
    "fill_overflows": (ValueError, "offset {offset} overflows"),
    "fills_overlap": (ValueError, "fills {first} and {second} overlap in the slot"),
    "negative_dimension": (ValueError, "negative dimension in shape {shape}"),
    "bits_not_bytes": (ValueError, "bits must be a multiple of 8, got {bits}"),
    "unaligned": (ValueError, "offset {offset} is not {align}-byte aligned"),
    "export_overflows": (
        ValueError,
        "shape {shape} of {bits}-bit items at offset {offset} overflows",
    ),
    "export_past_slot": (
        ValueError,
        "shape {shape} of {bits}-bit items at offset {offset} exceeds the {capacity}-byte slot",
    ),
    "layout_sources": (ValueError, "the layout takes {expected} sources, got {given}"),
    "layout_too_large": (ValueError, "the layout needs {needed} bytes, the slot has {capacity}"),
    "not_contiguous": (ValueError, "{buffer} is not C-contiguous"),
    "past_source": (ValueError, "bytes {start}..{end} of a {size}-byte source"),
    "item_size": (ValueError, "conversion {conversion} needs 8- or 16-byte items, got {item}"),
    "partial_items": (
        ValueError,
        "conversion {conversion} reads {unit}-byte items, but the source has {size} bytes",
    ),
    "dest_read_only": (ValueError, "dest is read-only"),
    "buffers_overlap": (ValueError, "source and dest overlap in memory"),
    "dest_too_small": (
        ValueError,
        "{written} bytes at offset {offset} do not fit the {capacity}-byte destination",
    ),
    "copy_refused": (
        BufferError,
        "fastbridge leaves export their slot memory only; copy=True is not supported",
    ),
    "wrong_device": (BufferError, "leaf lives on DLPack device {device}, cannot export to {asked}"),
}
"""Every error the slot pool raises (the Rust core and its NumPy twin alike), by key: its class
and its message, a ``str.format`` template."""


def core_error(key: str, context: str | None = None, /, **fields: object) -> Exception:
    """The exception the slot pool raises for ``key`` (:data:`CORE_MESSAGES`), its message
    filled in from ``fields`` and led by ``context`` (which entry of a list it concerns).

    >>> core_error("fill_source", "fill 2", source=3, sources=1)
    ValueError('fill 2: source 3 of 1')
    """
    kind, template = CORE_MESSAGES[key]
    message = template.format(**fields)
    return kind(f"{context}: {message}" if context else message)


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
