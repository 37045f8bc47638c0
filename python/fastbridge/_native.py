"""The Rust extension, when it is built: the one place that imports it.

Every other module takes ``core`` from here (``None`` when the extension is missing, so the
NumPy ring stands in for it), and asks :func:`available` rather than trying the import again.
"""

from __future__ import annotations

from types import ModuleType

core: ModuleType | None
try:
    from . import _core as core
except ImportError:  # a source tree without the built extension
    core = None


def available() -> bool:
    """Whether the Rust extension (``fastbridge._core``) is importable."""
    return core is not None
