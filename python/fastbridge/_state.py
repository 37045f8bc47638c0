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
  in ``tf.nest`` order), and is still JSON-serializable.
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
        pending = decode_items(state.get("pending", []), source.element_spec)
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


def _npy(array: Any) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_items(items: list[Any]) -> list[list[str]]:
    """Read-ahead batches as JSON-friendly lists of base64 ``.npy`` leaves (tf.nest order)."""
    import tensorflow as tf

    return [[_npy(leaf) for leaf in tf.nest.flatten(item)] for item in items]


def decode_items(encoded: list[list[str]], element_spec: Any) -> list[Any]:
    import tensorflow as tf

    out = []
    for leaves in encoded:
        arrays = [
            np.load(io.BytesIO(base64.b64decode(leaf)), allow_pickle=False) for leaf in leaves
        ]
        out.append(tf.nest.pack_sequence_as(element_spec, arrays))
    return out


def is_tf_dataset(source: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(source, tf.data.Dataset)
