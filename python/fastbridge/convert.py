"""Whole-dataset conversions between tf.data and NumPy.

* :func:`to_numpy` materializes a dataset into one preallocated array per leaf (in RAM or in
  ``.npy`` files), copying each batch once, through the Rust core, with the GIL released.
* :func:`from_numpy` turns NumPy or ``np.memmap`` arrays into a ``tf.data.Dataset`` without
  embedding them in the graph or copying them into TensorFlow.
* :func:`map_numpy` runs a NumPy function on each element of a pipeline and restores static
  shapes and dtypes on its outputs.

TensorFlow is imported lazily: :func:`to_numpy` also accepts any iterable of NumPy pytrees.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from ._leaves import _is_opaque, _is_string_array, as_array, astype_checked, path_name
from ._tfdata import FROM_NUMPY_OP
from .errors import (
    ConversionError,
    CoreRangeError,
    LeafOverflowError,
    MemmapPathError,
    StructureChangedError,
    UnsupportedLeafError,
)

if TYPE_CHECKING:
    import tensorflow as tf

try:
    from . import _core
except ImportError:  # pure-Python install: NumPy copies instead
    _core = None  # type: ignore[assignment]

__all__ = [
    "AUTOTUNE",
    "ConversionError",
    "MemmapPathError",
    "from_numpy",
    "load_memmap",
    "map_numpy",
    "to_numpy",
]

#: Same value as ``tf.data.AUTOTUNE`` (-1), usable without importing TensorFlow.
AUTOTUNE = -1

# Conversion codes of ``_core.copy_into`` (same as ``_leaves``).
_COPY = 0
_CORE_CONVERSIONS = {
    (np.dtype(np.float64), np.dtype(np.float32)): 1,
    (np.dtype(np.int64), np.dtype(np.int32)): 2,
    (np.dtype(np.uint64), np.dtype(np.uint32)): 3,
    (np.dtype(np.complex128), np.dtype(np.complex64)): 4,
}
_PAGE = mmap.PAGESIZE
# Every .npy file written by to_numpy(memmap=...) has a header of exactly this many bytes, so
# the header can be rewritten in place when the array grows and the data stays page-aligned.
_NPY_HEADER = 4096
_MANIFEST = "manifest.json"
_FORMAT = "fastbridge.to_numpy"
_COPY_THREADS = max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# to_numpy
# --------------------------------------------------------------------------------------------


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
    tf_dataset = _is_tf_dataset(ds)
    spec_leaves: list[tuple[str, Any]] | None = None
    count: int | None = None
    if tf_dataset:
        spec_leaves = _spec_leaves(ds)
        if batched is None:
            batched = bool(spec_leaves) and all(
                s.shape.rank is not None and s.shape.rank >= 1 and s.shape[0] is None
                for _, s in spec_leaves
            )
        count = _cardinality(ds)
        rows = _stacking_batch(spec_leaves) if not batched else 0
        if rows > 1:
            # Stacking elements one by one costs a Python round trip each; tf.data's own batch
            # assembles them in C++, and concatenating those batches stacks the same rows.
            ds = ds.batch(rows)  # type: ignore[union-attr]
            spec_leaves = _spec_leaves(ds)
            batched = True
            count = None if count is None else -(-count // rows)
    else:
        batched = bool(batched)
        if hasattr(ds, "__len__"):
            try:
                count = len(ds)  # type: ignore[arg-type]
            except TypeError:
                count = None
    directory = _prepare_directory(memmap) if memmap is not None else None
    writer = _Writer(directory, dtype, batched, count)
    bar = _progress_bar(progress, count, batched)
    iterator = ds.as_numpy_iterator() if tf_dataset else iter(ds)  # type: ignore[union-attr]
    try:
        for index, element in enumerate(iterator):
            writer.add(element, index)
            if bar is not None:
                bar.update(1)
        if writer.treedef is None:
            writer.start_empty(ds, spec_leaves)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()


def _stacking_batch(spec_leaves: list[tuple[str, Any]] | None) -> int:
    """Elements per internal batch when stacking an unbatched tf.data dataset (about 4 MiB),
    or 0 when elements have no fixed shape (then they are stacked one by one)."""
    if not spec_leaves or not all(s.shape.is_fully_defined() for _, s in spec_leaves):
        return 0
    element_bytes = sum(
        int(np.prod(s.shape.as_list(), dtype=np.int64)) * s.dtype.size for _, s in spec_leaves
    )
    return max(1, (4 << 20) // max(element_bytes, 1))


def load_memmap(path: str | os.PathLike[str], mmap_mode: str | None = "r") -> Any:
    """Reopen the result of ``to_numpy(ds, memmap=path)`` with its structure.

    Layout of ``path``: one ``NNN_<leaf>.npy`` file per leaf (standard ``.npy`` version 1.0
    with a 4096-byte header, so the data is page-aligned) and ``manifest.json``::

        {"format": "fastbridge.to_numpy", "version": 1, "rows": 5, "batched": true,
         "tree": {"x": "000_x.npy", "y": "001_y.npy"},
         "leaves": [{"path": "['x']", "file": "000_x.npy", "dtype": "float32",
                     "shape": [5, 2]}, ...]}

    ``tree`` mirrors the element structure with file names as leaves (dicts stay dicts;
    tuples, lists and namedtuples become lists). Each file also opens with NumPy alone:
    ``np.load(path / "000_x.npy", mmap_mode="r")``, except that leaves of ``ml_dtypes`` types
    (bfloat16, float8) then come back as raw bytes (``|V2``); this function restores the
    dtype recorded in the manifest.

    Example:
        >>> import numpy as np, tempfile, os
        >>> import fastbridge
        >>> d = os.path.join(tempfile.mkdtemp(), "out")
        >>> _ = fastbridge.to_numpy([{"a": np.ones(3)}] * 4, memmap=d)
        >>> fastbridge.load_memmap(d)["a"].shape
        (4, 3)
    """
    root = Path(path)
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except FileNotFoundError:
        raise MemmapPathError(f"{root} has no {_MANIFEST}: not written by to_numpy") from None
    if manifest.get("format") != _FORMAT:
        raise MemmapPathError(f"{root / _MANIFEST} is not a {_FORMAT} manifest")

    dtypes = {leaf["file"]: leaf.get("dtype") for leaf in manifest.get("leaves", [])}

    def build(node: Any) -> Any:
        if isinstance(node, str):
            name = dtypes.get(node)
            return _load_npy(root / node, mmap_mode, _manifest_dtype(name) if name else None)
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        return [build(v) for v in node]

    return build(manifest["tree"])


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


def _is_tf_dataset(ds: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(ds, tf.data.Dataset)


def _spec_leaves(ds: Any) -> list[tuple[str, Any]]:
    import tensorflow as tf

    pairs, _ = jax.tree_util.tree_flatten_with_path(
        ds.element_spec, is_leaf=lambda x: isinstance(x, tf.TypeSpec)
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


def _cardinality(ds: Any) -> int | None:
    import tensorflow as tf

    n = int(ds.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ConversionError(
            "ds has infinite cardinality (it repeats forever); limit it first, e.g. "
            "ds.take(n), before to_numpy"
        )
    return None if n < 0 else n


def _progress_bar(progress: bool, count: int | None, batched: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return tqdm(total=count, unit="batch" if batched else "element", desc="to_numpy")


def _prepare_directory(memmap: Any) -> Path:
    if not isinstance(memmap, str | os.PathLike):
        raise TypeError(f"memmap must be a path (str or os.PathLike), not {type(memmap).__name__}")
    root = Path(memmap)
    try:
        if root.exists() and not root.is_dir():
            raise MemmapPathError(f"memmap={str(root)!r} exists and is not a directory")
        if root.is_dir() and any(root.iterdir()):
            if not (root / _MANIFEST).exists():
                raise MemmapPathError(
                    f"memmap={str(root)!r} is a non-empty directory that to_numpy did not "
                    "write; pass a new or empty directory"
                )
            for child in root.iterdir():  # an earlier result: replace it
                if child.name == _MANIFEST or child.suffix == ".npy":
                    child.unlink()
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".fastbridge-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except MemmapPathError:
        raise
    except OSError as e:
        raise MemmapPathError(f"memmap={str(root)!r} is not writable: {e}") from e
    return root


def _anonymous_map(nbytes: int) -> mmap.mmap:
    # MAP_PRIVATE: a shared anonymous map (Python's default) cannot grow with mremap (the pages
    # past its original size have no backing and raise SIGBUS when touched).
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    return mmap.mmap(-1, nbytes, flags=flags) if flags else mmap.mmap(-1, nbytes)


class _RamStorage:
    """Bytes of one leaf in an anonymous memory map that grows with ``mremap`` (no copy)."""

    def __init__(self, nbytes: int) -> None:
        self._map = _anonymous_map(max(nbytes, _PAGE))
        self.capacity = max(nbytes, _PAGE)
        self.view: np.ndarray = np.frombuffer(self._map, np.uint8)

    def grow(self, nbytes: int) -> None:
        del self.view  # the map cannot move while an array exports it
        try:
            self._map.resize(nbytes)
        except (OSError, SystemError, ValueError):  # no mremap (not Linux): copy once
            fresh = _anonymous_map(nbytes)
            fresh[: self.capacity] = self._map
            self._map.close()
            self._map = fresh
        self.capacity = nbytes
        self.view = np.frombuffer(self._map, np.uint8)

    def finish(self, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        del self.view
        if nbytes < self.capacity:
            try:
                self._map.resize(max(nbytes, _PAGE))
            except (OSError, SystemError, ValueError):
                pass  # keep the larger map
        flat = np.frombuffer(self._map, np.uint8, count=nbytes)
        return flat.view(dtype).reshape(shape)

    def abort(self) -> None:
        self.view = np.empty(0, np.uint8)


def _load_npy(path: Path, mmap_mode: str | None, dtype: np.dtype | None) -> np.ndarray:
    """``np.load`` of one leaf file, as ``dtype`` (the one the manifest records)."""
    arr = np.load(path, mmap_mode=mmap_mode)
    # .npy has no code for ml_dtypes types (bfloat16, float8, int4): their header says raw
    # bytes (|V2), so np.load returns void; the bytes are right and a view restores the dtype.
    if (
        dtype is not None
        and arr.dtype != dtype
        and arr.dtype.kind == "V"
        and arr.dtype.names is None
        and arr.dtype.itemsize == dtype.itemsize
    ):
        arr = arr.view(dtype)
    return arr


def _manifest_dtype(name: Any) -> np.dtype | None:
    """The dtype a manifest names, or None when NumPy does not know it (keep the file's)."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    import ml_dtypes  # a dependency of JAX; importing it registers names like "bfloat16"

    kind = getattr(ml_dtypes, str(name), None)
    return np.dtype(kind) if isinstance(kind, type) else None


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    fields = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    body = repr(fields)
    length = _NPY_HEADER - 10
    if len(body) >= length:
        raise ConversionError(f"shape {shape} does not fit the .npy header")
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", length)
        + (body.ljust(length - 1) + "\n").encode("latin1")
    )


class _FileStorage:
    """Bytes of one leaf in a ``.npy`` file with a fixed-size header, mapped read-write."""

    def __init__(self, path: Path, nbytes: int, dtype: np.dtype, row_shape: tuple[int, ...]):
        self.path = path
        self.capacity = max(nbytes, 1)
        with open(path, "wb") as f:
            f.write(_npy_header(dtype, (0, *row_shape)))
            f.truncate(_NPY_HEADER + self.capacity)  # sparse: no disk used until written
        self.view: np.ndarray = self._map()

    def _map(self) -> np.ndarray:
        return np.memmap(self.path, np.uint8, mode="r+", offset=_NPY_HEADER, shape=(self.capacity,))

    def grow(self, nbytes: int) -> None:
        self.view.flush()  # type: ignore[attr-defined]
        del self.view
        with open(self.path, "r+b") as f:
            f.truncate(_NPY_HEADER + nbytes)
        self.capacity = nbytes
        self.view = self._map()

    def finish(self, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        self.view.flush()  # type: ignore[attr-defined]
        del self.view
        with open(self.path, "r+b") as f:
            f.truncate(_NPY_HEADER + nbytes)
            f.seek(0)
            f.write(_npy_header(dtype, shape))
        # np.memmap cannot map zero bytes
        return _load_npy(self.path, None if nbytes == 0 else "r+", dtype)

    def abort(self) -> None:
        self.view = np.empty(0, np.uint8)


def _is_dtype_like(x: Any) -> bool:
    if x is None or isinstance(x, np.dtype | str):
        return True
    return isinstance(x, type) and issubclass(x, np.generic | float | int | complex | bool)


def _resolve_dtypes(dtype: Any, paths: list[str], sources: list[np.dtype]) -> list[np.dtype]:
    if dtype is None:
        return list(sources)
    if _is_dtype_like(dtype):
        try:
            target = np.dtype(dtype)
        except TypeError as e:
            raise TypeError(f"dtype={dtype!r} is not a NumPy dtype: {e}") from None
        return [target] * len(paths)
    pairs, _ = jax.tree_util.tree_flatten_with_path(dtype, is_leaf=_is_dtype_like)
    named = {path_name(p): v for p, v in pairs}
    unknown = sorted(set(named) - set(paths))
    if unknown:
        raise ConversionError(
            f"dtype names leaf {', '.join(unknown)}, which the dataset does not have "
            f"(its leaves: {', '.join(paths)})"
        )
    out = []
    for name, source in zip(paths, sources, strict=True):
        value = named.get(name)
        if value is None:
            out.append(source)
            continue
        try:
            out.append(np.dtype(value))
        except TypeError as e:
            raise TypeError(
                f"dtype for leaf {name} ({value!r}) is not a NumPy dtype: {e}"
            ) from None
    return out


class _Leaf:
    """One output leaf: where its bytes go and how each incoming chunk is converted."""

    def __init__(
        self, path: str, source: np.dtype, target: np.dtype, row_shape: tuple[int, ...]
    ) -> None:
        self.path, self.source, self.target, self.row_shape = path, source, target, row_shape
        self.row_items = math.prod(row_shape)
        self.row_bytes = self.row_items * target.itemsize
        self.code: int | None
        if target == source:
            self.code = _COPY
        elif (source, target) in _CORE_CONVERSIONS:
            self.code = _CORE_CONVERSIONS[(source, target)]
        elif np.can_cast(source, target, "same_kind"):
            self.code = None  # NumPy does it
        else:
            raise ConversionError(
                f"dtype= asks to convert leaf {path} from {source} to {target}, which is not a "
                "same_kind cast (e.g. float to int); convert it in the pipeline instead"
            )
        self.storage: _RamStorage | _FileStorage


class _Writer:
    def __init__(self, directory: Path | None, dtype: Any, batched: bool, count: int | None):
        self.directory, self.dtype, self.batched, self.count = directory, dtype, batched, count
        self.treedef: Any = None
        self.leaves: list[_Leaf] = []
        self.rows = 0
        self.capacity = 0
        self.tree_json: Any = None

    # -- set-up ---------------------------------------------------------------------------
    def _start(self, treedef: Any, paths: list[str], arrays: list[np.ndarray], rows: int) -> None:
        sources = [a.dtype for a in arrays]
        targets = _resolve_dtypes(self.dtype, paths, sources)
        for path, arr, target in zip(paths, arrays, targets, strict=True):
            row_shape = tuple(arr.shape[1:] if self.batched else arr.shape)
            self.leaves.append(_Leaf(path, arr.dtype, target, row_shape))
        self.treedef = treedef
        if self.count is not None:
            capacity = self.count * rows if self.batched else self.count
        else:
            capacity = max(rows, 1)
        self.capacity = max(capacity, rows)
        for i, leaf in enumerate(self.leaves):
            nbytes = self.capacity * leaf.row_bytes
            if self.directory is None:
                leaf.storage = _RamStorage(nbytes)
            else:
                leaf.storage = _FileStorage(
                    self.directory / _file_name(i, leaf.path), nbytes, leaf.target, leaf.row_shape
                )

    def start_empty(self, ds: Any, spec_leaves: list[tuple[str, Any]] | None) -> None:
        """No element at all: take shapes and dtypes from the element_spec (unknown dims: 0)."""
        if spec_leaves is None:
            raise ConversionError(
                "ds yielded no elements, so the structure and shapes of the result are unknown; "
                "pass a tf.data.Dataset (its element_spec describes them)"
            )
        arrays = []
        for _, spec in spec_leaves:
            if spec.shape.rank is None:
                raise ConversionError("ds is empty and its element_spec has unknown rank")
            dims = [d if d is not None else 0 for d in spec.shape.as_list()]
            if self.batched:
                dims[0] = 0
            arrays.append(np.empty(dims, spec.dtype.as_numpy_dtype))
        structure = jax.tree_util.tree_map(lambda _: 0, ds.element_spec)
        _, treedef = jax.tree_util.tree_flatten(structure)
        self.count = 0
        self._start(treedef, [name for name, _ in spec_leaves], arrays, 0)
        self.tree_json = _tree_json(jax.tree_util.tree_unflatten(treedef, range(len(arrays))))

    # -- per element ------------------------------------------------------------------------
    def add(self, element: Any, index: int) -> None:
        pairs, treedef = jax.tree_util.tree_flatten_with_path(element, is_leaf=_is_opaque)
        paths = [path_name(p) for p, _ in pairs]
        arrays = [as_array(leaf, name) for name, (_, leaf) in zip(paths, pairs, strict=True)]
        what = "batch" if self.batched else "element"
        for name, arr in zip(paths, arrays, strict=True):
            if _is_string_array(arr) or arr.dtype.kind == "O":
                raise UnsupportedLeafError(
                    f"leaf {name} holds strings or objects (dtype {arr.dtype}); to_numpy makes "
                    "fixed-size numeric arrays: encode or drop it in the pipeline first",
                    name,
                )
            if self.batched and arr.ndim == 0:
                raise ConversionError(
                    f"leaf {name} is a scalar in {what} {index}, but batched=True concatenates "
                    "along axis 0; pass batched=False to stack elements"
                )
        rows = arrays[0].shape[0] if (self.batched and arrays) else 1
        if self.batched:
            for name, arr in zip(paths, arrays, strict=True):
                if arr.shape[0] != rows:
                    raise ConversionError(
                        f"{what} {index} has {arr.shape[0]} rows in leaf {name} but {rows} in "
                        f"leaf {paths[0]}; every leaf of a batch needs the same leading dimension"
                    )
        if self.treedef is None:
            self._start(treedef, paths, arrays, rows)
            self.tree_json = _tree_json(jax.tree_util.tree_unflatten(treedef, range(len(paths))))
        elif treedef != self.treedef:
            raise StructureChangedError(
                f"{what} {index} has structure {treedef}, but the first had {self.treedef}"
            )
        for leaf, arr in zip(self.leaves, arrays, strict=True):
            shape = tuple(arr.shape[1:] if self.batched else arr.shape)
            if shape != leaf.row_shape:
                hint = (
                    " (pad to a fixed shape, e.g. padded_batch(n, padded_shapes=...))"
                    if self.batched
                    else " (pass batched=True if the elements are batches)"
                )
                raise StructureChangedError(
                    f"leaf {leaf.path} has shape {arr.shape} in {what} {index}, which does not "
                    f"match the first {what}'s {leaf.row_shape}{hint}"
                )
            if arr.dtype != leaf.source:
                raise StructureChangedError(
                    f"leaf {leaf.path} changed dtype from {leaf.source} to {arr.dtype} at "
                    f"{what} {index}"
                )
        if self.rows + rows > self.capacity:
            self._grow(self.rows + rows)
        for leaf, arr in zip(self.leaves, arrays, strict=True):
            self._copy(leaf, arr, rows, index)
        self.rows += rows

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self.capacity, 1)
        for leaf in self.leaves:
            leaf.storage.grow(max(capacity * leaf.row_bytes, 1))
        self.capacity = capacity

    def _copy(self, leaf: _Leaf, arr: np.ndarray, rows: int, index: int) -> None:
        offset = self.rows * leaf.row_bytes
        nbytes = rows * leaf.row_bytes
        if nbytes == 0:
            return
        dest = leaf.storage.view
        if leaf.code is not None and _core is not None:
            source = arr.reshape(-1).view(np.uint8)
            try:
                _core.copy_into(dest, offset, source, leaf.code, _COPY_THREADS)
            except CoreRangeError as e:
                raise self._overflow(leaf, e.value, index) from None
            return
        target = dest[offset : offset + nbytes].view(leaf.target).reshape(arr.shape)
        if leaf.target.kind in "iu" and arr.dtype.kind in "iu":
            if not np.can_cast(arr.dtype, leaf.target, "safe") and arr.size:
                info = np.iinfo(leaf.target)
                lo, hi = arr.min(), arr.max()
                if lo < info.min or hi > info.max:
                    raise self._overflow(leaf, str(lo if lo < info.min else hi), index)
        np.copyto(target, arr, casting="same_kind")

    def _overflow(self, leaf: _Leaf, value: Any, index: int) -> LeafOverflowError:
        what = "batch" if self.batched else "element"
        return LeafOverflowError(
            f"leaf {leaf.path} has value {value} in {what} {index}, which does not fit "
            f"{leaf.target} (dtype= converts it from {leaf.source}); values are never wrapped",
            leaf.path,
        )

    # -- end --------------------------------------------------------------------------------
    def finish(self) -> Any:
        arrays = [
            leaf.storage.finish(
                self.rows * leaf.row_bytes, leaf.target, (self.rows, *leaf.row_shape)
            )
            for leaf in self.leaves
        ]
        if self.directory is not None:
            files = [_file_name(i, leaf.path) for i, leaf in enumerate(self.leaves)]
            manifest = {
                "format": _FORMAT,
                "version": 1,
                "rows": self.rows,
                "batched": self.batched,
                "tree": _replace_leaves(self.tree_json, files),
                "leaves": [
                    {
                        "path": leaf.path,
                        "file": name,
                        "dtype": str(leaf.target),
                        "shape": [self.rows, *leaf.row_shape],
                    }
                    for leaf, name in zip(self.leaves, files, strict=True)
                ],
            }
            (self.directory / _MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        return jax.tree_util.tree_unflatten(self.treedef, arrays)

    def abort(self) -> None:
        for leaf in self.leaves:
            if hasattr(leaf, "storage"):
                leaf.storage.abort()
        if self.directory is not None:
            for i, leaf in enumerate(self.leaves):
                (self.directory / _file_name(i, leaf.path)).unlink(missing_ok=True)


def _file_name(index: int, path: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in path).strip("_")
    cleaned = "_".join(part for part in cleaned.split("_") if part)[:60]
    return f"{index:03d}_{cleaned or 'root'}.npy"


def _tree_json(tree: Any) -> Any:
    """The element structure as JSON, with leaf indices as leaves."""
    if isinstance(tree, int):
        return tree
    if isinstance(tree, Mapping):
        return {str(k): _tree_json(v) for k, v in tree.items()}
    if isinstance(tree, Sequence):
        return [_tree_json(v) for v in tree]
    children, _ = jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
    return [_tree_json(c) for c in children]


def _replace_leaves(tree: Any, files: list[str]) -> Any:
    if isinstance(tree, int):
        return files[tree]
    if isinstance(tree, dict):
        return {k: _replace_leaves(v, files) for k, v in tree.items()}
    return [_replace_leaves(v, files) for v in tree]


# --------------------------------------------------------------------------------------------
# from_numpy
# --------------------------------------------------------------------------------------------


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
    in the graph as constants: the dataset is ``Dataset.range(n)`` batched into index chunks,
    and a ``tf.numpy_function`` gathers the rows of each chunk from the arrays, so start-up is
    instant, memory holds only the batches in flight (a memmap is read lazily from disk) and
    there is no 2 GB graph limit. Static shapes and dtypes are set on every output, and the
    dataset can be iterated inside ``tf.function``.

    The dataset keeps a reference to ``arrays`` and reads them as it goes: later writes to the
    arrays are visible. Because of the Python function it cannot be serialized (SavedModel,
    tf.data service, ``Dataset.save`` of the graph).

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

    if _is_tf_dataset(arrays):
        raise TypeError("arrays is already a tf.data.Dataset; from_numpy takes NumPy arrays")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)
    ):
        raise TypeError(f"batch_size must be a positive int or None, not {batch_size!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None, not {batch_size}")
    if seed is not None and not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int or None, not {seed!r}")
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
        if arr.dtype.kind == "O" and not _is_string_array(arr):
            raise UnsupportedLeafError(f"leaf {name} of arrays holds Python objects", name)
        leaves.append(arr)
    n = leaves[0].shape[0]
    for name, arr in zip(paths, leaves, strict=True):
        if arr.shape[0] != n:
            raise ConversionError(
                f"leaf {name} of arrays has {arr.shape[0]} rows but leaf {paths[0]} has {n}; "
                "every leaf needs the same leading dimension"
            )
    tf_dtypes = [tf.string if a.dtype.kind in "SUO" else tf.as_dtype(a.dtype) for a in leaves]

    row_bytes = sum(a.dtype.itemsize * math.prod(a.shape[1:]) for a in leaves)
    chunk = batch_size or max(1, min(1024, (1 << 20) // max(1, row_bytes)))
    chunk = min(chunk, max(n, 1))
    ordered = not shuffle

    def gather(idx: np.ndarray) -> list[np.ndarray]:
        if idx.size and ordered:
            start, stop = int(idx[0]), int(idx[-1]) + 1
            return [_copy_rows(a, start, stop) for a in leaves]
        return [_encode(np.asarray(a[idx])) for a in leaves]

    def fetch(idx: Any) -> Any:
        outs = tf.numpy_function(gather, [idx], tf_dtypes, stateful=False, name=FROM_NUMPY_OP)
        lead = batch_size if (batch_size is not None and drop_remainder) else None
        for out, arr in zip(outs, leaves, strict=True):
            out.set_shape((lead, *arr.shape[1:]))
        return jax.tree_util.tree_unflatten(treedef, outs)

    if shuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)

        def permuted(key: Any) -> Any:
            seed_pair = tf.stack([key, tf.constant(0x5EED, tf.int64)])
            return tf.data.Dataset.range(n).map(
                lambda i: tf.random.experimental.index_shuffle(i, seed_pair, n - 1)
            )

        index = seeds.flat_map(permuted) if n else tf.data.Dataset.range(0)
    else:
        index = tf.data.Dataset.range(n)
    index = index.batch(chunk, drop_remainder=bool(batch_size and drop_remainder))
    ds = index.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if batch_size is None:
        ds = ds.unbatch()
        count = n
    else:
        count = n // batch_size if drop_remainder else -(-n // batch_size)
    return ds.apply(tf.data.experimental.assert_cardinality(count))


def _copy_rows(arr: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as a fresh array, copied by the core with the GIL released."""
    rows = arr[start:stop]
    if arr.dtype.kind in "SUO":
        return _encode(np.array(rows))
    if not arr.dtype.isnative:
        return _encode(rows)  # the swap copies only these rows: a memmap stays streamed
    if _core is None or not rows.flags.c_contiguous or rows.nbytes < (1 << 16):
        return np.array(rows)
    out = np.empty(rows.shape, rows.dtype)
    _core.copy_into(out.reshape(-1).view(np.uint8), 0, rows.reshape(-1).view(np.uint8))
    return out


def _encode(arr: np.ndarray) -> np.ndarray:
    """``arr`` as TensorFlow reads it: str as UTF-8 bytes, numbers in native byte order."""
    if arr.dtype.kind == "U":
        return np.char.encode(arr, "utf-8")
    if not arr.dtype.isnative:
        # TensorFlow has no big-endian dtypes: tf.numpy_function would read the bytes as native.
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


# --------------------------------------------------------------------------------------------
# map_numpy
# --------------------------------------------------------------------------------------------


def map_numpy(
    ds: tf.data.Dataset,
    fn: Callable[..., Any],
    *,
    output_signature: Any = None,
    num_parallel_calls: int | None = AUTOTUNE,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Run a NumPy function on each element of ``ds`` inside the pipeline.

    ``fn`` receives NumPy arrays in the element's structure and returns a pytree of arrays;
    it is called like ``Dataset.map`` calls its function (a tuple element is unpacked into
    positional arguments, a dict is passed as one argument). It runs through
    ``tf.numpy_function``, and the static shapes and dtypes of ``output_signature`` are set on
    its outputs, so a later ``batch`` and model code see real shapes instead of ``<unknown>``.

    Without ``output_signature``, ``fn`` is called once, eagerly, on the first element of
    ``ds`` and the structure, dtypes and shapes of that result become the signature (the
    first element is computed twice, and ``fn`` must give the same shapes for every element).
    Outputs are checked on every call: a value whose shape does not match the signature, or
    whose dtype cannot be cast to it safely, raises an error naming the leaf. Pass an
    ``output_signature`` (a pytree of ``tf.TensorSpec``, ``None`` for dimensions that vary)
    to skip the extra call or allow varying shapes.

    Exceptions raised by ``fn`` surface while iterating, as a ``tf.errors.OpError`` whose
    message contains the original exception type and message.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> import fastbridge
        >>> ds = tf.data.Dataset.from_tensor_slices({"x": np.ones((4, 3), np.float32)})
        >>> ds = fastbridge.map_numpy(ds, lambda e: {"y": np.cumsum(e["x"]), "n": e["x"].size})
        >>> ds.batch(2).element_spec["y"]
        TensorSpec(shape=(None, 3), dtype=tf.float32, name=None)
    """
    import tensorflow as tf

    if not isinstance(ds, tf.data.Dataset):
        raise TypeError(f"ds must be a tf.data.Dataset, not {type(ds).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, not {type(fn).__name__}")
    in_spec = ds.element_spec
    for name, spec in _spec_leaves(ds):
        del spec, name  # _spec_leaves rejects ragged and sparse leaves
    fn_name = getattr(fn, "__qualname__", repr(fn))

    def call(element: Any) -> Any:
        if isinstance(element, tuple) and not hasattr(element, "_fields"):
            return fn(*element)
        return fn(element)

    if output_signature is None:
        first = next(iter(ds.take(1).as_numpy_iterator()), _MISSING)
        if first is _MISSING:
            raise ConversionError(
                "map_numpy cannot infer output_signature: ds is empty; pass output_signature="
            )
        output_signature = tf.nest.map_structure(
            lambda x: tf.TensorSpec(np.shape(x), _tf_dtype(np.asarray(x))), call(first)
        )
    else:
        for spec in tf.nest.flatten(output_signature):
            if not isinstance(spec, tf.TensorSpec):
                raise TypeError(
                    "output_signature must be a pytree of tf.TensorSpec, found "
                    f"{type(spec).__name__}"
                )
    out_specs = tf.nest.flatten(output_signature)
    out_names = [path_name(p) for p, _ in _spec_paths(output_signature)]
    np_dtypes = [s.dtype.as_numpy_dtype if s.dtype != tf.string else None for s in out_specs]

    def run(*flat: np.ndarray) -> list[np.ndarray]:
        element = tf.nest.pack_sequence_as(in_spec, list(flat))
        result = call(element)
        try:
            tf.nest.assert_same_structure(output_signature, result, check_types=False)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"map_numpy: {fn_name} returned a structure that does not match "
                f"output_signature: {e}"
            ) from None
        outs = []
        for name, spec, want, value in zip(
            out_names, out_specs, np_dtypes, tf.nest.flatten(result), strict=True
        ):
            arr = np.asarray(value)
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
            outs.append(_encode(arr))
        return outs

    def apply(*args: Any) -> Any:
        flat = tf.nest.flatten(args)
        outs = tf.numpy_function(run, flat, [s.dtype for s in out_specs], name="map_numpy")
        for out, spec in zip(outs, out_specs, strict=True):
            out.set_shape(spec.shape)
        return tf.nest.pack_sequence_as(output_signature, outs)

    return ds.map(apply, num_parallel_calls=num_parallel_calls, deterministic=deterministic)


_MISSING = object()


def _tf_dtype(arr: np.ndarray) -> Any:
    import tensorflow as tf

    if arr.dtype.kind in "SUO":
        return tf.string
    return tf.as_dtype(arr.dtype)


def _spec_paths(signature: Any) -> list[tuple[Any, Any]]:
    import tensorflow as tf

    # tf.nest and jax both order dict keys by sorted key, so the two flattenings line up.
    pairs, _ = jax.tree_util.tree_flatten_with_path(
        signature, is_leaf=lambda x: isinstance(x, tf.TypeSpec)
    )
    return pairs
