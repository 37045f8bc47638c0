""":func:`to_numpy`: a whole dataset into one preallocated NumPy array per leaf."""

from __future__ import annotations

import dataclasses
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
    output, by the Rust core with the GIL released, so peak memory stays close to the size of
    the result. How the output is sized and grown, and when a dataset counts as batched, is
    described in ``docs/conversions.md``.

    Args:
        ds: a ``tf.data.Dataset``, or any iterable of pytrees of NumPy arrays. Datasets of
            infinite cardinality raise :class:`ConversionError`.
        memmap: a directory to write the arrays to instead of RAM (for results larger than
            memory). It is created if missing and must be empty (or hold an earlier result of
            ``to_numpy``, which is replaced). It receives one ``.npy`` file per leaf and a
            ``manifest.json``; see :func:`load_memmap`. The returned arrays are ``np.memmap``
            opened ``r+``; ``np.load(file, mmap_mode="r")`` reopens each file with NumPy alone.
        dtype: convert during the copy. ``None`` keeps every dtype; a single dtype applies to
            every leaf; a pytree (e.g. ``{"image": np.float32}``) converts only the leaves it
            names (``None`` or a missing key keeps the leaf). Only ``same_kind`` casts are
            allowed, and integers are never wrapped: a value that does not fit raises
            :class:`~fastbridge.LeafOverflowError`.
        progress: show a ``tqdm`` progress bar (needs ``tqdm``).
        batched: ``True`` concatenates the elements along axis 0 (they are batches), ``False``
            stacks them (``out[i]`` is element ``i``). ``None`` counts a ``tf.data.Dataset`` as
            batched when every leaf of its ``element_spec`` has an unknown leading dimension
            (what ``ds.batch(n)`` produces), and stacks anything else.

    Returns:
        The pytree of arrays (``np.ndarray``, or ``np.memmap`` with ``memmap=``). In-RAM
        results are page-aligned, so ``jax.device_put`` can alias them on CPU.

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
    if is_dataset(ds):
        source = _dataset_source(ds, batched)
    else:
        source = _iterable_source(ds, bool(batched))
    directory = prepare_directory(memmap) if memmap is not None else None
    return _fill(Writer(directory, dtype, source.batched, source.count), source, progress)


@dataclasses.dataclass(frozen=True)
class _Source:
    """What ``to_numpy`` reads, and what it knows about it before reading."""

    ds: Any  # the dataset (perhaps batched for speed, see _dataset_source) or the iterable
    tf_dataset: bool
    batched: bool  # whether each element is a batch, concatenated rather than stacked
    count: int | None  # how many elements, when known
    specs: list[tuple[str, Any]] | None  # a dataset's element_spec leaves


def _dataset_source(ds: tf.data.Dataset, batched: bool | None) -> _Source:
    """A dataset as a source: ``batched=None`` decided from its ``element_spec``, and unbatched
    elements of fixed shape batched inside tf.data (concatenating those batches stacks them)."""
    specs = spec_leaves(ds.element_spec)
    if batched is None:
        batched = bool(specs) and all(
            s.shape.rank is not None and s.shape.rank >= 1 and s.shape[0] is None for _, s in specs
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
        ds = ds.batch(rows)
        specs = spec_leaves(ds.element_spec)
        batched = True
        count = None if count is None else -(-count // rows)
    return _Source(ds, True, batched, count, specs)


def _iterable_source(ds: Iterable[Any], batched: bool) -> _Source:
    """Any other iterable as a source: its length, when it has one, sizes the output."""
    count: int | None = None
    if hasattr(ds, "__len__"):
        try:
            count = len(ds)  # type: ignore[arg-type]
        except TypeError:
            count = None
    return _Source(ds, False, batched, count, None)


def _fill(writer: Writer, source: _Source, progress: bool) -> Any:
    """Give every element of ``source`` to ``writer`` and return its result; on any error the
    writer lets go of what it wrote."""
    bar = _progress_bar(progress, source.count, source.batched)
    iterator = source.ds.as_numpy_iterator() if source.tf_dataset else iter(source.ds)
    try:
        for index, element in enumerate(iterator):
            writer.add(element, index)
            if bar is not None:
                bar.update(1)
        if writer.treedef is None:
            writer.start_empty(source.ds, source.specs)
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
