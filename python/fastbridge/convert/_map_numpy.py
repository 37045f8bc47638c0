""":func:`map_numpy`: a NumPy function inside a tf.data pipeline, with static shapes and
dtypes restored on its outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .._leaves import astype_checked
from .._tfdata import is_dataset
from ..errors import ConversionError
from ._tensors import encode, spec_leaves, tf_dtype

if TYPE_CHECKING:
    import tensorflow as tf

#: Same value as ``tf.data.AUTOTUNE`` (-1), usable without importing TensorFlow.
AUTOTUNE = -1

_MISSING = object()  # next()'s default for an empty dataset: no element is this object


def map_numpy(
    ds: tf.data.Dataset,
    fn: Callable[..., Any],
    *,
    output_signature: Any = None,
    num_parallel_calls: int | None = AUTOTUNE,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Run a NumPy function on each element of ``ds`` inside the pipeline.

    ``fn`` runs through ``tf.numpy_function``, and the static shapes and dtypes of
    ``output_signature`` are set on its outputs, so a later ``batch`` and model code see real
    shapes instead of ``<unknown>``. Every output is checked against the signature: a shape
    that does not match, or a dtype that cannot be cast to it safely, raises an error naming
    the output. Exceptions raised by ``fn`` surface while iterating, as a
    ``tf.errors.OpError`` whose message contains the original exception type and message.

    Args:
        ds: a ``tf.data.Dataset`` of dense tensors.
        fn: called like ``Dataset.map`` calls its function (a tuple element is unpacked into
            positional arguments, a dict is passed as one argument), with NumPy arrays; it
            returns a pytree of arrays.
        output_signature: a pytree of ``tf.TensorSpec`` (``None`` for dimensions that vary).
            Without it, ``fn`` is called once, eagerly, on the first element of ``ds``, and
            the structure, dtypes and shapes of that result become the signature (so ``fn``
            must give the same shapes for every element).
        num_parallel_calls: as for ``Dataset.map``; :data:`AUTOTUNE` by default.
        deterministic: as for ``Dataset.map``.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> import fastbridge
        >>> ds = tf.data.Dataset.from_tensor_slices({"x": np.ones((4, 3), np.float32)})
        >>> ds = fastbridge.map_numpy(ds, lambda e: {"y": np.cumsum(e["x"]), "n": e["x"].size})
        >>> ds.batch(2).element_spec["y"]
        TensorSpec(shape=(None, 3), dtype=tf.float32, name=None)
    """
    import tensorflow as tf

    if not is_dataset(ds):
        raise TypeError(f"ds must be a tf.data.Dataset, not {type(ds).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    in_spec = ds.element_spec
    spec_leaves(in_spec)  # refuses ragged and sparse leaves
    call = _called_like_map(fn)
    if output_signature is None:
        output_signature = _inferred_signature(ds, call)
    else:
        _check_signature(output_signature)
    out_specs = tf.nest.flatten(output_signature)
    checked = _OutputCheck(output_signature, getattr(fn, "__qualname__", repr(fn)))

    def run(*flat: np.ndarray) -> list[np.ndarray]:
        return checked.arrays(call(tf.nest.pack_sequence_as(in_spec, list(flat))))

    def apply(*args: Any) -> Any:
        flat = tf.nest.flatten(args)
        outs = tf.numpy_function(run, flat, [s.dtype for s in out_specs], name="map_numpy")
        for out, spec in zip(outs, out_specs, strict=True):
            out.set_shape(spec.shape)
        return tf.nest.pack_sequence_as(output_signature, outs)

    return ds.map(apply, num_parallel_calls=num_parallel_calls, deterministic=deterministic)


def _called_like_map(fn: Callable[..., Any]) -> Callable[[Any], Any]:
    """``fn`` called on one element the way ``Dataset.map`` calls its function."""

    def call(element: Any) -> Any:
        if isinstance(element, tuple) and not hasattr(element, "_fields"):
            return fn(*element)
        return fn(element)

    return call


def _inferred_signature(ds: tf.data.Dataset, call: Callable[[Any], Any]) -> Any:
    """The specs of ``call``'s result on the first element of ``ds``."""
    import tensorflow as tf

    first = next(iter(ds.take(1).as_numpy_iterator()), _MISSING)
    if first is _MISSING:
        raise ConversionError(
            "map_numpy cannot infer output_signature: ds is empty; pass output_signature="
        )
    return tf.nest.map_structure(
        lambda x: tf.TensorSpec(np.shape(x), tf_dtype(np.asarray(x))), call(first)
    )


def _check_signature(output_signature: Any) -> None:
    import tensorflow as tf

    for spec in tf.nest.flatten(output_signature):
        if not isinstance(spec, tf.TensorSpec):
            raise TypeError(
                f"output_signature must be a pytree of tf.TensorSpec, found {type(spec).__name__}"
            )


class _OutputCheck:
    """Checks each result of ``fn`` against ``output_signature``, converting the dtypes it
    may convert."""

    def __init__(self, output_signature: Any, fn_name: str) -> None:
        import tensorflow as tf

        self.signature, self.fn_name = output_signature, fn_name
        self.specs = tf.nest.flatten(output_signature)
        self.names = [name for name, _ in spec_leaves(output_signature)]
        # None for strings: any str or bytes array encodes to tf.string.
        self.dtypes = [s.dtype.as_numpy_dtype if s.dtype != tf.string else None for s in self.specs]

    def arrays(self, result: Any) -> list[np.ndarray]:
        """The arrays ``tf.numpy_function`` returns for ``result``, which must fit the
        signature."""
        import tensorflow as tf

        try:
            tf.nest.assert_same_structure(self.signature, result, check_types=False)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"map_numpy: {self.fn_name} returned a structure that does not match "
                f"output_signature: {e}"
            ) from None
        return [
            encode(self._checked(name, spec, want, np.asarray(value)))
            for name, spec, want, value in zip(
                self.names, self.specs, self.dtypes, tf.nest.flatten(result), strict=True
            )
        ]

    def _checked(self, name: str, spec: Any, want: Any, arr: np.ndarray) -> np.ndarray:
        fn_name = self.fn_name
        if want is not None and arr.dtype != want:
            if not np.can_cast(arr.dtype, want, "same_kind"):
                raise TypeError(
                    f"map_numpy: {fn_name} returned {arr.dtype} for output {name}, which "
                    f"cannot be cast to the signature's {np.dtype(want)}"
                )
            # The same checked conversion as stream(): a value never wraps or overflows.
            arr = astype_checked(
                arr,
                want,
                name,
                f"map_numpy: {fn_name} returned {arr.dtype} and output_signature says "
                f"{np.dtype(want)}); return that dtype, or widen the signature",
            )
        if not spec.shape.is_compatible_with(arr.shape):
            raise ValueError(
                f"map_numpy: {fn_name} returned shape {arr.shape} for output {name}, but "
                f"the signature says {spec.shape}; pass output_signature= with None for "
                "dimensions that vary"
            )
        return arr
