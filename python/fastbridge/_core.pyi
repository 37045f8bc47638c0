"""Type stubs for the Rust extension ``fastbridge._core`` (checked by ``mypy.stubtest``)."""

from typing import Any, final

from typing_extensions import CapsuleType

__all__ = [
    "CONVERSIONS",
    "DLPACK_TYPE_CODES",
    "FOREVER",
    "LEAF_ALIGN",
    "MAX_QUEUE_CAPACITY",
    "NARROWINGS",
    "PAGE_SIZE",
    "PARALLEL_THRESHOLD",
    "SIGNAL_POLL",
    "Layout",
    "Leaf",
    "ReadyQueue",
    "Slot",
    "SlotPool",
    "copy_into",
    "__version__",
    "cuda_available",
]

PAGE_SIZE: int
LEAF_ALIGN: int
MAX_QUEUE_CAPACITY: int
CONVERSIONS: dict[str, int]
"""Conversion code (``Slot.fill``, ``copy_into``) by name: ``copy``, ``f64_to_f32``, ..."""
NARROWINGS: dict[str, tuple[str, int]]
"""Source NumPy dtype name -> (target dtype name, conversion code) of each narrowing."""
DLPACK_TYPE_CODES: dict[str, tuple[int, int]]
"""NumPy dtype name -> (DLPack type code, bits), as ``Slot.export`` takes them."""
PARALLEL_THRESHOLD: int
"""Leaves of at least this many bytes are copied in parts on several threads."""
FOREVER: float
"""A wait of at least this many seconds (or ``None``, or ``inf``) waits without end."""
SIGNAL_POLL: float
"""Seconds between checks for pending signals (Ctrl-C) while a call waits."""
__version__: str

@final
class ReadyQueue:
    """Batches in order between one producer thread and one consumer."""

    def __new__(cls, capacity: int) -> ReadyQueue: ...
    def publish(self, item: Any) -> bool: ...
    def pop_into(self, holder: list[Any], timeout: float | None = None) -> bool: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def __len__(self) -> int: ...

@final
class SlotPool:
    """Page-aligned, optionally pinned slots that the producer fills."""

    def __new__(
        cls,
        *,
        slots: int,
        max_bytes: int | None = None,
        lock: bool = True,
        cuda: bool = False,
        copy_threads: int = 2,
        queue: ReadyQueue | None = None,
    ) -> SlotPool: ...
    def acquire(self, nbytes: int, timeout: float | None = None) -> Slot: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def stats(self) -> dict[str, int | float]: ...

@final
class Slot:
    """A slot being filled by the producer; writable until its first export."""

    def fill(self, leaves: list[tuple[Any, int, int]]) -> None: ...
    def write(self, sources: list[Any], layout: Layout) -> list[Leaf]: ...
    def export(
        self, offset: int, shape: list[int], code: int, bits: int, device_id: int = 0
    ) -> Leaf: ...
    def release(self) -> None: ...
    @property
    def address(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def buffer_id(self) -> int: ...
    @property
    def cuda(self) -> bool: ...
    @property
    def locked(self) -> bool: ...

@final
class Layout:
    """Where a batch's leaves lie in a slot, checked once (``Slot.write`` follows it)."""

    def __new__(
        cls,
        sources: int,
        fills: list[tuple[int, int, int, int, int]],
        exports: list[tuple[int, list[int], int, int, int]],
    ) -> Layout: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def sources(self) -> int: ...
    @property
    def exports(self) -> int: ...

@final
class Leaf:
    """One array inside a slot, importable through DLPack without a copy."""

    def __dlpack__(
        self,
        *,
        stream: Any | None = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> CapsuleType: ...
    def __dlpack_device__(self) -> tuple[int, int]: ...
    @property
    def address(self) -> int: ...
    @property
    def shape(self) -> list[int]: ...

def cuda_available() -> bool: ...
def copy_into(
    dest: Any, offset: int, source: Any, conversion: int = 0, threads: int = 2
) -> int: ...
