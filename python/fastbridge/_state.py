"""Checkpointable streams: what ``Stream.state()`` saves and how ``stream(state=...)`` resumes.

A state is a small JSON-serializable dict::

    {"version": 1, "batches": <batches consumed>, "source": <source state or None>}

* Sources whose iterator has ``get_state()`` / ``set_state()`` (Grain-style): the producer
  records the iterator's state right after reading each batch and hands it along with the batch,
  so the saved state is exactly "after the last batch the consumer received", however far the
  producer has prefetched. Resuming calls ``set_state``.
* Other sources (``tf.data`` datasets included) are replayed: resuming skips the batches already
  consumed (``Dataset.skip`` for tf.data). This is exact for deterministic pipelines (seeded
  ``shuffle``, deterministic ``map``), which is what resumable training needs anyway.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from typing import Any

STATE_VERSION = 1


def initial_state(iterator: Any) -> dict[str, Any]:
    source = iterator.get_state() if hasattr(iterator, "get_state") else None
    return {"version": STATE_VERSION, "batches": 0, "source": source}


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
) -> Iterator[Any]:
    """An iterator over ``source`` positioned after ``state['batches']`` batches."""
    skip = 0 if state is None else state["batches"]
    if tf_source:
        ds = source.skip(skip) if skip else source
        return iter(ds.as_numpy_iterator() if numpy else ds)  # type: ignore[no-any-return]
    iterator = iter(source)
    if state is not None and state.get("source") is not None:
        if not hasattr(iterator, "set_state"):
            raise ValueError(
                "state holds a source state, but this source's iterator has no set_state()"
            )
        iterator.set_state(state["source"])
        return iterator
    return itertools.islice(iterator, skip, None)


def is_tf_dataset(source: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(source, tf.data.Dataset)
