"""Sample user code for the doctor's tests: dataset factories (tf.data, Grain, a generator,
a deliberately slow source) and steps (a quick one, a deliberately slow one, one that
raises). Each factory returns a fresh dataset on every call, as the doctor requires."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROWS, COLS = 16, 256


def _rows(i: int) -> np.ndarray:
    return np.full((ROWS, COLS), i, np.float32)


def tf_pipeline() -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.range(10_000).map(lambda i: tf.fill([COLS], tf.cast(i, tf.float32)))
    return ds.batch(ROWS).prefetch(2)


def _slow(x: Any) -> Any:
    time.sleep(0.004)  # a slow decode, per element, in one thread
    return x


def slow_tf_pipeline() -> Any:
    """A source that bounds any job: a sequential map of Python work, no prefetch, no cache."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(10_000).map(lambda i: tf.fill([COLS], tf.cast(i, tf.float32)))
    ds = ds.map(lambda x: tf.numpy_function(_slow, [x], tf.float32, stateful=False))
    return ds.batch(2)


def grain_dataset() -> Any:
    import grain

    rows = grain.MapDataset.range(10_000).map(lambda i: np.full(COLS, i, np.float32))
    return rows.batch(ROWS).to_iter_dataset()


def grain_map_dataset() -> Any:
    import grain

    return grain.MapDataset.range(10_000).map(lambda i: np.full(COLS, i, np.float32)).batch(ROWS)


def generator() -> Iterator[dict[str, np.ndarray]]:
    for i in range(10_000):
        yield {"x": _rows(i), "y": np.arange(ROWS, dtype=np.int32)}


def few() -> list[np.ndarray]:
    return [_rows(i) for i in range(12)]


def three() -> list[np.ndarray]:
    return [_rows(i) for i in range(3)]


def empty() -> list[np.ndarray]:
    return []


def not_iterable() -> int:
    return 42


NOT_CALLABLE = 3


@jax.jit
def _work(x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ x.T).sum()


def step(batch: Any) -> Any:
    """A quick step: one small matmul on every leaf."""
    return [_work(leaf) for leaf in jax.tree_util.tree_leaves(batch) if leaf.ndim == 2]


_weight = jnp.ones((COLS, COLS), jnp.float32) / COLS


@jax.jit
def _heavy(x: jax.Array) -> jax.Array:
    def body(_: int, y: jax.Array) -> jax.Array:
        return jnp.tanh(y @ _weight)

    return jax.lax.fori_loop(0, 1000, body, x).sum()


def slow_step(batch: Any) -> Any:
    """A step that bounds any job (tens of ms on a 2-core CPU): chained matmuls."""
    return _heavy(jax.tree_util.tree_leaves(batch)[0])


def failing_step(batch: Any) -> Any:
    raise ValueError("the model expects 3 leaves")


def grain_loader() -> Any:
    import grain

    class Rows:
        def __len__(self) -> int:
            return 4_000

        def __getitem__(self, i: int) -> np.ndarray:
            return np.full(COLS, i, np.float32)

    sampler = grain.samplers.IndexSampler(4_000, shuffle=False, num_epochs=1)
    return grain.DataLoader(
        data_source=Rows(), sampler=sampler, operations=[grain.transforms.Batch(ROWS)]
    )


def jpeg_pipeline() -> Any:
    """A realistic tf.data pipeline: JPEG decode and a random flip in a parallel map,
    shuffle, batch, prefetch (the benchmark's end-to-end dataset)."""
    from fastbridge.bench.scenarios import e2e_dataset

    return e2e_dataset(records=512, batch=64)


class TrainStep:
    """A train step that keeps its state, called as ``step(batch)``: the doctor's signature
    for a step of the usual ``params = train(params, batch)`` form."""

    def __init__(self) -> None:
        from fastbridge.bench.scenarios import mlp_step

        step, init = mlp_step(hidden=256, batch=64)
        self.train, self.params = step.fn, init()

    def __call__(self, batch: Any) -> Any:
        self.params = self.train(self.params, batch)
        return self.params


_trainer: list[TrainStep] = []


def train_step(batch: Any) -> Any:
    """``step(batch)`` of an MLP's SGD step (built on first use: it compiles)."""
    if not _trainer:
        _trainer.append(TrainStep())
    return _trainer[0](batch)


def grain_workers() -> Any:
    """A Grain dataset whose transformations run in two worker processes."""
    import grain

    options = grain.multiprocessing.MultiprocessingOptions(num_workers=2)
    return grain_dataset().mp_prefetch(options)
