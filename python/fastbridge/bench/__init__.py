"""The copy-versus-zero-copy benchmark: ``python -m fastbridge.bench --help``.

Submodules: ``routes`` (the fourteen ways to hand a batch to JAX), ``scenarios`` (datasets, the
jitted step, measurement loops), ``leaves`` and ``shapes`` (those two scenarios), ``cells``
(the summary of raw samples), ``targets``, ``headline`` (auto against the best peer, first in
every report), ``report`` (tables, Markdown), ``plots``, ``options``, ``runner`` and ``cli``.
Importing this package imports neither TensorFlow nor matplotlib.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line ``argv``; returns the exit code."""
    from .cli import main as _main

    return _main(argv)
