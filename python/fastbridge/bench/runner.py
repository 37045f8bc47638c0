"""What every scenario of a run shares: its options, routes, samples and progress."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

from .routes import Route


class Progress:
    """tqdm when installed and wanted, else one plain line now and then."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar: Any = None
        self.last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(what, refresh=False)
            self.bar.update()
        elif self.enabled and (time.monotonic() - self.last > 5 or self.done == self.total):
            self.last = time.monotonic()
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A status line above the bar (printing it directly would land inside the bar)."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def split(text: str) -> list[str]:
    """The items of a comma-separated option."""
    return [x.strip() for x in text.split(",") if x.strip()]


def sample(
    scenario: str, route: Route, layout: str, size: int, rep: int, **m: Any
) -> dict[str, Any]:
    """One raw sample: which cell it belongs to, and what was measured (``m``)."""
    return {
        "scenario": scenario,
        "route": route.key,
        "route_number": route.number,
        "label": route.label,
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

    def add(self, scenario: str, route: Route, layout: str, size: int, rep: int, **m: Any) -> None:
        self.samples.append(sample(scenario, route, layout, size, rep, **m))

    def routes(self, keys: tuple[str, ...]) -> list[Route]:
        """The chosen routes among ``keys``, in the canonical order."""
        return [r for r in self.chosen if r.key in keys]
