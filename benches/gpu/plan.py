"""Sizes and counts of one run of the check: the real one on the GPU, or the dry one on CPU.

>>> from fastbridge.bench.cells import MiB, size_label
>>> plan = Plan.make(dry=True)
>>> plan.batches(4 * MiB), [size_label(s) for s in plan.judged_sizes()]
(16, ['4 MiB'])
"""

from __future__ import annotations

import dataclasses

from fastbridge.bench.cells import MiB
from fastbridge.bench.scenarios import STATE

PREFETCH = 4
"""Batches every stream of the check keeps in flight."""


@dataclasses.dataclass
class Plan:
    """Sizes and counts of one run (``Plan.make``); every field is written to the JSON."""

    dry: bool
    sizes: list[int]
    consumer_sizes: list[int]
    bytes_per_sample: int
    min_batches: int
    max_batches: int
    warmup: int
    consumer_steps: int
    step_seconds: float
    step_dim: int
    """The side of the consumer step's state matrix (the bench's calibrated step)."""
    correctness_batches: int
    correctness_rows: int
    route_correctness_batches: int
    sources: int
    min_rounds: int
    max_rounds: int

    @classmethod
    def make(cls, dry: bool) -> Plan:
        if dry:
            return cls(
                dry=True,
                sizes=[1 * MiB, 4 * MiB],
                consumer_sizes=[1 * MiB],
                bytes_per_sample=64 * MiB,
                min_batches=4,
                max_batches=32,
                warmup=PREFETCH + 2,
                consumer_steps=32,
                step_seconds=0.001,
                step_dim=STATE,
                correctness_batches=100,
                correctness_rows=32,
                route_correctness_batches=30,
                sources=2,
                min_rounds=3,
                max_rounds=5,
            )
        return cls(
            dry=False,
            sizes=[1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB],
            consumer_sizes=[16 * MiB, 64 * MiB],
            bytes_per_sample=1 << 30,
            min_batches=8,
            max_batches=256,
            warmup=PREFETCH + 2,
            consumer_steps=100,
            step_seconds=0.004,
            step_dim=STATE,
            correctness_batches=1000,
            correctness_rows=1024,
            route_correctness_batches=200,
            sources=4,
            min_rounds=3,
            max_rounds=15,
        )

    def batches(self, nbytes: int) -> int:
        """Batches timed per sample: about ``bytes_per_sample``, within the bounds."""
        return max(self.min_batches, min(self.max_batches, self.bytes_per_sample // nbytes))

    def judged_sizes(self) -> list[int]:
        """Sizes the host-to-device targets judge: 16 MiB and up (dry: the largest)."""
        big = [s for s in self.sizes if s >= 16 * MiB]
        return big if big and not self.dry else self.sizes[-1:]
