"""Synthetic batches and the datasets that repeat them: what the tf.data scenarios feed.

>>> batch = make_batch("dict", 64 * KiB)
>>> sorted(batch) == sorted(DICT_SHARES), batch_nbytes(batch) <= 64 * KiB
(True, True)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

KiB, MiB = 1 << 10, 1 << 20
ROWS = 16
"""Examples per synthetic batch; leaves are (ROWS, n) so a batch looks like a real one."""

# Shares of a 6-leaf batch's bytes, leaf by leaf (they add up to 1).
DICT_SHARES: dict[str, tuple[Any, float]] = {
    "image": (np.uint8, 0.5),
    "features": (np.float32, 0.25),
    "price": (np.float64, 0.0625),
    "user_id": (np.int64, 0.0625),
    "mask": (np.bool_, 0.0625),
    "embedding": (np.float16, 0.0625),
}
LAYOUTS = ("f32", "dict")


def tf_module() -> Any:
    """TensorFlow, imported late (it takes seconds) and with its logging quietened."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow imports Keras, which fixes its backend then: the Keras route needs JAX's.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import tensorflow as tf

    # TensorFlow must not grab an accelerator JAX is using.
    tf.config.set_visible_devices([], "GPU")
    return tf


def make_batch(layout: str, nbytes: int, seed: int = 0) -> Any:
    """One synthetic batch of about ``nbytes``: a float32 array, or a 6-leaf dict."""
    rng = np.random.default_rng(seed)
    if layout == "f32":
        cols = max(1, nbytes // (ROWS * 4))
        return rng.standard_normal((ROWS, cols), dtype=np.float32)
    if layout != "dict":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out: dict[str, np.ndarray] = {}
    for name, (dtype, share) in DICT_SHARES.items():
        item = np.dtype(dtype).itemsize
        cols = max(1, int(nbytes * share) // (ROWS * item))
        shape = (ROWS, cols)
        if dtype == np.uint8:
            out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype == np.bool_:
            out[name] = rng.random(shape) < 0.5
        elif dtype == np.int64:
            # Within int32: with JAX's x64 mode off every route narrows int64 to int32.
            out[name] = rng.integers(-(2**31), 2**31, shape, dtype=np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(dtype)
    return out


def batch_nbytes(batch: Any) -> int:
    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(batch)))


def repeated_dataset(batch: Any) -> Any:
    """One cached batch, repeated forever: producing it costs almost nothing."""
    return tf_module().data.Dataset.from_tensors(batch).repeat()
