"""fastbridge: hand batches from tf.data (or any NumPy loader) to JAX without copies.

>>> import numpy as np
>>> from fastbridge import stream
>>> with stream([np.arange(4, dtype=np.float32)], backend="numpy") as batches:
...     [b.tolist() for b in batches]
[[0.0, 1.0, 2.0, 3.0]]
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._backends import BACKENDS, BackendName
from ._options import StreamOptions
from ._state import Checkpointable, StateDictSource
from ._stream import Stream, StreamStats, core_available, stream
from ._tfdata import keep_tensorflow_off
from .convert import from_numpy, load_memmap, map_numpy, to_numpy
from .errors import (
    ConversionError,
    CoreRangeError,
    FastbridgeError,
    FastbridgeWarning,
    LeafOverflowError,
    MemmapPathError,
    PoolExhaustedError,
    ShardingError,
    SlotTimeoutError,
    SourceError,
    StateTimeoutError,
    StreamClosedError,
    StructureChangedError,
    UnsupportedLeafError,
)

Backend = BackendName
"""The type of ``backend=`` values (an alias of ``BackendName``, kept for existing code)."""

try:
    __version__ = version("fastbridge")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendName",
    "Checkpointable",
    "ConversionError",
    "CoreRangeError",
    "FastbridgeError",
    "FastbridgeWarning",
    "LeafOverflowError",
    "MemmapPathError",
    "PoolExhaustedError",
    "ShardingError",
    "SlotTimeoutError",
    "SourceError",
    "StateDictSource",
    "StateTimeoutError",
    "Stream",
    "StreamClosedError",
    "StreamOptions",
    "StreamStats",
    "StructureChangedError",
    "UnsupportedLeafError",
    "__version__",
    "core_available",
    "from_numpy",
    "keep_tensorflow_off",
    "load_memmap",
    "map_numpy",
    "stream",
    "to_numpy",
]
