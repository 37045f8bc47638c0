""":func:`to_numpy`: a whole dataset into one preallocated NumPy array per leaf."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .._tfdata import cardinality, is_dataset, is_infinite
from ..errors import ConversionError
from ._directory import prepare_directory
from ._tensors import spec_leaves
from ._writer import Writer

if TYPE_CHECKING:
    import tensorflow as tf


def to_numpy(
    ds: tf.data.Dataset | Iterable[Any],
    *,
    memmap: str | os.PathLike[str] | None = None,
    dtype: Any = None,
    progress: bool = False,
    batched: bool | None = None,
) -> Any:
    """Materialize a whole dataset into one preallocated NumPy array per leaf.

    The structure of the elements is kept (a dataset of ``{"image", "label"}`` dicts gives a
    dict of two arrays). Each element or batch is copied once, straight into its place in the
    output, by the Rust core with the GIL released; nothing else holds a second copy, so peak
    memory stays close to the size of the result.

    **Stacking or concatenating.** An *unbatched* dataset is stacked: ``out[i]`` is element
    ``i`` and the result equals ``np.stack(list(ds.as_numpy_iterator()))`` leaf by leaf. A
    *batched* dataset is concatenated along axis 0: the result equals
    ``np.concatenate(list(ds.as_numpy_iterator()))``. With ``batched=None`` (the default) a
    ``tf.data.Dataset`` counts as batched when every leaf of its ``element_spec`` has an unknown
    leading dimension (what ``ds.batch(n)`` produces); anything else, including
    ``batch(n, drop_remainder=True)`` (static leading dimension) and plain Python iterables,
    is stacked. Pass ``batched=True`` or ``False`` to choose explicitly.

    **Speed.** Unbatched tf.data datasets whose elements have fixed shapes are batched inside
    tf.data (about 4 MiB at a time) before the copy; the result is the same.

    **Size.** When ``ds.cardinality()`` is known the output is allocated once (for a batched
    dataset: batches x rows of the first batch, trimmed at the end). Otherwise it grows in
    place by doubling: in RAM it lives in an anonymous memory map enlarged with ``mremap``
    (pages are never copied; untouched pages cost no memory), on disk the files are extended
    and remapped. Datasets of infinite cardinality raise :class:`ConversionError`.

    In-RAM results are page-aligned, so ``jax.device_put`` can alias them on CPU.

    Args:
        ds: a ``tf.data.Dataset``, or any iterable of pytrees of NumPy arrays.
        memmap: a directory to write the arrays to instead of RAM (for results larger than
            memory). It is created if missing and must be empty (or hold an earlier result of
            ``to_numpy``, which is replaced). It receives one ``.npy`` file per leaf and a
            ``manifest.json``; see :func:`load_memmap`. The returned arrays are ``np.memmap``
            opened ``r+``; ``np.load(file, mmap_mode="r")`` reopens each file with NumPy alone.
        dtype: convert during the copy. ``None`` keeps every dtype; a single dtype applies to
            every leaf; a pytree (e.g. ``{"image": np.float32}``) converts only the leaves it
            names (``None`` or a missing key keeps the leaf). float64→float32, int64→int32,
            uint64→uint32 and complex128→complex64 run in the core; other ``same_kind`` casts
            run in NumPy. Integers are never wrapped: a value that does not fit raises
            :class:`~fastbridge.LeafOverflowError`.
        progress: show a ``tqdm`` progress bar (needs ``tqdm``).
        batched: see above; ``None`` decides from the ``element_spec``.

    Returns:
        The pytree of arrays (``np.ndarray``, or ``np.memmap`` with ``memmap=``).

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> import fastbridge
        >>> ds = tf.data.Dataset.from_tensor_slices(
        ...     {"x": np.arange(10.0).reshape(5, 2), "y": np.arange(5)})
        >>> out = fastbridge.to_numpy(ds.batch(2), dtype={"x": np.float32})
        >>> out["x"].shape, out["x"].dtype, out["y"].tolist()
        ((5, 2), dtype('float32'), [0, 1, 2, 3, 4])
    """
    _check_source(ds)
    if batched is not None and not isinstance(batched, bool):
        raise TypeError(f"batched must be True, False or None, not {batched!r}")
    tf_dataset = is_dataset(ds)
    specs: list[tuple[str, Any]] | None = None
    count: int | None = None
    if tf_dataset:
        specs = spec_leaves(ds.element_spec)  # type: ignore[union-attr]
        if batched is None:
            batched = bool(specs) and all(
                s.shape.rank is not None and s.shape.rank >= 1 and s.shape[0] is None
                for _, s in specs
            )
        count = cardinality(ds)
        if count is None and is_infinite(ds):
            raise ConversionError(
                "ds has infinite cardinality (it repeats forever); limit it first, e.g. "
                "ds.take(n), before to_numpy"
            )
        rows = _stacking_batch(specs) if not batched else 0
        if rows > 1:
            # Stacking elements one by one costs a Python round trip each; tf.data's own batch
            # assembles them in C++, and concatenating those batches stacks the same rows.
            ds = ds.batch(rows)  # type: ignore[union-attr]
            specs = spec_leaves(ds.element_spec)
            batched = True
            count = None if count is None else -(-count // rows)
    else:
        batched = bool(batched)
        if hasattr(ds, "__len__"):
            try:
                count = len(ds)  # type: ignore[arg-type]
            except TypeError:
                count = None
    directory = prepare_directory(memmap) if memmap is not None else None
    writer = Writer(directory, dtype, batched, count)
    bar = _progress_bar(progress, count, batched)
    iterator = ds.as_numpy_iterator() if tf_dataset else iter(ds)  # type: ignore[union-attr]
    try:
        for index, element in enumerate(iterator):
            writer.add(element, index)
            if bar is not None:
                bar.update(1)
        if writer.treedef is None:
            writer.start_empty(ds, specs)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()


def _stacking_batch(specs: list[tuple[str, Any]] | None) -> int:
    """Elements per internal batch when stacking an unbatched tf.data dataset (about 4 MiB),
    or 0 when elements have no fixed shape (then they are stacked one by one)."""
    if not specs or not all(s.shape.is_fully_defined() for _, s in specs):
        return 0
    element_bytes = sum(
        int(np.prod(s.shape.as_list(), dtype=np.int64)) * int(s.dtype.size) for _, s in specs
    )
    return max(1, (4 << 20) // max(element_bytes, 1))


def _check_source(ds: Any) -> None:
    if isinstance(ds, np.ndarray | Mapping | str | bytes) or not hasattr(ds, "__iter__"):
        hint = (
            "; to turn arrays into a dataset use fastbridge.from_numpy"
            if isinstance(ds, np.ndarray | Mapping)
            else ""
        )
        raise TypeError(
            f"ds must be a tf.data.Dataset or an iterable of elements, not "
            f"{type(ds).__name__}{hint}"
        )


def _progress_bar(progress: bool, count: int | None, batched: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return tqdm(total=count, unit="batch" if batched else "element", desc="to_numpy")
