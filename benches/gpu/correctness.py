"""The correctness phase: batches of several dtypes through the ring and the NumPy ring, held at
random, dropped, some donated to a jitted step; every batch is checksummed on the device and
every held batch compared bit for bit with its source once the stream has ended."""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import random
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from batches import device_checks, donated_step, host_checksums, make_batch, plain_step, same_bits
from fastbridge import stream
from plan import PREFETCH, Plan
from samples import Array, Method, stats_dict
from timing import log

Check = tuple[jax.Array, jax.Array]
"""A delivered batch's index and checksums, on the device (:func:`batches.device_checks`)."""
BAD = ("corrupted", "lost", "repeated", "out_of_order")
"""The report's counts of batches gone wrong."""
DONATION_WARNING = "Some donated buffers were not usable"
"""JAX's warning when a donated batch's buffers cannot be reused (always, on CPU)."""


def same_batch(batch: dict[str, jax.Array], position: int, rows: int) -> bool:
    """Whether a delivered batch is, bit for bit, the source's batch ``position``."""
    want = make_batch(position, rows)
    got: dict[str, Any] = jax.device_get(batch)
    return sorted(got) == sorted(want) and all(
        same_bits(np.asarray(got[key]), want[key]) for key in want
    )


def overwrite_held(leaf: jax.Array, check: Check) -> None:
    """Flip one byte of a delivered (CPU) array's memory once its checksum is computed, so
    only the bitwise comparison of held batches at the end can find it."""
    if leaf.devices() != {jax.devices("cpu")[0]}:
        raise RuntimeError("--plant-corruption late needs the dry run (CPU memory)")
    jax.block_until_ready(check)  # type: ignore[no-untyped-call,unused-ignore]
    address = leaf.unsafe_buffer_pointer() + 5
    byte = ctypes.c_uint8.from_address(address)
    byte.value ^= 0x40


def source(batches: int, rows: int, plant_at: int, plant: str | None) -> Iterator[dict[str, Array]]:
    """The pass's host batches; with ``plant="source"``, batch ``plant_at`` has a byte changed
    after it was made, as a corrupted read would."""
    for index in range(batches):
        batch = make_batch(index, rows)
        if index == plant_at and plant == "source":
            batch["f32"].view(np.uint8).reshape(-1)[5] ^= np.uint8(0x40)
        yield batch


@dataclasses.dataclass
class Consumer:
    """What a correctness pass does with each delivered batch (at random, from ``rng``), and
    what it saw: device checksums of every batch, the batches held, and those found changed."""

    rows: int
    rng: random.Random
    plant_at: int
    plant: str | None
    held: dict[int, dict[str, jax.Array]] = dataclasses.field(default_factory=dict)
    checks: list[Check] = dataclasses.field(default_factory=list)
    held_bad: set[int] = dataclasses.field(default_factory=set)
    donated: int = 0
    stepped: int = 0
    dropped: int = 0

    def take(self, position: int, batch: dict[str, jax.Array]) -> None:
        """Checksum ``batch`` on the device, then hold it, donate it, step on it or drop it;
        now and then let a held batch go."""
        self.checks.append(device_checks(batch))
        draw = self.rng.random()
        if position == self.plant_at or (len(self.held) < 50 and draw < 0.3):
            self.held[position] = batch
            if position == self.plant_at and self.plant == "late":
                overwrite_held(batch["f32"], self.checks[-1])
        elif draw < 0.5:
            donated_step(batch)  # the batch's buffers now belong to the step's output
            self.donated += 1
        elif draw < 0.7:
            plain_step(batch)
            self.stepped += 1
        if self.held and self.rng.random() < 0.2:
            victim = self.rng.choice(sorted(self.held))
            if victim != self.plant_at:
                # Compared before it goes: whatever happened while it was held shows.
                if not same_batch(self.held.pop(victim), victim, self.rows):
                    self.held_bad.add(victim)
                self.dropped += 1

    def check_held(self) -> None:
        """Compare every batch still held (the stream has ended: every slot may be reused)."""
        for position, batch in self.held.items():
            if not same_batch(batch, position, self.rows):
                self.held_bad.add(position)


def checksum_failures(found: list[tuple[Any, Any]], batches: int, rows: int) -> set[int]:
    """Positions whose device checksums (or index) do not match their source batch's."""
    corrupted: set[int] = set()
    for position, (index, sums) in enumerate(found):
        if not 0 <= int(index) < batches:
            corrupted.add(position)
        elif [int(s) for s in sums] != host_checksums(make_batch(int(index), rows)):
            corrupted.add(position)
    return corrupted


def tally(seen: Consumer, batches: int) -> dict[str, Any]:
    """The pass's counts: corrupted (by checksum or by the held comparison), lost, repeated
    and out-of-order batches, and what the consumer did with them."""
    found = jax.device_get(seen.checks)
    claimed = [int(index) for index, _ in found]
    counts = collections.Counter(claimed)
    corrupted = checksum_failures(found, batches, seen.rows)
    checksum_mismatch = len(corrupted)
    seen.check_held()
    corrupted |= seen.held_bad
    return {
        "batches": batches,
        "delivered": len(claimed),
        "corrupted": len(corrupted),
        "corrupted_positions": sorted(corrupted)[:20],
        "checksum_mismatch": checksum_mismatch,
        "held_checked": len(seen.held) + seen.dropped,
        "held_at_end": len(seen.held),
        "held_mismatch": len(seen.held_bad),
        "lost": sum(1 for i in range(batches) if counts[i] == 0),
        "repeated": sum(n - 1 for n in counts.values() if n > 1),
        "out_of_order": sum(1 for p, i in enumerate(claimed) if p != i),
        "donated": seen.donated,
        "stepped": seen.stepped,
        "dropped": seen.dropped,
    }


def correctness_pass(
    device: jax.Device,
    backend: Method,
    batches: int,
    rows: int,
    seed: int,
    plant: str | None = None,
) -> dict[str, Any]:
    """Stream ``batches`` batches, holding, dropping and donating them at random; then check
    every delivered batch's checksum and index and every held batch bit for bit."""
    plant_at = batches // 2 if plant else -1  # --plant-corruption: the checker must see it
    seen = Consumer(rows, random.Random(seed), plant_at, plant)
    started = time.perf_counter()
    host = source(batches, rows, plant_at, plant)
    with stream(host, backend=backend, device=device, prefetch=PREFETCH) as delivered:
        for position, batch in enumerate(delivered):
            seen.take(position, batch)
            del batch
        stats = stats_dict(delivered.stats)
    seconds = time.perf_counter() - started
    report = {"backend": backend, **tally(seen, batches)}
    report.update(
        leaves=sorted(make_batch(0, 1)),
        seconds=seconds,
        stats=stats,
        planted={"mode": plant, "position": plant_at} if plant else None,
    )
    report["ok"] = not any(report[k] for k in BAD) and report["delivered"] == batches
    return report


def phase_correctness(
    plan: Plan, device: jax.Device, result: dict[str, Any], plant: str | None
) -> dict[str, Any]:
    """A pass through the ring (with the planted corruption, if any) and one through the NumPy
    ring; fills ``result["correctness"]``."""
    out: dict[str, Any] = {"batches": plan.correctness_batches, "backends": {}}
    result["correctness"] = out
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DONATION_WARNING)
        backends: tuple[Method, ...] = ("ring", "numpy")
        for k, backend in enumerate(backends):
            report = correctness_pass(
                device,
                backend,
                plan.correctness_batches,
                plan.correctness_rows,
                seed=1234 + k,
                plant=plant if backend == "ring" else None,
            )
            out["backends"][backend] = report
            log(
                f"correctness {backend}: {report['delivered']} delivered, "
                f"{report['corrupted']} corrupted, {report['lost']} lost, "
                f"{report['repeated']} repeated, {report['out_of_order']} out of order "
                f"({report['held_checked']} held checked, {report['donated']} donated, "
                f"{report['seconds']:.1f} s)"
            )
    out["ok"] = all(r["ok"] for r in out["backends"].values())
    return out
