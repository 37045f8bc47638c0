"""The ``.npy`` format as fastbridge writes and reads it, ml_dtypes leaves included.

``.npy`` has no code for the ml_dtypes types (bfloat16, float8_*, int4): NumPy writes their
bytes under a raw ``V`` descr and reads them back as void. Both writers of ``.npy`` in
fastbridge store the dtype's name next to the array and restore it on reading:

* ``to_numpy(memmap=)`` files keep the ``V`` descr, so they still open with NumPy alone, and
  ``manifest.json`` records the name;
* saved stream states (``fastbridge._state``) store the bits as unsigned integers of the same
  width (:func:`npy_storable`), with the name beside them.

>>> import ml_dtypes, numpy as np
>>> x = np.array([1.5, -2.0], ml_dtypes.bfloat16)
>>> back = from_npy_bytes(to_npy_bytes(npy_storable(x)))
>>> back.dtype, restore_ml_dtype(back, dtype_named("bfloat16")).tolist()
(dtype('uint16'), [1.5, -2.0])
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError

NPY_HEADER_BYTES = 4096
"""Size of the header of every file :func:`npy_header` writes: a fixed size lets the header be
rewritten in place when the array grows, and keeps the data page-aligned."""


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` version 1.0 header of exactly :data:`NPY_HEADER_BYTES` bytes."""
    fields = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    body = repr(fields)
    length = NPY_HEADER_BYTES - 10
    if len(body) >= length:
        raise ConversionError(f"shape {shape} does not fit the .npy header")
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", length)
        + (body.ljust(length - 1) + "\n").encode("latin1")
    )


def load_npy(path: Path, mmap_mode: str | None, dtype: np.dtype | None) -> np.ndarray:
    """``np.load`` of one file, as ``dtype`` (the one recorded next to it) when given."""
    arr: np.ndarray = np.load(path, mmap_mode=mmap_mode)  # type: ignore[arg-type]
    return arr if dtype is None else restore_ml_dtype(arr, dtype)


def to_npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (never pickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def from_npy_bytes(raw: bytes) -> np.ndarray:
    """The array in the bytes of a ``.npy`` file. Never unpickles: the bytes may come from an
    untrusted file. Malformed bytes raise ``ValueError``, ``OSError`` or ``EOFError``."""
    array: np.ndarray = np.load(io.BytesIO(raw), allow_pickle=False)
    return array


def is_ml_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is an ml_dtypes type (bfloat16, float8_*, int4...), one ``.npy`` cannot
    name: kind ``V`` without fields, which ``.npy`` records as raw bytes."""
    return dtype.kind == "V" and dtype.names is None


def npy_storable(array: np.ndarray) -> np.ndarray:
    """``array`` with ml_dtypes bits as unsigned integers of the same width, which ``.npy``
    names; :func:`restore_ml_dtype` turns them back."""
    if array.dtype.kind == "V":
        return array.view(np.dtype(f"u{array.dtype.itemsize}"))
    return array


def restore_ml_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``array`` as ``dtype`` when ``dtype`` is an ml_dtypes type and ``array`` holds its
    bits under another dtype of the same width: raw void (``|V2``, as NumPy reads such a file)
    or unsigned integers (:func:`npy_storable`). Any other array is returned unchanged."""
    if (
        is_ml_dtype(dtype)
        and array.dtype != dtype
        and array.dtype.names is None
        and array.dtype.itemsize == dtype.itemsize
    ):
        return array.view(dtype)
    return array


def dtype_named(name: Any) -> np.dtype | None:
    """The dtype called ``name`` (``str(dtype)``), ml_dtypes included, or ``None`` when neither
    NumPy nor ml_dtypes knows it."""
    try:
        known: np.dtype = np.dtype(name)
    except TypeError:
        pass
    else:
        return known
    import ml_dtypes  # a dependency of JAX; importing it registers names like "bfloat16"

    kind = getattr(ml_dtypes, str(name), None)
    return np.dtype(kind) if isinstance(kind, type) else None
