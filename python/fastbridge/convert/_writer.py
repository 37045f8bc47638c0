"""The writer behind ``to_numpy``: checks each element or batch against the first one and
copies it, converted, into its place in one growing array per leaf."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._leaves import COPY, NARROWING, astype_checked, flat_arrays, is_string_array, path_name
from .._native import core as _core  # None without the extension: NumPy copies instead
from ..errors import (
    ConversionError,
    CoreRangeError,
    LeafOverflowError,
    StructureChangedError,
    UnsupportedLeafError,
)
from ._directory import file_name, tree_json, write_manifest
from ._storage import FileStorage, RamStorage, Storage

# Conversion codes of ``_core.copy_into``: (source, target) -> code.
_CORE_CONVERSIONS = {(source, target): code for source, (target, code) in NARROWING.items()}
_COPY_THREADS = max(1, min(4, os.cpu_count() or 1))


def _is_dtype_like(x: Any) -> bool:
    if x is None or isinstance(x, np.dtype | str):
        return True
    return isinstance(x, type) and issubclass(x, np.generic | float | int | complex | bool)


def resolve_dtypes(dtype: Any, paths: list[str], sources: list[np.dtype]) -> list[np.dtype]:
    """The target dtype of each leaf that ``to_numpy``'s ``dtype=`` asks for."""
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


class Leaf:
    """One output leaf: where its bytes go and how each incoming chunk is converted."""

    def __init__(
        self, path: str, source: np.dtype, target: np.dtype, row_shape: tuple[int, ...]
    ) -> None:
        self.path, self.source, self.target, self.row_shape = path, source, target, row_shape
        self.row_items = math.prod(row_shape)
        self.row_bytes = self.row_items * target.itemsize
        self.code: int | None
        if target == source:
            self.code = COPY
        elif (source, target) in _CORE_CONVERSIONS:
            self.code = _CORE_CONVERSIONS[(source, target)]
        elif np.can_cast(source, target, "same_kind"):
            self.code = None  # NumPy does it
        else:
            raise ConversionError(
                f"dtype= asks to convert leaf {path} from {source} to {target}, which is not a "
                "same_kind cast (e.g. float to int); convert it in the pipeline instead"
            )
        self.storage: Storage


class Writer:
    """Fills one array per leaf with the elements (stacked) or batches (concatenated) given to
    :meth:`add`, in RAM or, with ``directory``, in its ``.npy`` files."""

    def __init__(self, directory: Path | None, dtype: Any, batched: bool, count: int | None):
        self.directory, self.dtype, self.batched, self.count = directory, dtype, batched, count
        self.treedef: Any = None
        self.leaves: list[Leaf] = []
        self.rows = 0
        self.capacity = 0
        self.tree_json: Any = None

    @property
    def what(self) -> str:
        """What each call to :meth:`add` receives, as messages name it."""
        return "batch" if self.batched else "element"

    # -- set-up ---------------------------------------------------------------------------
    def _start(self, treedef: Any, paths: list[str], arrays: list[np.ndarray], rows: int) -> None:
        sources = [a.dtype for a in arrays]
        targets = resolve_dtypes(self.dtype, paths, sources)
        for path, arr, target in zip(paths, arrays, targets, strict=True):
            row_shape = tuple(arr.shape[1:] if self.batched else arr.shape)
            self.leaves.append(Leaf(path, arr.dtype, target, row_shape))
        self.treedef = treedef
        self.tree_json = tree_json(jax.tree_util.tree_unflatten(treedef, range(len(paths))))
        if self.count is not None:
            capacity = self.count * rows if self.batched else self.count
        else:
            capacity = max(rows, 1)
        self.capacity = max(capacity, rows)
        for i, leaf in enumerate(self.leaves):
            nbytes = self.capacity * leaf.row_bytes
            if self.directory is None:
                leaf.storage = RamStorage(nbytes)
            else:
                leaf.storage = FileStorage(
                    self.directory / file_name(i, leaf.path),
                    nbytes,
                    leaf.target,
                    leaf.row_shape,
                )

    def start_empty(self, ds: Any, specs: list[tuple[str, Any]] | None) -> None:
        """No element at all: take shapes and dtypes from the element_spec (unknown dims: 0)."""
        if specs is None:
            raise ConversionError(
                "ds yielded no elements, so the structure and shapes of the result are unknown; "
                "pass a tf.data.Dataset (its element_spec describes them)"
            )
        arrays = []
        for _, spec in specs:
            if spec.shape.rank is None:
                raise ConversionError("ds is empty and its element_spec has unknown rank")
            dims = [d if d is not None else 0 for d in spec.shape.as_list()]
            if self.batched:
                dims[0] = 0
            arrays.append(np.empty(dims, spec.dtype.as_numpy_dtype))
        structure = jax.tree_util.tree_map(lambda _: 0, ds.element_spec)
        _, treedef = jax.tree_util.tree_flatten(structure)
        self.count = 0
        self._start(treedef, [name for name, _ in specs], arrays, 0)

    # -- per element ------------------------------------------------------------------------
    def add(self, element: Any, index: int) -> None:
        treedef, paths, arrays = flat_arrays(element)
        what = self.what
        for name, arr in zip(paths, arrays, strict=True):
            if is_string_array(arr) or arr.dtype.kind == "O":
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
        # Structure and dtypes are checked here rather than by a Flattener: its messages say
        # "batch" where to_numpy stacks elements, and its dtype policy (what a jax.Array can
        # hold) would refuse leaves a NumPy result keeps, such as float8.
        if self.treedef is None:
            self._start(treedef, paths, arrays, rows)
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

    def _copy(self, leaf: Leaf, arr: np.ndarray, rows: int, index: int) -> None:
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
                # Worded as astype_checked words it, so both paths raise the same message.
                raise LeafOverflowError(
                    f"leaf {leaf.path} has value {e.value}, which does not fit "
                    f"{leaf.target} ({self._why(leaf, index)}",
                    leaf.path,
                ) from None
            return
        if leaf.code != COPY and leaf.target.kind in "iu":
            # stream()'s checked conversion: an integer that does not fit raises, never wraps.
            # Floats round as NumPy (and the core) round them, to inf if they must.
            arr = astype_checked(arr, leaf.target, leaf.path, self._why(leaf, index))
        target = dest[offset : offset + nbytes].view(leaf.target).reshape(arr.shape)
        np.copyto(target, arr, casting="same_kind")

    def _why(self, leaf: Leaf, index: int) -> str:
        """The end of an overflow message (see ``astype_checked``)."""
        return (
            f"dtype= converts it from {leaf.source} in {self.what} {index}); values are never "
            "wrapped"
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
            write_manifest(
                self.directory,
                self.tree_json,
                self.rows,
                self.batched,
                [(leaf.path, leaf.target, leaf.row_shape) for leaf in self.leaves],
            )
        return jax.tree_util.tree_unflatten(self.treedef, arrays)

    def abort(self) -> None:
        for leaf in self.leaves:
            if hasattr(leaf, "storage"):
                leaf.storage.abort()
        if self.directory is not None:
            for i, leaf in enumerate(self.leaves):
                (self.directory / file_name(i, leaf.path)).unlink(missing_ok=True)
