"""The check's clock, its interleaved rounds, and the statistics of what they measured.

>>> median([3.0, 1.0, 2.0]), quantile([1.0, 2.0, 3.0, 4.0], 0.9)
(2.0, 4.0)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def log(message: str) -> None:
    """A progress line (the summary table, printed last, has no prefix)."""
    print(f"[check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quantile(values: Sequence[float], q: float) -> float:
    """The value ``q`` of the way up ``values`` (no interpolation)."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


class Clock:
    """The run's time budget, counted from the process's start."""

    def __init__(self, budget: float) -> None:
        self.started = time.monotonic()
        self.budget = budget

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def deadline(self, share: float) -> float:
        """A phase's deadline: ``share`` of the time left (monotonic clock)."""
        return time.monotonic() + max(0.0, self.left()) * share


def run_rounds(
    name: str, deadline: float, least: int, one_round: Callable[[int], None], most: int
) -> int:
    """Run ``one_round(k)`` at least ``least`` times, and more (up to ``most``) while the next
    round (judged by the mean so far) still ends before ``deadline``."""
    started = time.monotonic()
    done = 0
    while done < most:
        one_round(done)
        done += 1
        per_round = (time.monotonic() - started) / done
        log(f"{name}: round {done} done ({per_round:.1f} s per round)")
        if done >= least and time.monotonic() + per_round > deadline:
            break
    return done
