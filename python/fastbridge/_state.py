"""Checkpointable streams: what ``Stream.state()`` saves and how ``stream(state=...)`` resumes.

A state is a small JSON-serializable dict::

    {"version": 1, "batches": <batches consumed>, "source": <source state or None>}

* Sources whose iterator has ``get_state()`` / ``set_state()`` (Grain-style): the producer
  records the iterator's state right after reading each batch and hands it along with the batch,
  so the saved state is exactly "after the last batch the consumer received", however far the
  producer has prefetched. Resuming calls ``set_state``.
* ``tf.data`` datasets streamed with ``checkpoint=True``: ``state()`` pauses the producer
  between two reads, serializes the dataset iterator's own state (shuffle buffers and random
  state included, as ``tf.train.Checkpoint`` would) and adds the batches it has read ahead but
  the consumer has not received yet. Resuming restores the iterator and yields those batches
  first: exact for any pipeline, and nothing is re-read. The state then also holds
  ``"tf_iterator"`` (base64) and ``"pending"`` (the read-ahead batches, base64 ``.npy`` leaves
  in ``tf.nest`` order; strings and ML dtypes such as bfloat16 are stored without pickle, see
  ``_encode_leaf``), and is still JSON-serializable.
* Other sources (``tf.data`` without ``checkpoint=True`` included) are replayed: resuming skips
  the batches already consumed (``Dataset.skip`` for tf.data). This is exact for deterministic
  pipelines (seeded ``shuffle``, deterministic ``map``), and cheap to save, but resuming
  re-reads what it skips.
"""

from __future__ import annotations

import base64
import io
import itertools
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._leaves import host_view

STATE_VERSION = 1


def validate(state: Any) -> dict[str, Any]:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(
            f"state must be a dict made by Stream.state() (version {STATE_VERSION}), got {state!r}"
        )
    batches = state.get("batches")
    if not isinstance(batches, int) or batches < 0:
        raise ValueError(f"state['batches'] must be an int >= 0, got {batches!r}")
    return state


def restore(
    source: Any, state: dict[str, Any] | None, tf_source: bool, numpy: bool
) -> tuple[Iterator[Any], Any]:
    """An iterator over ``source`` positioned after ``state['batches']`` batches, and the
    underlying source iterator (whose state ``checkpoint=True`` saves)."""
    skip = 0 if state is None else state["batches"]
    if tf_source:
        has_iterator_state = state is not None and state.get("tf_iterator") is not None
        ds = source.skip(skip) if skip and not has_iterator_state else source
        iterator = iter(ds.as_numpy_iterator() if numpy else ds)
        if not has_iterator_state:
            return iterator, iterator
        assert state is not None
        load_tf_iterator(iterator, state["tf_iterator"])
        pending = decode_items(state.get("pending", []), source.element_spec, numpy)
        return itertools.chain(pending, iterator), iterator
    iterator = iter(source)
    if state is not None and state.get("source") is not None:
        if not hasattr(iterator, "set_state"):
            raise ValueError(
                "state holds a source state, but this source's iterator has no set_state()"
            )
        iterator.set_state(state["source"])
        return iterator, iterator
    return itertools.islice(iterator, skip, None), iterator


def _tf_iterator(iterator: Any) -> Any:
    # as_numpy_iterator() wraps the dataset iterator that owns the state.
    return getattr(iterator, "_iterator", iterator)


def save_tf_iterator(iterator: Any) -> str:
    """The tf.data iterator's state as base64 text (what tf.train.Checkpoint would store)."""
    import tensorflow as tf
    from tensorflow.python.ops import gen_dataset_ops

    try:
        variant = gen_dataset_ops.serialize_iterator(_tf_iterator(iterator)._iterator_resource)
    except tf.errors.OpError as error:
        raise ValueError(
            "checkpoint=True could not save this tf.data pipeline's iterator state (it has "
            f"state tf.data cannot save, such as a py_function): {error.message}; stream it "
            "with checkpoint=False to resume by replaying instead"
        ) from None
    return base64.b64encode(tf.io.serialize_tensor(variant).numpy()).decode("ascii")


def load_tf_iterator(iterator: Any, saved: str) -> None:
    import tensorflow as tf
    from tensorflow.python.ops import gen_dataset_ops

    variant = tf.io.parse_tensor(base64.b64decode(saved), out_type=tf.variant)
    gen_dataset_ops.deserialize_iterator(_tf_iterator(iterator)._iterator_resource, variant)


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _load_npy(text: str) -> np.ndarray:
    # Never allow_pickle: a state may come from an untrusted file.
    array: np.ndarray = np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)
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
            "lengths": _npy(lengths),
            "data": base64.b64encode(b"".join(values)).decode("ascii"),
        }
    if array.dtype.kind == "V":
        bits = np.dtype(f"u{array.dtype.itemsize}")
        return {"dtype": array.dtype.name, "npy": _npy(array.view(bits))}
    return _npy(array)


def _decode_leaf(encoded: Any, tf_dtype: Any) -> np.ndarray:
    """The leaf ``_encode_leaf`` saved, as an array of ``tf_dtype``: the dataset's element_spec
    decides the dtype, not the state, which may come from an untrusted file."""
    if tf_dtype.name == "string":
        if not (isinstance(encoded, dict) and encoded.get("dtype") == "string"):
            raise ValueError("state['pending'] holds a leaf that is not a string leaf")
        return _decode_strings(encoded)
    dtype = np.dtype(tf_dtype.as_numpy_dtype)
    if isinstance(encoded, str):
        array = _load_npy(encoded)
    elif isinstance(encoded, dict) and encoded.get("dtype") == dtype.name:
        array = _load_npy(encoded["npy"])
    else:
        raise ValueError(f"state['pending'] holds a leaf that is not a {dtype.name} leaf")
    if dtype.kind == "V" and array.dtype != dtype and array.dtype.itemsize == dtype.itemsize:
        # ML dtypes come back as unsigned integers (or as raw V bytes from older states).
        array = array.view(dtype)
    if array.dtype != dtype:
        raise ValueError(
            f"state['pending'] holds a {array.dtype} leaf where the dataset has {dtype}"
        )
    return array


def _decode_strings(encoded: dict[str, Any]) -> np.ndarray:
    lengths = _load_npy(encoded["lengths"])
    data = base64.b64decode(encoded["data"])
    if lengths.dtype.kind not in "iu" or (lengths < 0).any() or lengths.sum() != len(data):
        raise ValueError("state['pending'] holds a malformed string leaf")
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
    for leaves in encoded:
        if len(leaves) != len(specs):
            raise ValueError(
                f"state['pending'] holds batches of {len(leaves)} leaves, the dataset's have "
                f"{len(specs)}"
            )
        arrays = [_decode_leaf(leaf, spec.dtype) for leaf, spec in zip(leaves, specs, strict=True)]
        if numpy:
            values: list[Any] = [a[()] if a.ndim == 0 else a for a in arrays]
        else:
            values = [
                tf.convert_to_tensor(a, dtype=spec.dtype)
                for a, spec in zip(arrays, specs, strict=True)
            ]
        out.append(tf.nest.pack_sequence_as(element_spec, values))
    return out


def is_tf_dataset(source: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(source, tf.data.Dataset)
