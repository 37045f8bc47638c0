"""What a stream knows about its source before reading a batch: that it is a source at all,
how many batches it says it has, whether a saved state can belong to it, and how to get its
first batch as a template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._position import close_iterator, opened
from ._state import SavedState
from ._tfdata import cardinality, is_dataset


def check_source(source: Any) -> None:
    if isinstance(source, Mapping):
        raise TypeError(
            f"source is a {type(source).__name__}: iterating a mapping yields its keys, not "
            "batches. To stream batches from arrays, make a dataset of them, e.g. "
            "fastbridge.from_numpy(arrays).batch(256), or pass a list of batch dicts"
        )
    if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
        raise TypeError(
            f"source must be a tf.data.Dataset or an iterable of NumPy pytrees, "
            f"got {type(source).__name__}"
        )


def known_length(source: Any) -> int | None:
    """How many batches ``source`` yields, when it says (``len()`` or tf.data's cardinality)."""
    if is_dataset(source):
        return cardinality(source)
    try:
        return len(source)
    except TypeError:
        return None


def check_state_fits(saved: SavedState, source: Any, tf_source: bool, limit: int | None) -> None:
    """Refuse a state that cannot belong to this source, before anything is read."""
    if tf_source and saved.source is not None:
        raise ValueError(
            "state['source'] holds a source iterator's own state (a Grain-style source), but "
            "this source is a tf.data.Dataset"
        )
    if not tf_source and saved.tf_iterator is not None:
        raise ValueError(
            "state['tf_iterator'] holds a tf.data iterator state, but this source is not a "
            "tf.data.Dataset"
        )
    total = limit if limit is not None else known_length(source)
    if total is not None and saved.batches > total:
        raise ValueError(
            f"state['batches'] = {saved.batches}, but this source has {total} batches: the "
            "state was saved from another source"
        )


def first_batch(source: Any, tf_source: bool, numpy_items: bool) -> Any:
    """A function giving the source's first batch: the shape of padding for a process that
    has no batch of its own to take it from (see ``_multihost``)."""

    def first() -> Any:
        if tf_source:
            one = source.take(1)
            return next(iter(one.as_numpy_iterator() if numpy_items else one), None)
        iterator = iter(source)
        try:
            return next(iterator, None)
        finally:
            close_iterator(opened(source, iterator))

    return first
