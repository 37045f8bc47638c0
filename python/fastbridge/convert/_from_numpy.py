""":func:`from_numpy`: a ``tf.data.Dataset`` over the rows of NumPy arrays, without copying
them into TensorFlow or embedding them in the graph."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from .._leaves import is_string_array, object_leaf_error, path_name
from .._tfdata import FROM_NUMPY_OP, is_dataset
from ..errors import ConversionError, UnsupportedLeafError
from ._tensors import encode, tf_dtype

if TYPE_CHECKING:
    import tensorflow as tf

from .._native import core as _core  # None without the extension: NumPy copies instead


def from_numpy(
    arrays: Any,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` over the rows of NumPy or ``np.memmap`` arrays (a pytree).

    Unlike ``from_tensor_slices``, the arrays are neither copied into TensorFlow nor embedded
    in the graph: a ``tf.numpy_function`` gathers the rows of each batch of indices from them,
    so start-up is instant, a memmap is read lazily and there is no 2 GB graph limit. Outputs
    have static shapes and dtypes. The dataset reads the arrays as it goes (later writes are
    visible) and cannot be serialized; ``docs/conversions.md`` says more.

    Args:
        arrays: a pytree (dict, tuple, list, ...) of arrays with the same length along axis 0.
        batch_size: yield batches of this many rows; ``None`` yields single rows (gathered in
            chunks internally, then unbatched).
        shuffle: visit rows in a random order, a new one each epoch (a stateless permutation,
            ``tf.random.experimental.index_shuffle``: no shuffle buffer, O(1) memory).
        seed: seed of the shuffle; the same seed gives the same sequence of epochs.
        drop_remainder: drop the last partial batch, so the batch dimension is static.

    Example:
        >>> import numpy as np
        >>> import fastbridge
        >>> ds = fastbridge.from_numpy({"x": np.arange(10.0).reshape(5, 2), "y": np.arange(5)},
        ...                            batch_size=2)
        >>> ds.element_spec["x"]
        TensorSpec(shape=(None, 2), dtype=tf.float64, name=None)
        >>> [b["y"].tolist() for b in ds.as_numpy_iterator()]
        [[0, 1], [2, 3], [4]]
    """
    import tensorflow as tf

    _check_arguments(arrays, batch_size, seed)
    paths, leaves, treedef = _row_arrays(arrays)
    n = _common_rows(paths, leaves)
    gather = _gatherer(leaves, ordered=not shuffle)
    tf_dtypes = [tf_dtype(a) for a in leaves]
    lead = batch_size if (batch_size is not None and drop_remainder) else None

    def fetch(idx: Any) -> Any:
        outs = tf.numpy_function(gather, [idx], tf_dtypes, stateful=False, name=FROM_NUMPY_OP)
        for out, arr in zip(outs, leaves, strict=True):
            out.set_shape((lead, *arr.shape[1:]))
        return jax.tree_util.tree_unflatten(treedef, outs)

    index = _row_indices(n, shuffle, seed)
    index = index.batch(
        _chunk_rows(leaves, batch_size, n), drop_remainder=bool(batch_size and drop_remainder)
    )
    ds = index.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch_size is None:
        ds = ds.unbatch()
        count = n
    else:
        count = n // batch_size if drop_remainder else -(-n // batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(count))


def _check_arguments(arrays: Any, batch_size: Any, seed: Any) -> None:
    if is_dataset(arrays):
        raise TypeError("arrays is already a tf.data.Dataset; from_numpy takes NumPy arrays")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
    ):
        raise TypeError(f"batch_size must be a positive int or None, not {batch_size!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, not {batch_size}")
    if seed is not None and not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int or None, not {seed!r}")


def _row_arrays(arrays: Any) -> tuple[list[str], list[np.ndarray], Any]:
    """The leaves of ``arrays`` as NumPy arrays with a leading axis, their names and treedef."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    if not pairs:
        raise ConversionError("arrays holds no arrays")
    paths = [path_name(p) for p, _ in pairs]
    leaves: list[np.ndarray] = []
    for name, (_, leaf) in zip(paths, pairs, strict=True):
        if isinstance(leaf, np.ndarray):
            arr = leaf
        elif hasattr(leaf, "__array__") and not isinstance(leaf, str | bytes):
            arr = np.asarray(leaf)
        else:
            raise UnsupportedLeafError(
                f"leaf {name} of arrays is a {type(leaf).__name__}, not a NumPy array", name
            )
        if arr.ndim == 0:
            raise ConversionError(f"leaf {name} of arrays is a scalar; it needs a leading axis")
        if arr.dtype.kind == "O" and not is_string_array(arr):
            raise object_leaf_error(name, arr, f"leaf {name} of arrays")
        leaves.append(arr)
    return paths, leaves, treedef


def _common_rows(paths: list[str], leaves: list[np.ndarray]) -> int:
    """The length of axis 0, which every leaf must share."""
    n: int = leaves[0].shape[0]
    for name, arr in zip(paths, leaves, strict=True):
        if arr.shape[0] != n:
            raise ConversionError(
                f"leaf {name} of arrays has {arr.shape[0]} rows but leaf {paths[0]} has {n}; "
                "every leaf needs the same leading dimension"
            )
    return n


def _chunk_rows(leaves: list[np.ndarray], batch_size: int | None, n: int) -> int:
    """Rows gathered per call: a batch, or without ``batch_size`` about 1 MiB (at most 1024)."""
    row_bytes = sum(a.dtype.itemsize * math.prod(a.shape[1:]) for a in leaves)
    chunk = batch_size or max(1, min(1024, (1 << 20) // max(1, row_bytes)))
    return min(chunk, max(n, 1))


def _gatherer(leaves: list[np.ndarray], ordered: bool) -> Callable[[np.ndarray], list[Any]]:
    """The function ``tf.numpy_function`` calls with a chunk of row indices."""

    def gather(idx: np.ndarray) -> list[np.ndarray]:
        if idx.size and ordered:  # in order, a chunk is a contiguous range of rows
            start, stop = int(idx[0]), int(idx[-1]) + 1
            return [_copy_rows(a, start, stop) for a in leaves]
        return [encode(np.asarray(a[idx])) for a in leaves]

    return gather


def _row_indices(n: int, shuffle: bool, seed: int | None) -> tf.data.Dataset:
    """``0..n-1`` in order, or in a new stateless permutation every epoch."""
    import tensorflow as tf

    if not shuffle:
        return tf.data.Dataset.range(n)
    if not n:
        return tf.data.Dataset.range(0)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

    def permuted(key: Any) -> Any:
        seed_pair = tf.stack([key, tf.constant(0x5EED, tf.int64)])
        return tf.data.Dataset.range(n).map(
            lambda i: tf.random.experimental.index_shuffle(i, seed_pair, n - 1)
        )

    return seeds.flat_map(permuted)


def _copy_rows(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a fresh array, copied by the core with the GIL released."""
    rows = arr[start:stop]
    if arr.dtype.kind in "SUO":
        return encode(np.array(rows))
    if not arr.dtype.isnative:
        return encode(rows)  # the swap copies only these rows: a memmap stays streamed
    if _core is None or not rows.flags.c_contiguous or rows.nbytes < (1 << 16):
        return np.array(rows)
    out = np.empty(rows.shape, rows.dtype)
    _core.copy_into(out.reshape(-1).view(np.uint8), 0, rows.reshape(-1).view(np.uint8))
    return out
