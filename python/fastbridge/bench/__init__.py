"""The copy-versus-zero-copy benchmark: ``python -m fastbridge.bench --help``.

Submodules: ``routes`` (the fourteen handoffs, ways to hand a batch to JAX), ``batches``
(synthetic batches and datasets), ``step`` (the calibrated jitted step), ``loop`` (one measured
run of a handoff), ``resources``, ``copies`` (memcpy and ring slot fills), ``e2e``,
``accelerator``, ``leaves`` and ``shapes`` (those scenarios), ``cells`` (the summary of raw
samples), ``targets``, ``headline`` (auto against the best peer, first in every report),
``report`` (tables, Markdown), ``plots``, ``options``, ``progress``, ``runner`` and ``cli``;
``scenarios`` still imports the names that lived there before.
Importing this package imports neither TensorFlow nor matplotlib.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line ``argv``; returns the exit code."""
    from .cli import main as _main

    return _main(argv)
