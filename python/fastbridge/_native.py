"""The Rust extension, when it is built: the one place that imports it, and the facts it owns.

Every other module takes ``core`` from here (``None`` when the extension is missing, so the
NumPy ring stands in for it), and asks :func:`available` rather than trying the import again.
The numbers both sides must agree on (conversion codes, DLPack type codes, alignments, the
wait and copy rules) are the core's exports; the fallback below is their only other copy, for
installs without the extension, and a test checks it against the core.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

core: ModuleType | None
try:
    from . import _core as core
except ImportError:  # a source tree without the built extension
    core = None

_FALLBACK: dict[str, Any] = {
    "PAGE_SIZE": 4096,
    "LEAF_ALIGN": 64,
    "MAX_QUEUE_CAPACITY": 1 << 20,
    "PARALLEL_THRESHOLD": 4 << 20,
    "FOREVER": 365 * 24 * 3600.0,
    "SIGNAL_POLL": 0.05,
    "CONVERSIONS": {"copy": 0, "f64_to_f32": 1, "i64_to_i32": 2, "u64_to_u32": 3, "c128_to_c64": 4},
    "NARROWINGS": {
        "float64": ("float32", 1),
        "int64": ("int32", 2),
        "uint64": ("uint32", 3),
        "complex128": ("complex64", 4),
    },
    "DLPACK_TYPE_CODES": {
        **{f"int{b}": (0, b) for b in (8, 16, 32, 64)},
        **{f"uint{b}": (1, b) for b in (8, 16, 32, 64)},
        **{f"float{b}": (2, b) for b in (16, 32, 64)},
        "bfloat16": (4, 16),
        "complex64": (5, 64),
        "complex128": (5, 128),
        "bool": (6, 8),
    },
}


def _fact(name: str) -> Any:
    return getattr(core, name) if core is not None else _FALLBACK[name]


PAGE_SIZE: int = _fact("PAGE_SIZE")
"""Slot memory is allocated in whole pages, page-aligned."""
LEAF_ALIGN: int = _fact("LEAF_ALIGN")
"""Every leaf in a slot starts at a multiple of this many bytes (XLA's CPU alignment)."""
MAX_QUEUE_CAPACITY: int = _fact("MAX_QUEUE_CAPACITY")
"""The most batches a ready queue may hold (``prefetch``)."""
PARALLEL_THRESHOLD: int = _fact("PARALLEL_THRESHOLD")
"""Leaves of at least this many bytes are copied in parts on ``copy_threads`` threads."""
FOREVER: float = _fact("FOREVER")
"""A wait of at least this many seconds waits without end (as ``None`` does)."""
SIGNAL_POLL: float = _fact("SIGNAL_POLL")
"""Seconds between checks for Ctrl-C while a call waits."""
CONVERSIONS: dict[str, int] = _fact("CONVERSIONS")
"""Conversion codes of the copy kernels: ``copy`` and the four narrowings."""
NARROWINGS: dict[str, tuple[str, int]] = _fact("NARROWINGS")
"""Source dtype name -> (narrower dtype name, conversion code)."""
DLPACK_TYPE_CODES: dict[str, tuple[int, int]] = _fact("DLPACK_TYPE_CODES")
"""NumPy dtype name -> (DLPack type code, bits)."""


def available() -> bool:
    """Whether the Rust extension (``fastbridge._core``) is importable."""
    return core is not None
