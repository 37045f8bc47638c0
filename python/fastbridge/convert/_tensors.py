"""How NumPy values meet TensorFlow in the converters: dtypes, bytes and the leaves of a
``tf.TypeSpec`` pytree. TensorFlow is imported only when one of these is called."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from .._leaves import path_name
from ..errors import UnsupportedLeafError


def spec_leaves(structure: Any) -> list[tuple[str, Any]]:
    """The ``(name, tf.TensorSpec)`` leaves of an ``element_spec`` or ``output_signature``, in
    ``tf.nest`` order (jax and tf.nest both order dict keys by sorted key). Ragged and sparse
    leaves raise ``UnsupportedLeafError``."""
    import tensorflow as tf

    pairs, _ = jax.tree_util.tree_flatten_with_path(
        structure, is_leaf=lambda x: isinstance(x, tf.TypeSpec)
    )
    leaves = []
    for p, spec in pairs:
        name = path_name(p)
        if not isinstance(spec, tf.TensorSpec):
            raise UnsupportedLeafError(
                f"leaf {name} is a {type(spec).__name__}: ragged and sparse tensors have no "
                "dense layout; convert them first (e.g. .to_tensor() or tf.sparse.to_dense)",
                name,
            )
        leaves.append((name, spec))
    return leaves


def tf_dtype(arr: np.ndarray) -> Any:
    """The TensorFlow dtype that holds ``arr``: ``tf.string`` for str, bytes and objects."""
    import tensorflow as tf

    if arr.dtype.kind in "SUO":
        return tf.string
    return tf.as_dtype(arr.dtype)


def encode(arr: np.ndarray) -> np.ndarray:
    """``arr`` as TensorFlow reads it: str as UTF-8 bytes, numbers in native byte order."""
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8")
    if not arr.dtype.isnative:
        # TensorFlow has no big-endian dtypes: tf.numpy_function would read the bytes as native.
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr
