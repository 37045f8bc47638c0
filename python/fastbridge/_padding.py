"""``pad_last=True``: pad a short final batch to the full batch size and add a mask.

Every batch then has the same shapes, so a jitted step compiles once. Batches are yielded as
``(batch, mask)`` where ``mask`` is a bool array of shape ``[batch_size]`` that is ``True`` for
real rows and ``False`` for padding (padding rows are zeros).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ._leaves import host_view, is_opaque, path_name
from ._tfdata import tf_module


def _blank(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Padding for ``array``: zeros, or empty strings for a leaf of Python strings."""
    if array.dtype == object:
        empty = type(array.flat[0])() if array.size else b""
        return np.full(shape, empty, dtype=object)
    return np.zeros(shape, array.dtype)


def _leading(leaf: Any) -> int | None:
    shape = getattr(leaf, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


class Padder:
    """Turns each batch into ``(batch, mask)``; the batch size is ``batch_size`` or the first
    batch's rows. Runs on the producer thread, after the source has produced the batch."""

    def __init__(self, batch_size: int | None) -> None:
        self.full = batch_size
        self._ones: np.ndarray | None = None

    def __call__(self, item: Any) -> tuple[Any, Any]:
        tf = tf_module()
        pairs, treedef = jax.tree_util.tree_flatten_with_path(item, is_leaf=is_opaque)
        rows = {path_name(p): _leading(leaf) for p, leaf in pairs}
        sizes = {n for n in rows.values() if n is not None}
        if len(sizes) != 1:
            raise ValueError(
                "pad_last=True needs every leaf to share its leading (batch) dimension; got "
                + ", ".join(f"{name}: {n}" for name, n in rows.items())
            )
        (n,) = sizes
        if self.full is None:
            self.full = n
        full = self.full
        if n > full:
            raise ValueError(
                f"pad_last=True: a batch has {n} rows, more than batch_size={full}; pass "
                "batch_size= explicitly when the first batch is not full"
            )
        if n == full:
            if self._ones is None:
                self._ones = np.ones(full, np.bool_)
            mask: Any = self._ones
            padded = item
        else:
            mask = np.zeros(full, np.bool_)
            mask[:n] = True
            leaves = []
            for _, leaf in pairs:
                array = host_view(leaf)  # an EagerTensor's buffer, without a copy
                if array.ndim == 0:  # a per-batch scalar has no rows to pad
                    leaves.append(array)
                    continue
                leaves.append(np.concatenate([array, _blank(array, (full - n, *array.shape[1:]))]))
            padded = jax.tree_util.tree_unflatten(treedef, leaves)
        if tf is not None and any(isinstance(leaf, tf.Tensor) for _, leaf in pairs):
            mask = tf.constant(mask)
        return padded, mask

    def empty_like(self, item: Any) -> tuple[Any, Any]:
        """A batch that is all padding (zeros, mask all ``False``) shaped like ``item``: what a
        process that ran out of data yields while the others still have batches."""
        padded, _ = self(item)
        zeros = jax.tree_util.tree_map(
            lambda leaf: _blank(host_view(leaf), np.shape(leaf)), padded, is_leaf=is_opaque
        )
        return zeros, np.zeros(self.full or 0, np.bool_)
