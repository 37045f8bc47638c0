"""Keras 3 input: ``model.fit(fastbridge.keras.dataset(ds), epochs=3)`` on the JAX backend.

:func:`dataset` wraps a source in a ``keras.utils.PyDataset`` that opens a fresh
:func:`fastbridge.stream` at the start of every epoch (each epoch is one pass over the
source, every batch exactly once, in the source's order) and closes it at the end, so
``fit`` with ``epochs``, ``validation_data``, ``evaluate`` and ``predict`` all take it. Batches
reach the jitted train step as the ``jax.Array`` leaves the stream made, without a copy.

With ``pad_last=True`` the stream's mask becomes the batch's ``sample_weight`` (``1.0`` on
real rows, ``0.0`` on padding), so the train step compiles once. Give the loss
``reduction="mean_with_sample_weight"`` and training is what it is unpadded, up to float
rounding (the padding rows carry no weight and do not count in the mean); Keras's per-epoch
averages of loss and metrics still weigh each batch by its rows, padding included, so the
numbers it reports for the last batch differ a little. Predict without ``pad_last`` (or drop
the padded rows), since every padded row gets a prediction.

Keras asks a ``PyDataset`` for batches by index and shuffles those indices by default; the
index is not used here: shuffling is the source's job (``ds.shuffle``), and a stream yields
batches in order.

>>> import os; os.environ.setdefault("KERAS_BACKEND", "jax")  # doctest: +SKIP
>>> import numpy as np, keras
>>> from fastbridge.keras import dataset
>>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
>>> batches = [(x[i : i + 16], x[i : i + 16].sum(1, keepdims=True)) for i in range(0, 64, 16)]
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
>>> model.compile(optimizer="sgd", loss="mse")
>>> history = model.fit(dataset(batches), epochs=2, verbose=0)
>>> len(history.history["loss"])
2
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax.numpy as jnp
import keras

from ._options import StreamOptions
from ._sources import known_length
from ._stream import Stream

__all__ = ["StreamDataset", "dataset"]


class StreamDataset(keras.utils.PyDataset):  # type: ignore[misc]
    """A ``keras.utils.PyDataset`` of a fastbridge stream: one new stream per epoch."""

    def __init__(self, source: Iterable[Any], options: StreamOptions, steps: int | None) -> None:
        self._stream: Stream[Any] | None = None
        super().__init__(workers=1, use_multiprocessing=False)
        if options.state is not None:
            raise ValueError(
                "state= does not apply to a Keras dataset: every epoch starts a new pass over "
                "the source (resume a Keras job with its own checkpoint callbacks)"
            )
        length = known_length(source)
        if steps is None and length is None:
            raise ValueError(
                "the source's length is unknown, so Keras cannot tell where an epoch ends: "
                "pass steps= (batches per epoch), or give a tf.data source a known cardinality "
                "(ds.apply(tf.data.experimental.assert_cardinality(n)))"
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)):
            raise TypeError(f"steps must be an int >= 1 or None, got {steps!r}")
        if steps is not None and not 1 <= steps <= (length if length is not None else steps):
            raise ValueError(f"steps must be from 1 to the source's {length} batches, got {steps}")
        self._source = source
        self._options = options
        self._steps = steps if steps is not None else length

    @property
    def num_batches(self) -> int | None:
        return self._steps

    def __len__(self) -> int:
        return int(self._steps or 0)

    def on_epoch_begin(self) -> None:
        self._close()
        self._stream = Stream(self._source, self._options)

    def on_epoch_end(self) -> None:
        self._close()

    def __getitem__(self, index: int) -> Any:
        del index  # batches come in the source's order; see the module docstring
        if self._stream is None:  # predict() on an older Keras, or a direct call
            self.on_epoch_begin()
        assert self._stream is not None
        try:
            batch = next(self._stream)
        except StopIteration:
            raise IndexError(
                f"the source ended before the {self._steps} batches of an epoch"
            ) from None
        if not self._options.pad_last:
            return batch
        batch, mask = batch
        weight = mask.astype(jnp.float32)
        if isinstance(batch, tuple) and len(batch) == 2:
            return (*batch, weight)
        if isinstance(batch, tuple) and len(batch) == 1:
            return (batch[0], None, weight)
        if isinstance(batch, tuple):
            raise ValueError(
                "pad_last=True gives the mask as sample_weight: the source's batches must be "
                f"x or (x, y), got a tuple of {len(batch)}"
            )
        return (batch, None, weight)

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __del__(self) -> None:
        self._close()


def dataset(source: Iterable[Any], *, steps: int | None = None, **options: Any) -> StreamDataset:
    """A Keras input that streams ``source`` through fastbridge, one pass per epoch.

    ``options`` are :func:`fastbridge.stream`'s (``prefetch``, ``backend``, ``pad_last``, ...;
    not ``state``). ``steps`` caps the batches per epoch (default: the source's length, which
    must then be known).
    """
    if keras.backend.backend() != "jax":
        raise ValueError(
            "fastbridge.keras hands jax.Array batches to Keras, which needs its JAX backend "
            f"(set KERAS_BACKEND=jax before importing keras); this Keras runs on "
            f"{keras.backend.backend()!r}"
        )
    return StreamDataset(source, StreamOptions(**options), steps)
