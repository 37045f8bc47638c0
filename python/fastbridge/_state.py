"""A stream's saved position: what ``Stream.state()`` returns and ``stream(state=...)`` takes.

A state is a small JSON-serializable dict (every field is checked on resume; a field that is
wrong raises one ``ValueError`` that names it)::

    {"version": 2, "batches": <batches delivered>, "source": <source iterator state or None>}

plus, for ``tf.data`` streams with ``checkpoint=True``::

    "tf_iterator": <the dataset iterator's own state, base64>,
    "pending": <batches read ahead and not delivered, base64 .npy leaves in tf.nest order>,
    "skip": <batches of pending + iterator to drop first>

and ``"batch_size"`` with ``pad_last=True``. How each source kind resumes:

* Iterators with ``get_state()`` / ``set_state()`` (Grain-style): the producer snapshots the
  iterator's state right after reading each batch and hands the snapshot along with the
  batch, so the saved state is exactly "after the last batch delivered", however far the
  producer read ahead. Snapshots are encoded to JSON as they are taken (``encode_value``): a
  live dict the iterator goes on mutating cannot leak into them, and ``bytes``, tuples and
  NumPy values come back as they were.
* Iterables with ``state_dict()`` / ``load_state_dict()`` (Hugging Face ``IterableDataset``,
  torchdata's ``StatefulDataLoader``): the same snapshots, taken from the source object,
  which is loaded before it is iterated again.
* ``tf.data`` with ``checkpoint=True``: the iterator's own state (shuffle buffers and random
  state included, as ``tf.train.Checkpoint`` would save it) plus the batches read ahead
  (``_position.TfLog``). Resuming restores the iterator and yields the saved batches first.
* Everything else is replayed: resuming skips the batches already delivered, which is exact
  for deterministic pipelines and cheap to save, but re-reads what it skips.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._checks import check_int
from ._leaves import host_view
from ._npy import (
    dtype_named,
    from_npy_bytes,
    is_ml_dtype,
    npy_storable,
    restore_ml_dtype,
    to_npy_bytes,
)

STATE_VERSION = 2
_VERSIONS = (1, 2)  # version 1 states (no "skip") resume as before
_FIELDS = ("version", "batches", "source", "tf_iterator", "pending", "skip", "batch_size")


@runtime_checkable
class Checkpointable(Protocol):
    """An iterator that can save and restore its position, the way Grain's iterators do.

    A source whose iterator has these two methods resumes from its own state instead of by
    replaying; :class:`fastbridge.Stream` has them too. ``get_state()`` may return any value
    ``encode_value`` can make JSON of (dicts, lists, numbers, strings, bytes, NumPy values).
    """

    def get_state(self) -> Any: ...

    def set_state(self, state: Any, /) -> None: ...


@runtime_checkable
class StateDictSource(Protocol):
    """An iterable that saves the position of its current pass, the way Hugging Face's
    ``IterableDataset`` and torchdata's ``StatefulDataLoader`` do: ``state_dict()`` after a
    batch says where the pass stands, and ``load_state_dict()`` before ``iter()`` makes the
    next pass start there. A stream over such a source resumes from that state instead of by
    replaying. (Loading a state sticks to the object: a fresh start needs a fresh object.)
    """

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> None: ...


@dataclasses.dataclass(frozen=True)
class SavedState:
    """A checked ``state=`` dict."""

    batches: int
    source: Any
    """The source iterator's state, decoded (``None``: the source is replayed)."""
    tf_iterator: str | None
    pending: list[Any]
    """Encoded read-ahead batches; decoded against the dataset's element_spec."""
    skip: int
    batch_size: int | None


def _int_field(state: dict[str, Any], name: str, minimum: int, default: Any) -> Any:
    value = state.get(name, default)
    if value is default:
        return value
    check_int(f"state[{name!r}]", value, minimum, wrong_type=ValueError)  # from a file
    return value


def parse(state: Any) -> SavedState:
    """Check every field of a ``state=`` dict (it may come from an untrusted file)."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict made by Stream.state(), got {type(state).__name__}")
    unknown = sorted(str(k) for k in state if k not in _FIELDS)
    if unknown:
        raise ValueError(
            f"state has unknown field(s) {', '.join(map(repr, unknown))}; a Stream.state() "
            f"has {', '.join(map(repr, _FIELDS))}"
        )
    version = state.get("version")
    if isinstance(version, bool) or version not in _VERSIONS:
        raise ValueError(
            f"state['version'] must be one of {_VERSIONS} (a dict made by Stream.state()), "
            f"got {version!r}"
        )
    if "batches" not in state:
        raise ValueError("state['batches'] is missing (a dict made by Stream.state() has it)")
    batches = _int_field(state, "batches", 0, None)
    tf_iterator = state.get("tf_iterator")
    if tf_iterator is not None and not isinstance(tf_iterator, str):
        raise ValueError(
            f"state['tf_iterator'] must be base64 text, got {type(tf_iterator).__name__}"
        )
    pending = state.get("pending", [])
    if not isinstance(pending, list) or not all(isinstance(b, list) for b in pending):
        raise ValueError("state['pending'] must be a list of batches, each a list of leaves")
    if pending and tf_iterator is None:
        raise ValueError("state['pending'] holds batches but state['tf_iterator'] is missing")
    skip = _int_field(state, "skip", 0, 0)
    if skip and tf_iterator is None:
        raise ValueError("state['skip'] is set but state['tf_iterator'] is missing")
    batch_size = _int_field(state, "batch_size", 1, None)
    source = state.get("source")
    if source is not None:
        try:
            source = decode_value(source)
        except ValueError as error:
            raise ValueError(f"state['source'] is malformed: {error}") from None
    return SavedState(batches, source, tf_iterator, pending, skip, batch_size)


# -- the source iterator's own state, as lossless JSON -----------------------------------------

_TAG = "__fastbridge__"


class Unsaveable:
    """A snapshot that could not be encoded; ``state()`` raises its message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def encode_value(value: Any, where: str = "get_state()") -> Any:
    """``value`` as a new JSON-safe structure that ``decode_value`` turns back into an equal
    value: JSON types as they are; ``bytes``, tuples, NumPy arrays and scalars, non-finite
    floats and dicts with keys that are not strings as tagged dicts. Raises ``TypeError``
    naming where anything else was found."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and type(value) is int:
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {_TAG: "float", "repr": repr(value)}
    if isinstance(value, list) and type(value) is list:
        return [encode_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple) and type(value) is tuple:
        return {
            _TAG: "tuple",
            "items": [encode_value(v, f"{where}[{i}]") for i, v in enumerate(value)],
        }
    if isinstance(value, (bytes, bytearray)) and type(value) in (bytes, bytearray):
        return {_TAG: "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict) and type(value) is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: encode_value(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            _TAG: "dict",
            "items": [
                [encode_value(k, f"{where} key"), encode_value(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ],
        }
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind == "O":
            raise TypeError(f"{where} holds a NumPy array of Python objects")
        return {
            _TAG: "ndarray",
            "leaf": _encode_leaf(array),
            "scalar": isinstance(value, np.generic),
        }
    raise TypeError(
        f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which cannot be "
        "saved as JSON without loss (JSON types, bytes, tuples and NumPy arrays can)"
    )


def decode_value(value: Any) -> Any:
    """The value ``encode_value`` encoded; raises ``ValueError`` on a malformed tag."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if _TAG not in value:
        return {k: decode_value(v) for k, v in value.items()}
    kind = value[_TAG]
    try:
        if kind == "bytes":
            return base64.b64decode(value["base64"], validate=True)
        if kind == "tuple":
            return tuple(decode_value(v) for v in value["items"])
        if kind == "dict":
            return {decode_value(k): decode_value(v) for k, v in value["items"]}
        if kind == "float":
            if value["repr"] not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float {value['repr']!r}")
            return float(value["repr"])
        if kind == "ndarray":
            array = _decode_any_leaf(value["leaf"])
            return array[()] if value.get("scalar") else array
    except (KeyError, TypeError, binascii.Error) as error:
        raise ValueError(
            f"a {kind!r} value is malformed ({type(error).__name__}: {error})"
        ) from None
    raise ValueError(f"unknown tag {kind!r}")


# -- read-ahead batches (checkpoint=True) ---------------------------------------------------


def _npy_text(array: np.ndarray) -> str:
    return base64.b64encode(to_npy_bytes(array)).decode("ascii")


def _from_npy_text(text: Any) -> np.ndarray:
    # Never allow_pickle: a state may come from an untrusted file.
    try:
        array = from_npy_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, TypeError, ValueError, OSError, EOFError) as error:
        raise ValueError(f"not a base64 .npy array ({type(error).__name__})") from None
    return array


def _encode_leaf(leaf: Any) -> str | dict[str, str]:
    """One leaf as base64 ``.npy`` text, or a dict for what ``.npy`` cannot hold without pickle.

    * Strings (object arrays of ``bytes``, or ``bytes``): the lengths as an ``.npy`` array of
      the leaf's shape plus the concatenated bytes. Fixed-width ``S`` arrays would drop
      trailing NUL bytes, which binary ``tf.string`` data (encoded images, protos) may end in.
    * ML dtypes (``bfloat16``, ``float8_*``, ``int4``): ``.npy`` records them as raw ``V``
      bytes, so they are saved as unsigned integers of the same width and viewed back.
    """
    # np.asarray would make ``bytes`` a fixed-width array, dropping trailing NUL bytes.
    array = np.array(leaf, dtype=object) if isinstance(leaf, bytes) else host_view(leaf)
    if array.dtype.kind in "OS":
        values = list(array.flat)
        if not all(isinstance(v, bytes) for v in values):
            raise ValueError("checkpoint=True can only save string leaves that hold bytes")
        lengths = np.array([len(v) for v in values], dtype=np.int64).reshape(array.shape)
        return {
            "dtype": "string",
            "lengths": _npy_text(lengths),
            "data": base64.b64encode(b"".join(values)).decode("ascii"),
        }
    if array.dtype.kind == "V":
        return {"dtype": array.dtype.name, "npy": _npy_text(npy_storable(array))}
    return _npy_text(array)


def _decode_leaf(encoded: Any, spec: Any) -> np.ndarray:
    """The leaf ``_encode_leaf`` saved, as an array of ``spec``'s dtype and a shape it allows:
    the dataset's element_spec decides, not the state, which may come from an untrusted file."""
    if spec.dtype.name == "string":
        if not (isinstance(encoded, dict) and encoded.get("dtype") == "string"):
            raise ValueError("expected a string leaf")
        array = _decode_strings(encoded)
    else:
        dtype = np.dtype(spec.dtype.as_numpy_dtype)
        if isinstance(encoded, str):
            array = _from_npy_text(encoded)
        elif isinstance(encoded, dict) and encoded.get("dtype") == dtype.name:
            array = _from_npy_text(encoded.get("npy"))
        else:
            raise ValueError(f"expected a {dtype.name} leaf")
        # ML dtypes come back as unsigned integers (or as raw V bytes from older states).
        array = restore_ml_dtype(array, dtype)
        if array.dtype != dtype:
            raise ValueError(f"a {array.dtype} leaf where the dataset has {dtype}")
    if not spec.shape.is_compatible_with(array.shape):
        raise ValueError(f"shape {array.shape} where the dataset has {spec.shape}")
    return array


def _decode_strings(encoded: dict[str, Any]) -> np.ndarray:
    lengths = _from_npy_text(encoded.get("lengths"))
    try:
        data = base64.b64decode(encoded.get("data"), validate=True)  # type: ignore[arg-type]
    except (binascii.Error, TypeError):
        raise ValueError("a malformed string leaf") from None
    if lengths.dtype.kind not in "iu" or (lengths < 0).any() or lengths.sum() != len(data):
        raise ValueError("a malformed string leaf")
    ends = np.cumsum(lengths.ravel()).tolist()
    out = np.empty(lengths.shape, dtype=object)
    out.flat[:] = [data[end - n : end] for end, n in zip(ends, lengths.flat, strict=True)]
    return out


def encode_items(items: list[Any]) -> list[list[str | dict[str, str]]]:
    """Read-ahead batches as JSON-friendly lists of leaves (tf.nest order), see ``_encode_leaf``."""
    import tensorflow as tf

    return [[_encode_leaf(leaf) for leaf in tf.nest.flatten(item)] for item in items]


def decode_items(encoded: list[list[Any]], element_spec: Any, numpy: bool = True) -> list[Any]:
    """The read-ahead batches as the dataset's iterator yields them: what
    ``as_numpy_iterator()`` gives with ``numpy`` (``bytes`` and NumPy scalars for 0-d leaves),
    else ``tf.Tensor``s, so that the resumed stream treats them as it treats every batch."""
    import tensorflow as tf

    specs = tf.nest.flatten(element_spec)
    out = []
    for b, leaves in enumerate(encoded):
        if len(leaves) != len(specs):
            raise ValueError(
                f"state['pending'][{b}] holds {len(leaves)} leaves, the dataset's batches have "
                f"{len(specs)}"
            )
        arrays = []
        for j, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
            try:
                arrays.append(_decode_leaf(leaf, spec))
            except ValueError as error:
                raise ValueError(f"state['pending'][{b}][{j}]: {error}") from None
        if numpy:
            values: list[Any] = [a[()] if a.ndim == 0 else a for a in arrays]
        else:
            values = [
                tf.convert_to_tensor(a, dtype=spec.dtype)
                for a, spec in zip(arrays, specs, strict=True)
            ]
        out.append(tf.nest.pack_sequence_as(element_spec, values))
    return out


def _decode_any_leaf(encoded: Any) -> np.ndarray:
    """A leaf ``_encode_leaf`` saved, whatever its dtype (source states say it themselves)."""
    if isinstance(encoded, str):
        return _from_npy_text(encoded)
    if isinstance(encoded, dict) and encoded.get("dtype") == "string":
        return _decode_strings(encoded)
    if isinstance(encoded, dict) and isinstance(encoded.get("dtype"), str):
        dtype = dtype_named(encoded["dtype"])
        if dtype is None or not is_ml_dtype(dtype):
            raise ValueError(f"{encoded['dtype']!r} is not an ml_dtypes dtype")
        return restore_ml_dtype(_from_npy_text(encoded["npy"]), dtype)
    raise ValueError("not an encoded array")
