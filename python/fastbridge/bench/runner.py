"""What every scenario of a run shares: its options, routes, samples and progress."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .progress import Progress
from .routes import Route

__all__ = ["Progress", "Run", "sample", "split"]


def split(text: str) -> list[str]:
    """The items of a comma-separated option."""
    return [x.strip() for x in text.split(",") if x.strip()]


def sample(
    scenario: str, handoff: Route, layout: str, size: int, rep: int, **m: Any
) -> dict[str, Any]:
    """One raw sample: which cell it belongs to, and what was measured (``m``)."""
    return {
        "scenario": scenario,
        "route": handoff.key,
        "route_number": handoff.number,
        "label": handoff.label,
        "layout": layout,
        "size_bytes": size,
        "rep": rep,
        **m,
    }


@dataclasses.dataclass
class Run:
    """One benchmark run: its options, the routes chosen, and what it measured so far."""

    args: argparse.Namespace
    chosen: list[Route]
    meta: dict[str, Any]
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    progress: Progress = dataclasses.field(default_factory=lambda: Progress(0, False))

    @property
    def stream_options(self) -> dict[str, Any]:
        """What the fastbridge routes of the tf.data scenarios pass to ``stream()``."""
        return {"prefetch": self.args.prefetch, "copy_threads": self.args.threads}

    def add(
        self, scenario: str, handoff: Route, layout: str, size: int, rep: int, **m: Any
    ) -> None:
        self.samples.append(sample(scenario, handoff, layout, size, rep, **m))

    def handoffs(self, keys: tuple[str, ...]) -> list[Route]:
        """The chosen routes among ``keys``, in the canonical order."""
        return [r for r in self.chosen if r.key in keys]
