"""Whole-dataset conversions between tf.data and NumPy.

* :func:`to_numpy` materializes a dataset into one preallocated array per leaf (in RAM or in
  ``.npy`` files), copying each batch once, through the Rust core, with the GIL released.
  :func:`load_memmap` reopens what it wrote to disk.
* :func:`from_numpy` turns NumPy or ``np.memmap`` arrays into a ``tf.data.Dataset`` without
  embedding them in the graph or copying them into TensorFlow.
* :func:`map_numpy` runs a NumPy function on each element of a pipeline and restores static
  shapes and dtypes on its outputs.

TensorFlow is imported lazily: :func:`to_numpy` also accepts any iterable of NumPy pytrees.

Modules, one idea each: ``_to_numpy`` (the function and its source checks), ``_writer`` (the
per-leaf checks and converting copy), ``_storage`` (RAM and file storage that grows in place),
``_directory`` (the ``memmap=`` directory, its manifest, and ``load_memmap``), ``_from_numpy``,
``_map_numpy``, and ``_tensors`` (NumPy values meeting TensorFlow). The ``.npy`` codec they
write and read with, ml_dtypes included, is ``fastbridge._npy``: saved stream states use it too.
"""

from __future__ import annotations

from ..errors import ConversionError, MemmapPathError
from ._directory import load_memmap
from ._from_numpy import from_numpy
from ._map_numpy import AUTOTUNE, map_numpy
from ._to_numpy import to_numpy

__all__ = [
    "AUTOTUNE",
    "ConversionError",
    "MemmapPathError",
    "from_numpy",
    "load_memmap",
    "map_numpy",
    "to_numpy",
]
